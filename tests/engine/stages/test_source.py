"""The shard reader: samples grouped by key, one row each, every malformed tar explained."""

from __future__ import annotations

import gzip
import io
import json
import tarfile

import corpus
import numpy as np
import pytest

from dpiqa.engine import schema
from dpiqa.engine.shards.tarstream import NotATarError
from dpiqa.engine.stages.source import SourceStage, iter_samples


def samples_of(data: bytes):
    return list(iter_samples(io.BytesIO(data)))


def test_groups_members_by_key_in_order():
    tar = corpus.shard_bytes([("a/x", {"jpg": b"1", "txt": b"t"}), ("a/y", {"png": b"2", "json": b"{}"})])
    got = samples_of(tar)
    assert [s.key for s in got] == ["a/x", "a/y"]
    assert got[0].members == {"jpg": b"1", "txt": b"t"}
    assert got[1].image_member() == ("png", b"2")
    assert all(s.status == schema.OK for s in got)


def test_key_is_up_to_first_dot_and_extension_is_lowercased():
    got = samples_of(corpus.shard_bytes([("k", {"seg.JPG": b"x"})]))
    assert got[0].key == "k" and got[0].members == {"seg.jpg": b"x"}
    # an image by its last extension, as webdataset's decoders see it
    assert got[0].status == schema.OK and got[0].image_member() == ("seg.jpg", b"x")


def test_sample_without_image_member():
    got = samples_of(corpus.shard_bytes([("a", {"txt": b"t", "json": b"{}"}), ("b", {"jpg": b"x"})]))
    assert [(s.key, s.status) for s in got] == [("a", schema.NO_IMAGE), ("b", schema.OK)]
    assert "json, txt" in got[0].error


def test_duplicate_keys_later_and_adjacent():
    tar = corpus.shard_bytes([("a", {"jpg": b"1"}), ("b", {"jpg": b"2"}), ("a", {"jpg": b"3"})])
    got = samples_of(tar)
    assert [(s.key, s.status) for s in got] == [("a", "ok"), ("b", "ok"), ("a", schema.DUPLICATE_KEY)]
    # the same member name twice in a row is a second sample with the same key
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        corpus.add(t, "c.jpg", b"1")
        corpus.add(t, "c.jpg", b"2")
    got = samples_of(buf.getvalue())
    assert [(s.key, s.status) for s in got] == [("c", "ok"), ("c", schema.DUPLICATE_KEY)]
    assert got[0].members["jpg"] == b"1"


def test_truncated_inside_a_member_keeps_earlier_samples():
    good = corpus.good_samples("k", 3)
    tar = corpus.shard_bytes(good)
    # cut inside the data of the 3rd sample's jpg (after its 512-byte header)
    offsets = _member_offsets(tar)
    cut = offsets["k0002.jpg"] + 600
    got = samples_of(tar[:cut])
    assert [(s.key, s.status) for s in got] == [("k0000", "ok"), ("k0001", "ok"), ("k0002", schema.TRUNCATED)]
    assert "k0002.jpg" in got[-1].error


def test_truncated_at_a_header_boundary_is_detected():
    tar = corpus.shard_bytes(corpus.good_samples("k", 3))
    offsets = _member_offsets(tar)
    cut = offsets["k0002.jpg"]  # just before the header of k0002.jpg
    got = samples_of(tar[:cut])
    assert [s.status for s in got] == ["ok", "ok", schema.TRUNCATED]
    assert got[-1].key is None and "no end-of-archive block" in got[-1].error
    got = samples_of(tar[: cut + 100])  # inside that header
    assert [s.status for s in got][-1] == schema.TRUNCATED


def test_garbage_after_members_is_reported():
    tar = corpus.shard_bytes(corpus.good_samples("k", 2))
    offsets = _member_offsets(tar)
    end = offsets["k0001.txt"] + 512  # the txt member is 9 bytes -> one data block
    got = samples_of(tar[:end] + b"\x07" * 1024)
    assert [s.status for s in got] == ["ok", "ok", schema.TRUNCATED]
    assert "corrupt header" in got[-1].error


def test_empty_tar_has_no_samples_and_zero_bytes_is_no_tar():
    assert samples_of(corpus.shard_bytes([])) == []
    with pytest.raises(NotATarError, match="empty file"):
        samples_of(b"")


def test_gzipped_shard_is_read_transparently():
    tar = corpus.shard_bytes(corpus.good_samples("g", 4))
    got = samples_of(gzip.compress(tar))
    assert [s.key for s in got] == [f"g{i:04d}" for i in range(4)]
    got = samples_of(gzip.compress(tar)[:-200])
    assert got[-1].status == schema.TRUNCATED


def test_source_stage_rows_chunks_and_end_of_shard(tmp_path):
    path = tmp_path / "00000.tar"
    corpus.write_shard(path, corpus.good_samples("k", 5) + [("n", {"txt": b"x"})])
    stage = SourceStage(chunk_size=4)
    batches = list(stage({"shard": np.array([str(path)], dtype=object)}))
    assert [len(b["index"]) for b in batches] == [4, 3]  # 6 samples + 1 end-of-shard row, in chunks of 4
    rows = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    assert list(rows["index"]) == [0, 1, 2, 3, 4, 5, 6]
    assert list(rows["status"]) == ["ok"] * 5 + [schema.NO_IMAGE, schema.END_OF_SHARD]
    assert rows["ext"][0] == "jpg" and rows["data"][0][:2] == b"\xff\xd8"
    assert rows["data"][5] is None
    assert json.loads(rows["error"][6]) == {"samples": 6, "retries": 0}


def test_unreadable_shard_gives_a_failed_control_row(tmp_path):
    stage = SourceStage()
    batches = list(stage({"shard": np.array([str(tmp_path / "missing.tar")], dtype=object)}))
    assert len(batches) == 1 and list(batches[0]["status"]) == [schema.SHARD_FAILED]
    info = json.loads(batches[0]["error"][0])
    assert "FileNotFoundError" in info["error"] and "missing.tar" in info["error"]


def _member_offsets(tar: bytes) -> dict[str, int]:
    """Offset of each member's header in an uncompressed tar."""
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        return {m.name: m.offset for m in t.getmembers()}
