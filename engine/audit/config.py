"""What an audit reads, compares and writes (`AuditConfig`), and its result (`AuditResult`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from dpiqa.errors import ALERT, UsageError

ALERT_EXIT = ALERT  # the exit status when a threshold is crossed (dpiqa/errors.py)
PLOT_BINS = 64  # the histogram plot's bins (the fine grid summed in groups)


@dataclass
class AuditConfig:
    """What an audit reads, writes and alerts on.

    Args:
        scores: output location of the `dpiqa score` run to audit.
        report: where to write the HTML page (local path or fsspec URL), or None.
        json: where to write the JSON document, or None.
        baseline: output location of a previous run to compare against, or None.
        run: audit only the shards one run of `score` wrote: `latest` or its id (`runs/<id>.json`); the
            alert thresholds then apply to that increment.
        under: audit only the shards below this folder of the input (`2026-11-27`: a night's folder).
        baseline_runs: compare with the shards the N runs before the audited one wrote (a trailing baseline
            from the same output).
        baseline_json: compare with an earlier audit's JSON document (its histogram and summary).
        history: append this audit's summary to `audits/history.parquet` beside the scores (the command line
            does by default).
        trend: nights of history the page plots (this one included).
        max_error_rate: alert when the share of rows whose status is not `ok` exceeds this.
        max_drift: alert when the PSI against the baseline exceeds this (only with a baseline).
        thumbnails: how many lowest and how many highest scored images to show (0: none).
        bins: bins of the fine histogram grid (a multiple of 64).
        batch_size: rows per streamed record batch.
        executor: `local` (one process streams every file), `ray` (the files are split among Ray tasks
            whose statistics merge), or `auto`: Ray when a cluster is named (`address` or RAY_ADDRESS) or the
            run has more than `RAY_ROWS` rows, else local.
        address: Ray cluster address.
        storage_options: fsspec options for every location (scores, baseline, shards, outputs).
    """

    scores: str
    report: str | None = None
    json: str | None = None
    baseline: str | None = None
    run: str | None = None
    under: str | None = None
    baseline_runs: int | None = None
    baseline_json: str | None = None
    history: bool = False
    trend: int = 30
    max_error_rate: float | None = None
    max_drift: float | None = 0.25
    thumbnails: int = 8
    bins: int = 2048
    batch_size: int = 65536
    executor: str = "auto"
    address: str | None = None
    storage_options: dict | None = None

    def __post_init__(self) -> None:
        if self.bins <= 0 or self.bins % PLOT_BINS:
            raise UsageError(f"bins must be a positive multiple of {PLOT_BINS}, not {self.bins}")
        if sum(x is not None for x in (self.baseline, self.baseline_runs, self.baseline_json)) > 1:
            raise UsageError("give one baseline: --baseline, --baseline-runs or --baseline-json")
        if self.run is not None and self.under is not None:
            raise UsageError("select the shards by --run or by --under, not both")
        if self.baseline_runs is not None and self.baseline_runs < 1:
            raise UsageError(f"--baseline-runs must be at least 1, not {self.baseline_runs}")
        if self.executor not in ("auto", "local", "ray"):
            raise UsageError(f"executor must be auto, local or ray, not {self.executor!r}")
        if self.thumbnails < 0:
            raise UsageError(f"thumbnails must be >= 0, not {self.thumbnails}")
        for name in ("max_error_rate", "max_drift"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise UsageError(f"{name} must be >= 0, not {value}")


@dataclass
class AuditResult:
    """The audit's JSON document and its alerts."""

    doc: dict = field(default_factory=dict)

    @property
    def alerts(self) -> list[str]:
        return self.doc.get("alerts", [])

    @property
    def exit_code(self) -> int:
        return ALERT_EXIT if self.alerts else 0
