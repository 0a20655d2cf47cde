"""Example: score a folder of JPEGs in Python and show the worst of them (a notebook in `# %%` cells).

    python examples/score_folder.py PHOTOS [--worst 5] [--sheet worst.png]

In Jupyter or VS Code each `# %%` cell runs on its own; `display(sheet)` shows the contact sheet inline.
"""

# %% The folder, and the model: what `dpiqa score --model` takes (demo, brisque, a checkpoint, a Hub id)
import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

import dpiqa

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("folder", type=Path, help="a folder of JPEGs")
parser.add_argument("--model", default="demo")
parser.add_argument("--worst", type=int, default=5, help="how many of the worst to show")
parser.add_argument("--sheet", type=Path, default=Path("worst.png"), help="where the contact sheet goes")
args = parser.parse_args()

paths = sorted(p for p in args.folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
scorer = dpiqa.load_scorer(args.model)  # once: it loads the model

# %% Score them all (batched); a file that is no image gets a status instead of stopping the rest
scores = scorer.score(paths, errors="status")
print(f"{len(paths)} images scored with {args.model}: {int(scores.ok.sum())} ok")
for path, status, error in zip(paths, scores.status, scores.error, strict=True):
    if status != "ok":
        print(f"  {path.name}: {status} ({error})")

# %% The worst first (higher is better; NaN, the images that could not be scored, sort last and are left out)
order = [i for i in np.argsort(scores.score) if scores.ok[i]][: args.worst]
print(f"the {len(order)} worst:")
for rank, i in enumerate(order, start=1):
    print(f"  {rank}. {paths[i].name}  {scores.score[i]:.3f}  ({scores.width[i]}x{scores.height[i]})")

# %% Shown: a contact sheet of the worst, as displayed (EXIF orientation applied); `display(sheet)` in a notebook
thumbs = [ImageOps.exif_transpose(Image.open(paths[i])).convert("RGB") for i in order]
for thumb in thumbs:
    thumb.thumbnail((160, 160))
sheet = Image.new("RGB", (160 * max(1, len(thumbs)), 160), "white")
for k, thumb in enumerate(thumbs):
    sheet.paste(thumb, (160 * k, 0))
sheet.save(args.sheet)
print(f"contact sheet: {args.sheet}")
