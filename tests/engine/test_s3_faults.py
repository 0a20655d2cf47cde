"""Scoring through an S3 endpoint that throttles (503 SlowDown), drops connections and is slow."""

from __future__ import annotations

from pathlib import Path

import corpus
import fsspec
import pytest
from s3faults import FaultProxy
from test_pipeline import MODEL, read_rows

from dpiqa.engine.executor.ray_actors import RayExecutor
from dpiqa.engine.pipeline import ScoreConfig, run_score


def test_faulty_s3_completes_with_full_output_and_counts_retries(ray_local, s3, s3_server, tmp_path):
    bucket, options = s3
    fs = fsspec.filesystem("s3", **options)
    for path in corpus.write_corpus(tmp_path, shards=4, per_shard=12):
        fs.put(path, f"{bucket}/shards/{Path(path).name}")
    clean = run_score(
        ScoreConfig(
            input=f"s3://{bucket}/shards/", output=f"s3://{bucket}/clean", model=MODEL, storage_options=options
        ),
        RayExecutor(),
    )
    assert clean.manifest["io_retries"] == 0

    with FaultProxy(s3_server, slowdown_every=6, drop_every=2, latency=0.02) as proxy:
        faulty = {**options, "client_kwargs": {"endpoint_url": proxy.url}}
        result = run_score(
            ScoreConfig(
                input=f"s3://{bucket}/shards/", output=f"s3://{bucket}/faulty", model=MODEL, storage_options=faulty
            ),
            RayExecutor(),
        )
        injected = dict(proxy.injected)
        # a fault on the run manifest's own uploads happens after the manifest's count was taken
        countable = [
            f
            for f in proxy.faults
            if f[0] == "slowdown" and not f[2].endswith("/manifest.json") and "/runs/" not in f[2]
        ]
    assert injected["slowdown"] >= 3 and injected["dropped"] >= 1, injected
    assert result.exit_code == 0 and result.manifest["rows"] == 48
    # every throttled request was retried, and counted; dropped bodies are re-read by s3fs itself
    assert result.manifest["io_retries"] >= len(countable), proxy.faults
    a, b = read_rows(f"s3://{bucket}/clean", options), read_rows(f"s3://{bucket}/faulty", options)
    assert [(r["shard"], r["index"], r["key"], r["status"]) for r in a] == [
        (r["shard"], r["index"], r["key"], r["status"]) for r in b
    ]
    assert [r["score"] for r in a] == pytest.approx([r["score"] for r in b], rel=1e-5)
