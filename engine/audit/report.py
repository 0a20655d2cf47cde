"""The audit's HTML page: one self-contained file (plots as inline PNG, thumbnails as inline JPEG, no
script, no external asset), rendered from the audit's JSON document.

Every number shown on the page carries `data-json="path.to.value"`, the place in the JSON document it
comes from, so that a reader (or a test) can check the page against the JSON.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Callable
from typing import Any

import numpy as np

MAX_TABLE_ROWS = 25  # per-shard and per-source tables show the worst rows; the JSON has all of them
MAX_PLOTTED_SOURCES = 30


class Plot(str):
    """A plot's PNG data URI, with the tick labels drawn on its axes (`ticks`: one `{"x": [...], "y": [...]}`
    per axes, in order): the page carries them beside the picture (`data-ticks`), so that what the axes say
    can be read as text, by a screen reader or a test."""

    ticks: list[dict[str, list[str]]]


def _png(draw: Callable[[Any], None], size: tuple[float, float] = (7.0, 3.2)) -> Plot:
    """Run `draw(fig)` on a fresh matplotlib figure and return it as a PNG data URI (a bare `Figure`
    renders with Agg without touching pyplot's global state). Text is never read as mathtext: shard and
    source names are the user's, and a `$` in a folder name must show as a `$`; so no axis may rely on
    mathtext for its tick labels either (a log axis's default `10^{k}` would show as its raw mathdefault markup)."""
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context({"text.parse_math": False}):
        fig = Figure(figsize=size, dpi=100, layout="constrained")
        draw(fig)
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        ticks = [
            {
                axis: [t.get_text() for t in getattr(ax, f"get_{axis}ticklabels")() if t.get_visible() and t.get_text()]
                for axis in ("x", "y")
            }
            for ax in fig.axes
        ]
    plot = Plot("data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii"))
    plot.ticks = ticks
    return plot


def count_ticks(value: float, _pos: int | None = None) -> str:
    """A tick label of a count axis: `0`, `1`, `10`, `1,000` (plain digits, never mathtext)."""
    return f"{value:,.0f}"


def fmt(value: Any, kind: str = "num") -> str:
    """A number as shown on the page: `int` with thousands separators, `rate` as a percentage with two
    decimals, `num` with six significant digits."""
    if value is None:
        return "n/a"
    if kind == "int":
        return f"{int(value):,}"
    if kind == "rate":
        return f"{100 * value:.2f}%"
    return f"{value:.6g}"


def num(doc_path: str, value: Any, kind: str = "num", tag: str = "td") -> str:
    """An element showing a number from the JSON document, tagged with its path there."""
    return f'<{tag} class="n" data-json="{html.escape(doc_path)}">{fmt(value, kind)}</{tag}>'


def esc(value: Any) -> str:
    return html.escape(str(value))


# -- figures --------------------------------------------------------------------------------------


def figure_histogram(doc: dict) -> str:
    fig_data = doc["figures"]["histogram"]
    edges = np.asarray(fig_data["edges"])
    centers, widths = (edges[:-1] + edges[1:]) / 2, np.diff(edges)

    def draw(fig: Any) -> None:
        ax = fig.subplots()
        cur = np.asarray(fig_data["counts"], dtype=float)
        if fig_data.get("baseline") is not None:
            base = np.asarray(fig_data["baseline"], dtype=float)
            ax.bar(centers, cur / max(cur.sum(), 1), width=widths, alpha=0.6, label="this run")
            ax.stairs(base / max(base.sum(), 1), edges, color="k", label="baseline")
            ax.set_ylabel("fraction of ok rows")
            ax.legend()
        else:
            ax.bar(centers, cur, width=widths)
            ax.set_ylabel("ok rows")
        ax.set_xlabel("score")
        ax.set_title("Score distribution")

    return _png(draw)


def figure_cdf(doc: dict) -> str:
    hist = doc["histogram"]
    edges = np.linspace(hist["lo"], hist["hi"], hist["bins"] + 1)

    def draw(fig: Any) -> None:
        ax = fig.subplots()
        for label, counts, style in (
            ("this run", hist["counts"], "-"),
            ("baseline", (doc.get("baseline") or {}).get("histogram", {}).get("counts"), "--"),
        ):
            if counts is None:
                continue
            c = np.asarray(counts, dtype=float)
            ax.plot(edges, np.concatenate([[0.0], np.cumsum(c) / max(c.sum(), 1)]), style, label=label)
        if doc.get("drift") and doc["drift"]["ks_statistic"] > 0:
            ax.axvline(doc["drift"]["ks_at_score"], color="r", lw=0.8, label="largest CDF gap (KS)")
        ax.set_xlabel("score")
        ax.set_ylabel("cumulative fraction")
        ax.set_title("Cumulative distribution")
        ax.legend()

    return _png(draw)


def figure_statuses(doc: dict) -> str:
    statuses = doc["statuses"]

    def draw(fig: Any) -> None:
        ax = fig.subplots()
        names = [s["status"] for s in statuses]
        counts = [s["count"] for s in statuses]
        from matplotlib.ticker import FuncFormatter, NullFormatter

        ax.barh(names, counts, color=["tab:green" if n == "ok" else "tab:red" for n in names])
        ax.set_xscale("symlog")
        ax.xaxis.set_major_formatter(FuncFormatter(count_ticks))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.invert_yaxis()
        ax.set_xlabel("rows")
        ax.set_title("Rows by status")

    return _png(draw, (7.0, 0.6 + 0.35 * max(len(statuses), 1)))


def figure_per_shard(doc: dict) -> str:
    shards = doc["per_shard"]

    def draw(fig: Any) -> None:
        ax1, ax2 = fig.subplots(2, 1, sharex=True)
        x = np.arange(len(shards))
        means = [s["mean"] if s["mean"] is not None else np.nan for s in shards]
        ax1.plot(x, means, ".", ms=3)
        ax1.set_ylabel("mean score")
        ax1.set_title("Per shard (in name order)")
        ax2.plot(x, [s["error_rate"] for s in shards], ".", ms=3, color="tab:red")
        ax2.set_ylabel("error rate")
        ax2.set_xlabel("shard")
        from matplotlib.ticker import MaxNLocator

        ax2.xaxis.set_major_locator(MaxNLocator(integer=True))  # shards are counted: no 0.2 of a shard

    return _png(draw, (7.0, 4.0))


def figure_per_source(doc: dict) -> str:
    sources = sorted(doc["per_source"], key=lambda s: -s["rows"])[:MAX_PLOTTED_SOURCES]

    def draw(fig: Any) -> None:
        ax1, ax2 = fig.subplots(1, 2, sharey=True)
        names = [s["source"] or "(none)" for s in sources]
        ax1.barh(names, [s["mean"] or 0.0 for s in sources], xerr=[s["std"] or 0.0 for s in sources])
        ax1.set_xlabel("mean score (± std)")
        ax1.invert_yaxis()
        ax2.barh(names, [s["error_rate"] for s in sources], color="tab:red")
        ax2.set_xlabel("error rate")
        fig.suptitle(f"Per source (largest {len(sources)})")

    return _png(draw, (7.0, 1.0 + 0.3 * max(len(sources), 1)))


def figure_psi(doc: dict) -> str:
    bins = doc["drift"]["psi_bins"]

    def draw(fig: Any) -> None:
        ax = fig.subplots()
        x = np.arange(len(bins))
        ax.bar(x - 0.2, [b["baseline"] for b in bins], width=0.4, label="baseline")
        ax.bar(x + 0.2, [b["current"] for b in bins], width=0.4, label="this run")
        ax.set_xticks(x, [f"{b['lo']:.3g}–{b['hi']:.3g}" for b in bins], rotation=45, ha="right", fontsize=7)
        ax.set_ylabel("fraction of ok rows")
        ax.set_title(f"PSI bins (PSI = {doc['drift']['psi']:.4g})")
        ax.legend()

    return _png(draw)


# -- page -----------------------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}.alert{background:#fdd;border:1px solid #c00;padding:.6em}
tr.alert-night td{background:#fdd}
.okbox{background:#dfd;border:1px solid #0a0;padding:.6em}.thumbs{display:flex;flex-wrap:wrap;gap:8px}
figure{margin:0;width:170px;font-size:11px;word-break:break-all}figure img{max-width:160px;max-height:160px}
.plot{max-width:100%}.err{color:#a00}
"""


def _summary(doc: dict) -> str:
    s = doc["summary"]
    q = doc["quantiles"]
    rows = [
        ("completed shards", num("shards.completed", doc["shards"]["completed"], "int")),
        ("rows", num("summary.rows", s["rows"], "int")),
        ("ok rows", num("summary.ok", s["ok"], "int")),
        ("error rows", num("summary.errors", s["errors"], "int")),
        ("error rate", num("summary.error_rate", s["error_rate"], "rate")),
        ("mean score", num("summary.mean", s["mean"])),
        ("std", num("summary.std", s["std"])),
        ("min", num("summary.min", s["min"])),
        ("max", num("summary.max", s["max"])),
    ]
    rows += [(f"quantile {k}", num(f"quantiles.{k}", v)) for k, v in q.items()]
    if doc["shards"].get("failed_in_run") is not None:
        rows.insert(
            1,
            (
                "shards the score run reported failed",
                num("shards.failed_in_run", doc["shards"]["failed_in_run"], "int"),
            ),
        )
    body = "".join(f"<tr><th>{esc(k)}</th>{v}</tr>" for k, v in rows)
    return f"<table id='summary'>{body}</table>"


def _statuses(doc: dict) -> str:
    body = "".join(
        f"<tr><td>{esc(s['status'])}</td>{num(f'statuses.{i}.count', s['count'], 'int')}"
        f"{num(f'statuses.{i}.rate', s['rate'], 'rate')}</tr>"
        for i, s in enumerate(doc["statuses"])
    )
    return f"<table id='statuses'><tr><th>status</th><th>rows</th><th>share</th></tr>{body}</table>"


def _group_table(doc: dict, key: str, label: str) -> str:
    items = list(enumerate(doc[key]))
    # Worst first: highest error rate, then lowest mean score.
    items.sort(key=lambda t: (-t[1]["error_rate"], t[1]["mean"] if t[1]["mean"] is not None else -np.inf))
    head = f"<tr><th>{label}</th><th>rows</th><th>error rate</th><th>mean</th><th>std</th><th>min</th><th>max</th></tr>"
    body = "".join(
        f"<tr><td>{esc(g.get('name', g.get('source')) or '(none)')}</td>{num(f'{key}.{i}.rows', g['rows'], 'int')}"
        f"{num(f'{key}.{i}.error_rate', g['error_rate'], 'rate')}{num(f'{key}.{i}.mean', g['mean'])}"
        f"{num(f'{key}.{i}.std', g['std'])}{num(f'{key}.{i}.min', g['min'])}{num(f'{key}.{i}.max', g['max'])}</tr>"
        for i, g in items[:MAX_TABLE_ROWS]
    )
    more = f"<p>{len(items) - MAX_TABLE_ROWS:,} more in the JSON document.</p>" if len(items) > MAX_TABLE_ROWS else ""
    return f"<table id='{key}'>{head}{body}</table>{more}"


def _drift(doc: dict) -> str:
    d, base = doc["drift"], doc["baseline"]
    rows = [
        ("baseline", f"<td>{esc(base['scores'])}</td>"),
        ("baseline rows", num("baseline.summary.rows", base["summary"]["rows"], "int")),
        ("baseline error rate", num("baseline.summary.error_rate", base["summary"]["error_rate"], "rate")),
        ("baseline mean score", num("baseline.summary.mean", base["summary"]["mean"])),
        ("baseline median", num("baseline.quantiles.p50", base["quantiles"].get("p50"))),
        ("PSI", num("drift.psi", d["psi"])),
        ("KS statistic D", num("drift.ks_statistic", d["ks_statistic"])),
        ("KS p-value", num("drift.ks_pvalue", d["ks_pvalue"])),
    ]
    if not base.get("same_model", True):
        rows.append(("note", "<td class='err'>the baseline was scored by another model or checkpoint</td>"))
    body = "".join(f"<tr><th>{esc(k)}</th>{v}</tr>" for k, v in rows)
    return f"<table id='drift'>{body}</table><p>{esc(d['method'])}.</p>"


def figure_trend(doc: dict) -> str:
    """The nights of the history: median score, error rate and PSI against the baseline; nights that alerted
    are marked with a red ring, tonight with a black square."""
    nights = doc["history"]

    def draw(fig: Any) -> None:
        axes = fig.subplots(3, 1, sharex=True)
        x = np.arange(len(nights))
        series = (("median score", "p50"), ("error rate", "error_rate"), ("PSI vs baseline", "psi"))
        alerted = np.array([n["alert"] for n in nights], dtype=bool)
        for ax, (label, key) in zip(axes, series, strict=True):
            y = np.array([np.nan if n[key] is None else n[key] for n in nights], dtype=float)
            ax.plot(x, y, "-o", ms=4, color="tab:blue")
            ax.plot(x[alerted], y[alerted], "o", ms=11, mfc="none", mec="tab:red", mew=2, label="alert")
            ax.plot(x[-1:], y[-1:], "s", ms=6, color="k", label="this audit")
            ax.set_ylabel(label)
        axes[0].legend(loc="best", fontsize=8)
        axes[-1].set_xticks(
            x, [n["audited_at"][:16].replace("T", " ") for n in nights], rotation=30, ha="right", fontsize=7
        )
        fig.suptitle(f"The last {len(nights)} audits of this output")

    return _png(draw, (7.0, 6.0))


def _trend_table(doc: dict) -> str:
    head = "<tr><th>audited</th><th>selection</th><th>rows</th><th>error rate</th><th>median</th><th>PSI</th><th>alerts</th></tr>"
    body = "".join(
        f"<tr class='{'alert-night' if n['alert'] else 'night'}'><td>{esc(n['audited_at'])}</td>"
        f"<td>{esc(n['selection'])}</td>{num(f'history.{i}.rows', n['rows'], 'int')}"
        f"{num(f'history.{i}.error_rate', n['error_rate'], 'rate')}{num(f'history.{i}.p50', n['p50'])}"
        f"{num(f'history.{i}.psi', n['psi'])}<td>{esc('; '.join(n['alerts'])) or '-'}</td></tr>"
        for i, n in enumerate(doc["history"])
    )
    return f"<table id='history'>{head}{body}</table>"


def _per_source_vs_baseline(doc: dict) -> str:
    items = doc.get("per_source_vs_baseline") or []
    if not items:
        return ""
    head = (
        "<tr><th>source</th><th>rows</th><th>baseline rows</th><th>error rate</th><th>baseline</th>"
        "<th>mean</th><th>baseline</th><th>change</th></tr>"
    )
    body = "".join(
        f"<tr><td>{esc(s['source'] or '(none)')}</td>{num(f'per_source_vs_baseline.{i}.rows', s['rows'], 'int')}"
        f"{num(f'per_source_vs_baseline.{i}.baseline_rows', s['baseline_rows'], 'int')}"
        f"{num(f'per_source_vs_baseline.{i}.error_rate', s['error_rate'], 'rate')}"
        f"{num(f'per_source_vs_baseline.{i}.baseline_error_rate', s['baseline_error_rate'], 'rate')}"
        f"{num(f'per_source_vs_baseline.{i}.mean', s['mean'])}"
        f"{num(f'per_source_vs_baseline.{i}.baseline_mean', s['baseline_mean'])}"
        f"{num(f'per_source_vs_baseline.{i}.mean_change', s['mean_change'])}</tr>"
        for i, s in enumerate(items[:MAX_TABLE_ROWS])
    )
    return f"<h3>Per source against the baseline</h3><table id='per_source_vs_baseline'>{head}{body}</table>"


def _thumbs(doc: dict, images: dict[str, list[str | None]]) -> str:
    parts = []
    for which, title in (("lowest", "Lowest scored"), ("highest", "Highest scored")):
        figs = []
        for i, (t, uri) in enumerate(zip(doc["thumbnails"][which], images.get(which, []), strict=False)):
            img = (
                f"<img alt='{esc(t['key'])}' src='{uri}'>"
                if uri
                else f"<div class='err'>{esc(t.get('error') or 'no thumbnail')}</div>"
            )
            figs.append(
                f"<figure class='thumb' data-which='{which}'>{img}<figcaption>"
                f"{num(f'thumbnails.{which}.{i}.score', t['score'], tag='b')} "
                f"{esc(t['key'])}<br>{esc(t['shard'])} #{t['index']}</figcaption></figure>"
            )
        parts.append(f"<h3>{title}</h3><div class='thumbs' id='thumbs-{which}'>{''.join(figs)}</div>")
    return "".join(parts)


def _selection(doc: dict) -> str:
    s = doc.get("selection") or {"kind": "all"}
    if s["kind"] == "run" and s.get("quiet"):
        return (
            f"a quiet night: run {s['run_id']} (started {s.get('started')}) found nothing new in its input and "
            "wrote no shard"
        )
    if s["kind"] == "run":
        return f"the {s['shards']} shards run {s['run_id']} wrote (started {s.get('started')})"
    if s["kind"] == "under":
        return f"the {s['shards']} shards under {s['folder']}"
    return "every completed shard"


def plot_img(plot_id: str, alt: str, plot: Plot) -> str:
    """The `<img>` of a plot, with the tick labels its axes show as JSON in `data-ticks`."""
    ticks = html.escape(json.dumps(getattr(plot, "ticks", [])), quote=True)
    return f"<img class='plot' id='{plot_id}' alt='{esc(alt)}' data-ticks='{ticks}' src='{plot}'>"


def render(doc: dict, images: dict[str, list[str | None]]) -> str:
    """The HTML page for an audit document.

    Args:
        doc: the audit's JSON document (`dpiqa.engine.audit.run.run_audit`).
        images: thumbnail data URIs by `lowest`/`highest`, in the order of `doc["thumbnails"]`.
    """
    alerts = doc["alerts"]
    banner = (
        (
            "<div class='alert' id='alerts'><b>ALERT</b><ul>"
            + "".join(f"<li>{esc(a)}</li>" for a in alerts)
            + "</ul></div>"
        )
        if alerts
        else "<div class='okbox' id='alerts'>No threshold crossed.</div>"
    )
    model = doc.get("model") or {}
    plots = [
        ("Score distribution", figure_histogram(doc)),
        ("CDF", figure_cdf(doc)),
        ("Statuses", figure_statuses(doc)),
    ]
    sections = [
        f"<h1>dpiqa audit: {esc(doc['scores'])}</h1>",
        f"<p id='selection'>Audited: {esc(_selection(doc))}.</p>",
        f"<p>Generated {esc(doc['generated'])}; model {esc(model.get('model'))} "
        f"(checkpoint {esc(model.get('checkpoint_hash'))}, code {esc(model.get('code_version'))}).</p>",
        banner,
        *([f"<p class='err' id='history-error'>{esc(doc['history_error'])}</p>"] if doc.get("history_error") else []),
        "<h2>Summary</h2>",
        _summary(doc),
        plot_img("plot-histogram", "score histogram", plots[0][1]),
        plot_img("plot-cdf", "score CDF", plots[1][1]),
        "<h2>Statuses</h2>",
        _statuses(doc),
        plot_img("plot-statuses", "rows by status", plots[2][1]),
    ]
    if doc.get("drift"):
        sections += [
            "<h2>Drift against the baseline</h2>",
            _drift(doc),
            plot_img("plot-psi", "PSI bins", figure_psi(doc)),
        ]
    if doc.get("baseline"):
        sections.append(_per_source_vs_baseline(doc))
    if len(doc.get("history") or []) > 1:
        sections += [
            "<h2>Night by night</h2>",
            _trend_table(doc),
            plot_img("plot-trend", "trend over audits", figure_trend(doc)),
        ]
    sections += [
        "<h2>Per source</h2>",
        _group_table(doc, "per_source", "source"),
        plot_img("plot-per-source", "per source", figure_per_source(doc)),
        "<h2>Per shard</h2>",
        _shards_table_note(doc),
        _group_table(doc, "per_shard", "shard"),
        plot_img("plot-per-shard", "per shard", figure_per_shard(doc)),
    ]
    if doc["thumbnails"]["lowest"] or doc["thumbnails"]["highest"]:
        sections += ["<h2>Thumbnails</h2>", _thumbs(doc, images)]
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>dpiqa audit</title>"
        f"<style>{CSS}</style></head><body>{''.join(sections)}</body></html>"
    )


def _shards_table_note(doc: dict) -> str:
    """How many shards the audit read, how many the page and the JSON list (the worst and the best), and the
    Parquet file with every shard's row."""
    t = doc.get("per_shard_table")
    if not t or t["shards"] <= t["shown"]:
        return ""
    where = f"; every shard: {esc(t['file'])}" if t.get("file") else ""
    return (
        f"<p id='per-shard-table'>{num('per_shard_table.shards', t['shards'], 'int', 'span')} shards; the "
        f"{num('per_shard_table.shown', t['shown'], 'int', 'span')} worst and best are listed{where}.</p>"
    )
