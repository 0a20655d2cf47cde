"""Writes the AGIQA-3K report (docs/reports/agiqa3k.md): the small teacher, the student distilled from it
and BRISQUE on the same seeded test splits, from the outputs of scripts/report_agiqa.sh."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import machine  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=Path, required=True, help="the OUT folder of scripts/report_agiqa.sh")
    ap.add_argument("--commands", type=Path, required=True, help="the commands that were run, one per line")
    ap.add_argument("--output", type=Path, default=REPO / "docs" / "reports" / "agiqa3k.md")
    args = ap.parse_args()

    teacher = json.loads((args.runs / "teacher" / "summary.json").read_text())
    student = json.loads((args.runs / "student" / "summary.json").read_text())
    brisque = {int(p.stem.split("-")[1]): json.loads(p.read_text()) for p in sorted(args.runs.glob("brisque-*.json"))}
    rows, t_srcc, s_srcc, b_srcc = [], [], [], []
    for t, s in zip(teacher["splits"], student["splits"], strict=True):
        seed = t["seed"]
        b = brisque[seed]["metrics"]
        assert brisque[seed]["split"]["seed"] == seed and b["n"] == t["test"]["n"], "BRISQUE saw other images"
        rows.append(f"| {seed} | {t['test']['n']} | {t['test']['srcc']:.4f} / {t['test']['plcc']:.4f} | "
                    f"{s['test']['srcc']:.4f} / {s['test']['plcc']:.4f} | {b['srcc']:.4f} / {b['plcc']:.4f} | "
                    f"{s['test']['srcc'] / t['test']['srcc']:.1%} |")
        t_srcc.append(t["test"]["srcc"])
        s_srcc.append(s["test"]["srcc"])
        b_srcc.append(b["srcc"])
    med = lambda d, k: d["median"][k]["median"]  # noqa: E731
    bm_srcc = sorted(b_srcc)[len(b_srcc) // 2]
    bm_plcc = sorted(b["metrics"]["plcc"] for b in brisque.values())[len(brisque) // 2]
    ratio = med(student, "srcc") / med(teacher, "srcc")
    text = f"""# AGIQA-3K: a small DP-IQA teacher, its distilled student, and BRISQUE

Trained and measured here with `scripts/report_agiqa.sh` on: {machine()}.

The teacher is the DP-IQA teacher architecture (`models/teacher.py`: VAE encoder, U-Net at t = 1, image and
text adapters, quality decoder, score MLP) in the `dpiqa-teacher-small` configuration (64 px, random
initialisation, random prompt embeddings): Stable Diffusion and CLIP weights cannot be downloaded here, so
**this teacher has no diffusion prior**. The student is `dpiqa-student-small` (MobileNetV3-Small backbone,
no ImageNet weights) distilled from the teacher of the same split with the spec's loss
(MSE to MOS/5 + MSE to the teacher's 8x16x16 quality map). BRISQUE is the `brisque` package's LIVE-trained
SVR, scored through the same `dpiqa eval` path on the same test images.

Protocol: 3 prompt-grouped splits (seeds 0, 1, 2; 70/10/20; no prompt in two parts), the epoch chosen on
the validation part, the test part touched once. Metrics on the test part: SRCC / PLCC (raw).

| split | test images | teacher SRCC / PLCC | student SRCC / PLCC | BRISQUE SRCC / PLCC | student / teacher SRCC |
| ---: | ---: | --- | --- | --- | ---: |
{chr(10).join(rows)}
| **median** | | **{med(teacher, 'srcc'):.4f} / {med(teacher, 'plcc'):.4f}** | **{med(student, 'srcc'):.4f} / {med(student, 'plcc'):.4f}** | **{bm_srcc:.4f} / {bm_plcc:.4f}** | **{ratio:.1%}** |

Goals: teacher and student above BRISQUE ({'met' if min(med(teacher, 'srcc'), med(student, 'srcc')) > bm_srcc else 'NOT met'}); student at least 95 % of the teacher's SRCC ({'met' if ratio >= 0.95 else 'NOT met'}).

Per-split checkpoints with their cards (protocol, split, metrics, machine): `teacher/split-N/`, `student/split-N/`
under the run folder; `summary.json` beside them holds every metric (KRCC, fitted PLCC, RMSE) and the spread.

## Commands

```bash
{args.commands.read_text().strip()}
```
"""
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
