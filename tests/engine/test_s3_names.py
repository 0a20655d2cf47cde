"""S3 as users meet it (issue 39), on a real S3 API (moto's server) through s3fs: an output bucket that does
not exist is refused, naming it, not created; a key holding `?versionId=` is read by its name."""

from __future__ import annotations

import json

import boto3
import corpus
import pyarrow.parquet as pq
import pytest

from dpiqa.engine.executor.local import LocalExecutor
from dpiqa.engine.output import OutputLocation
from dpiqa.engine.pipeline import ScoreConfig, run_score
from dpiqa.jobs.cli import main

MODEL = "dpiqa-student-tiny"


def test_an_output_bucket_that_does_not_exist_is_refused_not_created(s3, s3_server, capsys):
    bucket, options = s3
    client = boto3.client(
        "s3", endpoint_url=s3_server, region_name="us-east-1", aws_access_key_id="t", aws_secret_access_key="t"
    )
    client.put_object(Bucket=bucket, Key="shards/00000.tar", Body=corpus.shard_bytes(corpus.good_samples("k", 2)))
    missing = f"{bucket}-typo"
    argv = ["score", "--input", f"s3://{bucket}/shards/", "--output", f"s3://{missing}/scores", "--model", MODEL]
    code = main([*argv, "--executor", "local", "--storage-options", json.dumps(options)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 4 and len(err) == 1, err
    assert f"the bucket '{missing}' does not exist; create it first" in err[0]
    assert missing not in [b["Name"] for b in client.list_buckets()["Buckets"]]


def test_a_key_with_version_id_in_its_name_is_read_by_its_name(s3, s3_server):
    bucket, options = s3
    client = boto3.client(
        "s3", endpoint_url=s3_server, region_name="us-east-1", aws_access_key_id="t", aws_secret_access_key="t"
    )
    odd = "shards/night?versionId=3.tar"
    client.put_object(Bucket=bucket, Key=odd, Body=corpus.shard_bytes(corpus.good_samples("v", 3)))
    client.put_object(Bucket=bucket, Key="shards/night.tar", Body=corpus.shard_bytes(corpus.good_samples("p", 2)))
    out = f"s3://{bucket}/scores"
    config = ScoreConfig(input=f"s3://{bucket}/shards/", output=out, model=MODEL, storage_options=options)
    manifest = run_score(config, LocalExecutor()).manifest
    assert manifest["shards"] == {"total": 2, "skipped_done": 0, "written": 2, "failed": 0}
    loc = OutputLocation(out, options)
    assert sorted(loc.done()) == ["night", "night_versionId=3"]
    table = pq.read_table(loc.child("scores", "night_versionId=3.parquet"), filesystem=loc.fs)
    assert table.column("key").to_pylist() == ["v0000", "v0001", "v0002"]
    assert set(table.column("shard").to_pylist()) == {f"s3://{bucket}/{odd}"}
    assert set(table.column("status").to_pylist()) == {"ok"}
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="scores/scores/")["Contents"])
    assert keys == ["scores/scores/night.parquet", "scores/scores/night_versionId=3.parquet"]


@pytest.fixture(autouse=True)
def _aws(monkeypatch):
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
