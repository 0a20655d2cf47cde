"""Example: a quality column on a Hugging Face `datasets` dataset, with `Dataset.map`.

    python examples/hf_datasets.py IMAGES [--model demo]

`datasets.Image()` hands `map` PIL images; the scorer takes a list of them as one batch. For a dataset of the
Hub: `load_dataset("NAME", split="train").map(...)` the same way.
"""

# %% A dataset with an image column (here from a folder of files)
import argparse
from pathlib import Path

import datasets

import dpiqa

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("images", type=Path, help="a folder of images")
parser.add_argument("--model", default="demo")
args = parser.parse_args()

files = sorted(str(p) for p in args.images.iterdir() if p.is_file())
ds = datasets.Dataset.from_dict({"image": files}).cast_column("image", datasets.Image())

# %% Score in batches: one model call per batch of 16 (a bad image would raise dpiqa.ImageError, naming it)
scorer = dpiqa.load_scorer(args.model)
ds = ds.map(
    lambda batch: {"quality": scorer(batch["image"])},
    batched=True,
    batch_size=16,
    new_fingerprint=f"dpiqa-{args.model}",  # the scorer holds a model, which datasets' cache cannot hash
)

# %% The best and the worst
ranked = ds.sort("quality")
print(f"{len(ds)} images; worst quality {ranked[0]['quality']:.3f}, best {ranked[-1]['quality']:.3f}")
