"""Scoring through an S3 endpoint that throttles (503 SlowDown), drops connections and is slow."""

from __future__ import annotations

import os
from pathlib import Path

import boto3
import corpus
import fsspec
import pytest
from s3faults import FaultProxy
from test_pipeline import MODEL, read_rows

from dpiqa.engine.executor.ray_actors import RayExecutor
from dpiqa.engine.pipeline import ScoreConfig, run_score
from dpiqa.storage import RETRIES, RetryingReader, get_fs


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
    # every throttled request was retried, and counted (a dropped connection that botocore retried counts too).
    # While every listing ran as 98 concurrent key ranges, one throttled request in ~50 went uncounted; a listing of
    # at most 1,000 keys is one request now, and the count is whole (12 of 11 here). A listing of more keys still
    # runs in ranges: tests/engine/test_resume_listing.py lists 1,100 markers, without faults.
    assert result.manifest["io_retries"] >= len(countable), proxy.faults
    a, b = read_rows(f"s3://{bucket}/clean", options), read_rows(f"s3://{bucket}/faulty", options)
    assert [(r["shard"], r["index"], r["key"], r["status"]) for r in a] == [
        (r["shard"], r["index"], r["key"], r["status"]) for r in b
    ]
    assert [r["score"] for r in a] == pytest.approx([r["score"] for r in b], rel=1e-5)


def test_a_ranged_get_cut_past_s3fs_own_retries_is_reopened_at_its_offset(s3, s3_server):
    """botocore's retries off (`max_attempts: 1`), and five ranged GETs of one block in a row cut half-way
    through their body (s3fs's own five tries of that range): the error reaches `RetryingReader`, which
    reopens the object at the offset it had reached (a new GET whose range starts there, not at a block's
    start) and reads on; the bytes are the object's, and the one reopen is the one retry counted."""
    bucket, options = s3
    data = os.urandom(1_000_000)
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").put_object(
        Bucket=bucket, Key="shard.tar", Body=data
    )
    with FaultProxy(s3_server, slowdown_every=10**9, drop_every=10**9, latency=0, cut_ranged=range(2, 7)) as proxy:
        faulty = {
            **options,
            "client_kwargs": {"endpoint_url": proxy.url},
            "config_kwargs": {"retries": {"max_attempts": 1}},
        }
        fs, path = get_fs(f"s3://{bucket}/shard.tar", faulty)
        RETRIES.take()
        with RetryingReader(fs, path, block_size=1 << 17) as reader:
            got = b"".join(iter(lambda: reader.read(70_000), b""))
        retries = RETRIES.take()
    assert got == data  # none lost, none twice
    cut = [r for _, r, dropped in proxy.ranged if dropped]
    assert len(cut) == 5 and len(set(cut)) == 1, proxy.ranged  # s3fs's five tries of one range, all cut
    block_start = int(cut[0].split("=")[1].split("-")[0])
    starts = [int(r.split("=")[1].split("-")[0]) for _, r, _ in proxy.ranged]
    reopened = [s for s in starts if s % 70_000 == 0 and s not in (0, block_start)]
    # the reader had handed out two reads of 70,000 bytes when the block past them failed: it reopens there
    assert reopened == [140_000] and starts[starts.index(140_000) - 1] == block_start
    assert retries == 1  # our reopen; botocore made no retry of its own to count
