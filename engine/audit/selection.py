"""Which shards an audit reads (all, one run's, those under a folder) and the baseline it compares them with."""

from __future__ import annotations

import logging

from dpiqa.engine.audit.config import AuditConfig
from dpiqa.engine.scores import ScoredRun
from dpiqa.json_object import NotAJsonObject, json_object
from dpiqa.storage import get_fs

log = logging.getLogger(__name__)


def select(config: AuditConfig, whole: ScoredRun) -> tuple[ScoredRun, dict, ScoredRun | None, str | None]:
    """The shards audited (all, one run's, or those under a folder), what the selection was, and the
    baseline run with its label (another output, or the runs before the audited one)."""
    selection: dict = {"kind": "all"}
    run = whole
    records = whole.location.runs() if (config.run or config.baseline_runs) else []
    current = None
    if config.run:
        wanted = records[-1:] if config.run == "latest" else [r for r in records if r.get("run_id") == config.run]
        if not wanted:
            known = ", ".join(r.get("run_id", "?") for r in records[-5:]) or "none"
            raise ValueError(
                f"{config.scores}: no run {config.run!r} in {config.scores.rstrip('/')}/runs/ (latest: {known})"
            )
        current = wanted[0]
        names = whole.location.run_shard_names(current)
        if not names:  # a quiet night: nothing new in the input is a normal night, audited as one
            log.info("audit: run %s wrote no shard (nothing new in its input)", current.get("run_id"))
        run = whole.subset(names, empty_ok=True)
        selection = {
            "kind": "run",
            "run_id": current.get("run_id"),
            "started": current.get("started"),
            "input": current.get("input"),
            "quiet": not names,
        }
    elif config.under:
        folder = config.under.strip("/")
        names = {
            s.name
            for s in whole.shards
            if f"/{folder}/" in s.url or s.name.startswith(folder.replace("/", "__") + "__")
        }
        if not names:
            raise ValueError(f"{config.scores}: no completed shard lies under {folder!r}")
        run = whole.subset(names)
        selection = {"kind": "under", "folder": folder}
    selection["shards"] = len(run.shards)
    if config.baseline:
        return run, selection, ScoredRun(config.baseline, config.storage_options), config.baseline
    if config.baseline_runs:
        before = records[: records.index(current)] if current is not None else records
        chosen = before[-config.baseline_runs :]
        names = set().union(*(whole.location.run_shard_names(r) for r in chosen)) - {s.name for s in run.shards}
        if not names:  # the first night has nothing before it: an audit without drift, not an error
            log.info("audit: no earlier run wrote shards; no baseline for --baseline-runs %d", config.baseline_runs)
            return run, selection, None, None
        label = f"the {len(chosen)} runs before ({chosen[0].get('run_id')} .. {chosen[-1].get('run_id')})"
        return run, selection, whole.subset(names), label
    return run, selection, None, None


def read_baseline_document(url: str, storage_options: dict | None) -> dict:
    fs, path = get_fs(url, storage_options)
    try:
        with fs.open(path, "rb") as f:
            return json_object(f.read())
    except FileNotFoundError:
        raise ValueError(f"--baseline-json {url}: no such file") from None
    except NotAJsonObject as exc:
        raise ValueError(
            f"--baseline-json {url}: not an audit document ({exc}; `dpiqa audit --json` writes one)"
        ) from None
