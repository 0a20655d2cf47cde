"""Builders of `dpiqa score` outputs with chosen scores: the real shard reader and Parquet writer, with
a score function standing in for the model (tests of `audit` and `filter` need exact, known scores)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from dpiqa.engine import schema
from dpiqa.engine.output import OutputLocation
from dpiqa.engine.shards.naming import shard_names
from dpiqa.engine.stages.source import SourceStage
from dpiqa.engine.stages.write import ShardWriter

ScoreFn = Callable[[str, int, str], float | None]


def score_shards(
    urls: list[str],
    output: str,
    score_fn: ScoreFn,
    storage_options: dict | None = None,
    model: str = "synthetic",
    skip: tuple[str, ...] = (),
) -> dict[str, str]:
    """Write OUT/scores/NAME.parquet and OUT/_done/NAME.json for each shard as `dpiqa score` does.

    Args:
        urls: shard URLs (read with the real shard reader: statuses of bad samples are its own).
        output: the output location.
        score_fn: `(shard URL, index, key) -> score`, or None for a `score_error` row.
        storage_options: fsspec options.
        model: the `model` column and the identity's model name.
        skip: shard URLs whose output is left out (as if not scored yet).

    Returns:
        shard URL -> output name.
    """
    names = shard_names(urls)
    out = OutputLocation(output, storage_options)
    identity = {"model": model, "checkpoint_hash": f"test:{model}"}
    digest = out.claim(identity)
    scores_schema = schema.with_metadata(schema.SCORES_SCHEMA, {**identity, "code_version": "test"})
    reader = SourceStage(chunk_size=5, storage_options=storage_options)
    for url in urls:
        if url in skip:
            continue
        writer = ShardWriter(out, url, names[url], scores_schema, None, model, digest)
        for batch in reader.read_shard(url):
            n = len(batch["index"])
            score = np.full(n, np.nan, dtype=np.float32)
            status = batch["status"].copy()
            error = batch["error"].copy()
            for i in range(n):
                if status[i] == schema.OK:
                    s = score_fn(url, int(batch["index"][i]), batch["key"][i])
                    if s is None:
                        status[i], error[i] = schema.SCORE_ERROR, "no finite score"
                    else:
                        score[i] = s
            writer.add(
                {
                    "shard": batch["shard"],
                    "index": batch["index"],
                    "key": batch["key"],
                    "status": status,
                    "error": error,
                    "score": score,
                    "width": np.full(n, 40, np.int32),
                    "height": np.full(n, 30, np.int32),
                }
            )
        fact = writer.commit()
        assert fact.error is None, fact
    return names
