"""Labelled WebDataset shards: scores from .json streamed with the shard reader, bad samples counted."""

from __future__ import annotations

import json
import math

import pytest
from corpus import jpeg, png, shard_bytes, write_shard

from dpiqa.engine.datasets import LabeledShards, load_dataset


def meta(**fields) -> bytes:
    return json.dumps(fields).encode()


def test_streams_keys_images_and_scores(tmp_path):
    image = jpeg(3)
    write_shard(
        tmp_path / "00000.tar",
        [
            ("a", {"jpg": image, "json": meta(mos=55.5, caption="x")}),
            ("b", {"png": png(), "json": meta(mos=12)}),
        ],
    )
    write_shard(tmp_path / "00001.tar", [("c", {"jpg": jpeg(4), "json": meta(mos=99.0)})])
    shards = load_dataset("webdataset", str(tmp_path))
    samples = list(shards)
    assert [(s.key, s.ext, s.mos) for s in samples] == [("a", "jpg", 55.5), ("b", "png", 12.0), ("c", "jpg", 99.0)]
    assert samples[0].image == image
    assert samples[2].shard == str(tmp_path / "00001.tar")
    assert shards.mos_scale == 100.0 and not shards.skipped


def test_bad_samples_are_skipped_and_counted(tmp_path):
    write_shard(
        tmp_path / "00000.tar",
        [
            ("ok1", {"jpg": jpeg(0), "json": meta(quality={"mos": 3.25})}),
            ("nojson", {"jpg": jpeg(1)}),
            ("badjson", {"jpg": jpeg(2), "json": b"{not json"}),
            ("noscore", {"jpg": jpeg(3), "json": meta(other=1)}),
            ("text", {"jpg": jpeg(4), "json": meta(quality={"mos": "high"})}),
            ("nan", {"jpg": jpeg(5), "json": b'{"quality": {"mos": NaN}}'}),
            ("noimage", {"json": meta(quality={"mos": 2.0})}),
            ("ok2", {"jpg": jpeg(6), "json": meta(quality={"mos": 4})}),
        ],
    )
    shards = LabeledShards(str(tmp_path / "00000.tar"), score_field="quality.mos", mos_scale=5)
    assert [(s.key, s.mos) for s in shards] == [("ok1", 3.25), ("ok2", 4.0)]
    assert shards.skipped == {"no_json": 1, "bad_json": 1, "no_score": 1, "bad_score": 2, "no_image": 1}


def test_unlabelled_samples_kept_when_scores_are_optional(tmp_path):
    write_shard(
        tmp_path / "00000.tar",
        [
            ("a", {"jpg": jpeg(0), "json": meta(mos=1.0)}),
            ("b", {"jpg": jpeg(1)}),
            ("c", {"jpg": jpeg(2), "json": meta(caption="no score")}),
        ],
    )
    samples = list(LabeledShards(str(tmp_path / "00000.tar"), require_score=False))
    assert [s.key for s in samples] == ["a", "b", "c"]
    assert samples[0].mos == 1.0 and math.isnan(samples[1].mos) and math.isnan(samples[2].mos)


def test_truncated_and_missing_shards_lose_nothing_else(tmp_path):
    data = shard_bytes(
        [
            ("a", {"jpg": jpeg(0), "json": meta(mos=1.0)}),
            ("b", {"jpg": jpeg(1, size=(200, 200)), "json": meta(mos=2.0)}),
        ]
    )
    (tmp_path / "00000.tar").write_bytes(data[: len(data) // 2 + 700])
    write_shard(tmp_path / "00001.tar", [("c", {"jpg": jpeg(2), "json": meta(mos=3.0)})])
    shards = LabeledShards([str(tmp_path / "00000.tar"), str(tmp_path / "missing.tar"), str(tmp_path / "00001.tar")])
    assert [s.key for s in shards] == ["a", "c"]
    assert shards.skipped == {"truncated_tar": 1, "shard_failed": 1}


def test_shards_for_partitions_deterministically(tmp_path):
    urls = [f"s3://b/{i:05d}.tar" for i in range(7)]
    shards = LabeledShards(list(reversed(urls)))
    parts = [shards.shards_for(rank, 3) for rank in range(3)]
    assert parts[0] == [urls[0], urls[3], urls[6]]
    assert sorted(sum(parts, [])) == urls
    with pytest.raises(ValueError, match=r"rank 3 is not in \[0, 3\)"):
        shards.shards_for(3, 3)


def test_streams_from_s3(s3):
    import s3fs

    bucket, options = s3
    fs = s3fs.S3FileSystem(**options)
    fs.pipe(f"{bucket}/train/00000.tar", shard_bytes([("k", {"jpg": jpeg(0), "json": meta(score=0.75)})]))
    shards = load_dataset(
        "webdataset", f"s3://{bucket}/train/", storage_options=options, score_field="score", mos_scale=1.0
    )
    assert [(s.shard, s.key, s.mos) for s in shards] == [(f"s3://{bucket}/train/00000.tar", "k", 0.75)]
