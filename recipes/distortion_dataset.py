"""Builds the labelled set of graded synthetic distortions of docs/reports/cross-dataset.md.

A labelled dataset of graded synthetic distortions of photographs, for cross-dataset evaluation.

Each photograph in the given folders (longer side resized to 512) is saved with every distortion of
`dpiqa.engine.distortions` at every level, as PNG, with a pseudo-MOS on AGIQA-3K's 0-5 scale: 5 for the
reference and 5 x (1 - 0.15 x level) for a distorted copy (the training pseudo-label of
`dpiqa.engine.training.data.SyntheticDistortions`). `labels.csv` has `path, mos, name, group` (group = the
photograph, so a grouped split keeps a photograph's copies together); read it with `--dataset csv
--dataset-option group_column=group --dataset-option mos_scale=5`.

    python recipes/distortion_dataset.py PHOTO_DIR [PHOTO_DIR ...] --output DIR
    # e.g. the photographs of Debian's mate-backgrounds package:
    apt-get download mate-backgrounds && dpkg -x mate-backgrounds_*.deb /tmp/mate
    python recipes/distortion_dataset.py /tmp/mate/usr/share/backgrounds/mate/nature --output ../runs/wallpapers
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dpiqa.engine.distortions import DISTORTIONS, LEVELS, distort  # noqa: E402

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--output", type=Path, required=True)
    args = ap.parse_args()
    photos = sorted(p for d in args.folders for p in d.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)
    if not photos:
        raise SystemExit(f"no photographs ({', '.join(PHOTO_SUFFIXES)}) in {', '.join(map(str, args.folders))}")
    (args.output / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for photo in photos:
        img = Image.open(photo).convert("RGB")
        img.thumbnail((512, 512), Image.Resampling.LANCZOS)
        stem = photo.stem
        ref = args.output / "images" / f"{stem}.png"
        img.save(ref)
        rows.append((f"images/{ref.name}", 5.0, stem, stem))
        for kind in DISTORTIONS:
            for level in LEVELS:
                out = args.output / "images" / f"{stem}__{kind}-{level}.png"
                Image.fromarray(distort(img, kind, level, seed=level)).save(out)
                rows.append((f"images/{out.name}", 5.0 * (1 - 0.15 * level), out.stem, stem))
        print(f"{stem}: {1 + len(DISTORTIONS) * len(LEVELS)} images")
    with open(args.output / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "mos", "name", "group"])
        w.writerows(rows)
    print(f"{len(rows)} images from {len(photos)} photographs -> {args.output / 'labels.csv'}")


if __name__ == "__main__":
    main()
