"""Example: a quality column in a Ray Data pipeline, from `read_images` to `write_parquet`.

    python examples/ray_pipeline.py IMAGES OUT [--model demo]

On a cluster start it with `RAY_ADDRESS=auto`; `dpiqa.ray.add_scores` gives each scoring actor a GPU where the
cluster has them. The same transform by hand:

    ds.map_batches(dpiqa.ray.Scorer, fn_constructor_kwargs={"model": "demo", "column": "image"},
                   batch_size=32, concurrency=4, num_gpus=1)
"""

# %% Read: any Ray Data source with an image column of bytes or arrays will do
import argparse

import pyarrow.parquet as pq
import ray.data

import dpiqa.ray

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("images", help="a folder (or any URL read_images takes) of images")
parser.add_argument("out", help="where the Parquet files go")
parser.add_argument("--model", default="demo")
args = parser.parse_args()

# `read_images` decodes with PIL into arrays; `ray.data.read_binary_files(..., include_paths=True)` (column
# `bytes`) hands the file's bytes over instead, decoded exactly as `dpiqa score` decodes them.
ds = ray.data.read_images(args.images, include_paths=True)

# %% Score: `score` (the model's MOS units), `status` and `error` columns; a bad image is a status, not a failure
ds = dpiqa.ray.add_scores(ds, model=args.model, column="image", batch_size=16)

# %% Write: one row per image, without the pixels
ds.drop_columns(["image"]).write_parquet(args.out)

table = pq.read_table(args.out).sort_by("score")
print(f"{table.num_rows} images scored; the lowest: {table['path'][0]} ({table['score'][0].as_py():.3f})")
