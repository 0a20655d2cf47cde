"""Ablations: train named variants of the teacher or the student over seeded splits with the same Ray
Train job, and tabulate their test SRCC/PLCC with the spread over seeds and their parameter counts."""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dpiqa import storage
from dpiqa.errors import UsageError
from dpiqa.storage import get_fs, join

if TYPE_CHECKING:  # the training code imports torch; `dpiqa --help` lists the variants without it
    from dpiqa.engine.training.run import TrainConfig

log = logging.getLogger(__name__)

# Teacher variants: config switches (`TeacherConfig`); the paper's model is `paper`.
TEACHER_VARIANTS: dict[str, dict] = {
    "paper": {},
    "no-text-adapter": {"text_adapter": False},
    "empty-prompt": {"prompt_set": "empty-1"},
    "coarse-495-prompts": {"prompt_set": "dpiqa-coarse-495"},
    "mean-pooled-prompts": {"prompt_pooling": "mean"},
    "no-image-adapter": {"image_adapter": False},
    "t-0": {"timestep": 0},
    "t-100": {"timestep": 100},
    "t-500": {"timestep": 500},
    "levels-0-1": {"decoder_levels": [0, 1]},
    "levels-2-3": {"decoder_levels": [2, 3]},
    "level-3-only": {"decoder_levels": [3]},
}
# Student variants: the distillation loss (`dpiqa.models.distill`); the paper's is feature-level distillation.
STUDENT_VARIANTS: dict[str, dict] = {
    "feature-distillation": {"distill_mode": "feature"},
    "score-distillation": {"distill_mode": "score"},
    "feature-and-score": {"distill_mode": "both"},
    "labels-only": {"distill_mode": "none"},
}


@dataclass
class AblationRow:
    variant: str
    changes: dict
    parameters: dict
    summary: dict  # metric -> {median, min, max, std, n}
    outputs: list[str]


def variants_for(kind: str) -> dict[str, dict]:
    return TEACHER_VARIANTS if kind == "teacher" else STUDENT_VARIANTS


def run_ablation(base: TrainConfig, variants: list[str], address: str | None = None) -> list[AblationRow]:
    """Train each variant of `base` (same data, splits and protocol) into `base.output/VARIANT/`."""
    from dpiqa.engine.training.run import run_training
    from dpiqa.models.info import model_info

    table = variants_for(base.model.kind)
    unknown = [v for v in variants if v not in table]
    if unknown:
        raise UsageError(f"unknown {base.model.kind} variant(s) {', '.join(unknown)}; known: {', '.join(table)}")
    rows = []
    for name in variants:
        changes = table[name]
        variant = (
            {"distill_mode": changes["distill_mode"]}
            if base.model.kind == "student"
            else {"model": dataclasses.replace(base.model, overrides={**base.model.overrides, **changes})}
        )
        config = dataclasses.replace(base, output=join(base.output, name), **variant)
        log.info("ablate: variant %s (%s)", name, changes or "the paper's model")
        result = run_training(config, address=address)
        name_for_info = config.model.config or ("dpiqa-teacher" if config.model.kind == "teacher" else "dpiqa-student")
        info = model_info(name_for_info, overrides={**config.model.overrides} or None) if not config.model.init else {}
        rows.append(
            AblationRow(
                name,
                changes,
                info.get("parameters", {}) if info else {},
                result.summary.get("median") or {},
                [s["output"] for s in result.splits],
            )
        )
    return rows


def markdown(rows: list[AblationRow], title: str) -> str:
    """The table: median test SRCC/PLCC over splits with their range, parameters, and the change."""
    paper = rows[0].parameters.get("total") if rows and rows[0].parameters else None
    lines = [
        f"# {title}",
        "",
        "| variant | change | SRCC median [min, max] | PLCC median [min, max] | splits | parameters (delta) |",
        "| --- | --- | --- | --- | ---: | ---: |",
    ]

    def cell(summary: dict, metric: str) -> str:
        m = summary.get(metric)
        return f"{m['median']:.4f} [{m['min']:.4f}, {m['max']:.4f}]" if m else "-"

    for r in rows:
        total = r.parameters.get("total")
        params = f"{total:,}" if total is not None else "-"
        if total is not None and paper is not None and r is not rows[0]:
            params += f" ({total - paper:+,})"
        n = r.summary.get("srcc", {}).get("n", 0)
        change = ", ".join(f"{k}={json.dumps(v)}" for k, v in r.changes.items()) or "(the paper's model)"
        lines.append(
            f"| {r.variant} | {change} | {cell(r.summary, 'srcc')} | {cell(r.summary, 'plcc')} | {n} | {params} |"
        )
    return "\n".join(lines) + "\n"


def write_table(rows: list[AblationRow], output: str, title: str, storage_options: dict | None = None) -> None:
    fs, path = get_fs(output, storage_options)
    fs.makedirs(path, exist_ok=True)
    with fs.open(storage.fs_join(path, "ablation.md"), "wt") as f:
        f.write(markdown(rows, title))
    with fs.open(storage.fs_join(path, "ablation.json"), "wt") as f:
        json.dump([dataclasses.asdict(r) for r in rows], f, indent=2, sort_keys=True)
