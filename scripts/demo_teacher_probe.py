"""What each teacher lever does, measured cheaply: the frozen DINOv2 ViT-S/14 features (and the NSS
statistics) of a seeded subset of the demo recipe's training rows are computed once, then the same quality
head is trained on them in several variants (with or without the NSS channels, the ranking loss, the
ranking table), each picked on the same validation (AGIQA-3K's validation part and the held-out photographs'
ranking), and each measured on AGIQA-3K's grouped test part and the demo corpus's ranking. The demo corpus is
only measured, never trained on or selected on.

    python scripts/demo_teacher_probe.py --agiqa ../shared/datasets/agiqa3k --ranking ../runs/ranking \\
        --fraction 0.25 --output ../runs/teacher-probe
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

VARIANTS = {
    # name: (NSS channels, ranking table rows, ranking loss weight)
    "vit, AGIQA-3K only, labels": (False, False, 0.0),
    "vit + ranking table, labels": (False, True, 0.0),
    "vit + ranking table, labels + ranking loss": (False, True, 1.0),
    "vit + nss + ranking table, labels": (True, True, 0.0),
    "vit + nss + ranking table, labels + ranking loss": (True, True, 1.0),
}


def main() -> None:  # one experiment, read top to bottom
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--agiqa", required=True)
    ap.add_argument("--ranking", type=Path, required=True, help="the folder of scripts/build_ranking_set.py")
    ap.add_argument("--fraction", type=float, default=0.25, help="of the training rows (seeded; default 0.25)")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--output", type=Path, required=True)
    args = ap.parse_args()

    import torch
    from PIL import Image

    from dpiqa import models
    from dpiqa.engine.datasets import load_dataset
    from dpiqa.engine.demo import LEVELS as DEMO_LEVELS
    from dpiqa.engine.demo import PHOTOGRAPHS, distortion_ranking, reference
    from dpiqa.engine.distortions import DISTORTIONS, distort
    from dpiqa.engine.metrics import compute_metrics
    from dpiqa.engine.splits import make_split
    from dpiqa.engine.stages.decode import decode_image, resize
    from dpiqa.engine.training.data import rank_id, rank_table_rows
    from dpiqa.engine.training.loop import rank_srcc, selection
    from dpiqa.models.distill import ranking_loss
    from dpiqa.models.student import DPIQAStudent

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    args.output.mkdir(parents=True, exist_ok=True)
    cfg = models.named_config(
        "dpiqa-student-vits14",
        {
            "map_channels": 64,
            "map_size": 8,
            "head_hidden": 256,
            "freeze_backbone": True,
            "aux_features": "nss",
            "mos_scale": 5.0,
        },
    )
    model = DPIQAStudent(cfg, pretrained_backbone=True).eval()
    pre = cfg.preprocessing

    labeled = load_dataset("agiqa3k", args.agiqa)
    split = make_split(labeled.names, 0, (0.7, 0.1, 0.2), groups=labeled.groups)
    rng = np.random.default_rng(0)

    def agiqa(indices, ranked):
        return [
            {
                "path": labeled[int(i)].path,
                "target": labeled[int(i)].mos / 5.0,
                "rank_group": rank_id(labeled[int(i)].name) if ranked else -1,
                "rank_family": 0,
                "level": 0,
            }
            for i in indices
        ]

    train_idx = np.sort(rng.choice(split.train, round(len(split.train) * args.fraction), replace=False))
    table = rank_table_rows(str(args.ranking / "train.csv"), 5.0)
    chosen = {rank_id(labeled[int(i)].name) for i in train_idx}
    views = sorted({r["rank_group"] for r in table if not math.isfinite(r["target"])})
    views = set(rng.choice(views, round(len(views) * args.fraction), replace=False).tolist())
    table = [r for r in table if r["rank_group"] in chosen or r["rank_group"] in views]
    sets = {
        "train": agiqa(train_idx, True),
        "table": table,
        "val": agiqa(split.val, False),
        "val_rank": rank_table_rows(str(args.ranking / "val.csv"), 5.0),
        "test": agiqa(split.test, False),
    }

    def features(images: list[np.ndarray]) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for s in range(0, len(images), 32):
                x = pre.to_tensor(torch.as_tensor(np.stack(images[s : s + 32])))
                out.append(model.backbone_features(x).half().numpy())
        return np.concatenate(out)

    cache = args.output / "features.npz"
    if cache.exists():
        feats = dict(np.load(cache))
    else:
        feats = {}
        for name, rows in sets.items():
            feats[name] = features([decode_image(Path(r["path"]).read_bytes(), pre)[0] for r in rows])
            print(f"features: {name} {len(rows)}", flush=True)
        demo, keys = [], []
        for _source, photo, loader in PHOTOGRAPHS:
            img = reference(loader)
            demo.append(resize(img, pre))
            keys.append(f"{photo}/reference")
            for kind in DISTORTIONS:
                for level in DEMO_LEVELS:
                    demo.append(resize(Image.fromarray(distort(img, kind, level, seed=level)), pre))
                    keys.append(f"{photo}/{kind}-{level}")
        feats["demo"] = features(demo)
        feats["demo_keys"] = np.asarray(keys)
        np.savez(cache, **feats)
        print("features: demo corpus", len(keys), flush=True)

    def columns(rows):
        return (
            np.asarray([r["target"] for r in rows], np.float32),
            np.asarray([[r["rank_group"], r["rank_family"], r["level"]] for r in rows], np.int64),
        )

    results = {}
    for variant, (nss, with_table, weight) in VARIANTS.items():
        channels = slice(None) if nss else slice(0, 384)
        head_cfg = cfg if nss else type(cfg)(**{**cfg.__dict__, "aux_features": ""})
        torch.manual_seed(0)
        head = DPIQAStudent(head_cfg, pretrained_backbone=False)
        params = [*head.map_head.parameters(), *head.mlp.parameters()]
        opt = torch.optim.Adam(params, lr=5e-4)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, [14], 0.2)
        x = np.concatenate([feats["train"], feats["table"]]) if with_table else feats["train"]
        y, ranked = columns(sets["train"] + sets["table"] if with_table else sets["train"])
        x = torch.as_tensor(x[:, channels].astype(np.float32))
        best = None

        def score(name, head=head, channels=channels):
            with torch.no_grad():
                f = torch.as_tensor(feats[name][:, channels].astype(np.float32))
                return np.concatenate(
                    [head(f[s : s + 256], from_backbone=True)[0].numpy() for s in range(0, len(f), 256)]
                )

        for epoch in range(args.epochs):
            erng = np.random.default_rng([0, epoch])
            groups = np.where(ranked[:, 0] < 0, -1 - np.arange(len(y)), ranked[:, 0])
            _, inverse = np.unique(groups, return_inverse=True)
            order = np.lexsort((erng.random(len(y)), erng.permutation(inverse.max() + 1)[inverse]))
            head.train()
            for s in range(0, len(order) - 31, 32):
                b = order[s : s + 32]
                pred, _ = head(x[b], from_backbone=True)
                t = torch.as_tensor(y[b])
                keep = torch.isfinite(t)
                loss = ((pred[keep] - t[keep]) ** 2).mean() if keep.any() else pred.sum() * 0
                if weight:
                    r = torch.as_tensor(ranked[b])
                    rl = ranking_loss(pred, r[:, 0], r[:, 1], r[:, 2], 0.05)
                    if rl is not None:
                        loss = loss + weight * rl
                opt.zero_grad()
                loss.backward()
                opt.step()
            sched.step()
            head.eval()
            vt, _ = columns(sets["val"])
            m = compute_metrics(score("val") * 5, vt * 5)
            _, vr = columns(sets["val_rank"])
            sel = selection({"val_srcc": m["srcc"], "val_rank_srcc": rank_srcc(score("val_rank"), vr)})
            if best is None or sel["val_select"] > best[0]:
                best = (
                    sel["val_select"],
                    epoch,
                    {k: v.clone() for k, v in head.state_dict().items()},
                    m["srcc"],
                    rank_srcc(score("val_rank"), vr),
                )
        head.load_state_dict(best[2])
        head.eval()
        tt, _ = columns(sets["test"])
        test = compute_metrics(score("test") * 5, tt * 5)
        demo = distortion_ranking(
            [{"key": str(k), "score": float(s)} for k, s in zip(feats["demo_keys"], score("demo"), strict=True)]
        )
        results[variant] = {
            "epoch": best[1],
            "val_srcc": best[3],
            "val_rank_srcc": best[4],
            "test_srcc": test["srcc"],
            "test_plcc": test["plcc"],
            "demo_overall": demo["overall_srcc"],
            "demo_per_distortion": {k: v["srcc_level_vs_score"] for k, v in demo["per_distortion"].items()},
            "training_rows": len(y),
        }
        print(variant, json.dumps(results[variant]), flush=True)
    (args.output / "probe.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
