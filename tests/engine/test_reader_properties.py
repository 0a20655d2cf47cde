"""Properties of the shard reader and the decoder on generated shards and generated damage: random
names, truncations, byte flips and member-type changes. Samples are counted independently of our reader,
by webdataset's own `tar_file_iterator` + `group_by_keys` over the undamaged tar."""

from __future__ import annotations

import io
import tarfile

import corpus
import numpy as np
import webdataset.tariterators as wds
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dpiqa.engine import schema
from dpiqa.engine.shards.tarstream import NotATarError
from dpiqa.engine.stages.decode import DecodeError, decode_image
from dpiqa.engine.stages.source import iter_samples
from dpiqa.models.preprocessing import Preprocessing

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
ROW_STATUSES = set(schema.STATUSES) - {schema.SCORE_ERROR}  # the reader's and decoder's share
IMAGE = corpus.jpeg(0, size=(8, 8))
PNG = corpus.png(size=(6, 5))

stems = st.text(alphabet="abcXYZ019_-.é", min_size=1, max_size=8).filter(lambda s: not s.startswith(("__", ".")))
folders = st.sampled_from(["", "a/", "a/b/", "dir.v2/"])
extensions = st.lists(
    st.sampled_from(["jpg", "png", "txt", "json", "seg.png", "JPG", "webp.txt"]),
    min_size=1,
    max_size=3,
    unique_by=str.lower,
)
shard_specs = st.lists(st.tuples(folders, stems, extensions), min_size=1, max_size=6)


def build(spec: list[tuple[str, str, list[str]]]) -> tuple[bytes, list[str]]:
    """A tar of the generated samples (members in order) and its member names; names are unique."""
    buf = io.BytesIO()
    names: list[str] = []
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for folder, stem, exts in spec:
            for ext in exts:
                name = f"{folder}{stem}.{ext}"
                if name in names:
                    continue
                data = PNG if ext.lower().endswith("png") else IMAGE if ext.lower() in ("jpg", "webp") else b"{}"
                corpus.add(tar, name, data)
                names.append(name)
    return buf.getvalue(), names


def reference_keys(data: bytes) -> list[str]:
    """Sample keys as webdataset groups the members (consecutive, by key; a repeated extension within a
    key starts a new sample, as in our reader, where webdataset would raise)."""
    members = wds.tar_file_iterator(io.BytesIO(data), skip_meta=None)
    keys: list[str] = []
    seen: set[str] = set()
    for m in members:
        key, ext = wds.base_plus_ext(m["fname"])
        if key is None:
            continue
        if not keys or key != keys[-1] or ext.lower() in seen:
            keys.append(key)
            seen = set()
        seen.add(ext.lower())
    return keys


def read(data: bytes) -> list:
    return list(iter_samples(io.BytesIO(data), reopen=lambda: io.BytesIO(data)))


def general(samples: list) -> None:
    for s in samples:
        assert s.status in ROW_STATUSES, s
        assert (s.error is None) == (s.status == schema.OK), s
        if s.status == schema.OK:
            assert s.image_member() is not None and s.image_member()[1]
        if s.key is not None:
            s.key.encode("utf-8")  # always valid text for Parquet
    damaged = [i for i, s in enumerate(samples) if s.status in (schema.TRUNCATED, schema.CORRUPT)]
    assert damaged in ([], [len(samples) - 1])  # a damage row is the last row, and only one


@SETTINGS
@given(shard_specs)
def test_one_row_per_sample_as_webdataset_groups_them(spec):
    data, _ = build(spec)
    samples = read(data)
    general(samples)
    assert [s.key for s in samples] == reference_keys(data)


@SETTINGS
@given(shard_specs, st.data())
def test_truncation_keeps_every_whole_sample_and_ends_with_one_truncated_row(spec, draw):
    data, _ = build(spec)
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        ends = {m.name: m.offset_data + m.size for m in t.getmembers()}
        archive_end = t.offset  # where the end-of-archive block starts
    cut = draw.draw(st.integers(0, archive_end - 1))
    try:
        samples = read(data[:cut])
    except NotATarError:
        assert cut < 512  # only a stream too short for its first header is no tar
        return
    general(samples)
    assert samples[-1].status == schema.TRUNCATED
    keys = reference_keys(data)
    rows = [s.key for s in samples[:-1]]  # every row before the damage row
    assert rows == keys[: len(rows)]  # samples in order, nothing invented
    # independent count of samples whose every member lies before the cut
    whole = 0
    members = [m for m in wds.tar_file_iterator(io.BytesIO(data), skip_meta=None)]
    by_sample: list[list[str]] = []
    for m in members:
        key, ext = wds.base_plus_ext(m["fname"])
        if (
            not by_sample
            or key != wds.base_plus_ext(by_sample[-1][0])[0]
            or ext.lower() in {wds.base_plus_ext(n)[1].lower() for n in by_sample[-1]}
        ):
            by_sample.append([])
        by_sample[-1].append(m["fname"])
    for names in by_sample:
        if all(ends[n] <= cut for n in names):
            whole += 1
        else:
            break
    assert whole <= len(rows) <= whole + 1


@SETTINGS
@given(shard_specs, st.data())
def test_special_members_keep_their_row(spec, draw):
    data, names = build(spec)
    victim = draw.draw(st.sampled_from(names))
    kind = draw.draw(st.sampled_from([tarfile.SYMTYPE, tarfile.FIFOTYPE, tarfile.CHRTYPE, tarfile.LNKTYPE]))
    buf = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(data)) as src,
        tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as out,
    ):
        for m in src.getmembers():
            payload = src.extractfile(m).read()
            if m.name == victim:
                m.type, m.size = kind, 0
                m.linkname = names[0] if kind == tarfile.LNKTYPE else "elsewhere.jpg"
                out.addfile(m)
            else:
                out.addfile(m, io.BytesIO(payload))
    samples = read(buf.getvalue())
    general(samples)
    assert [s.key for s in samples] == reference_keys(data)  # the same samples as before the change


@SETTINGS
@given(shard_specs, st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), min_size=1, max_size=8))
def test_byte_flips_never_escape_as_exceptions(spec, flips):
    data = bytearray(build(spec)[0])
    for where, xor in flips:
        data[where % len(data)] ^= xor
    try:
        samples = read(bytes(data))
    except NotATarError:
        return
    general(samples)


@SETTINGS
@given(st.binary(min_size=0, max_size=3000))
def test_bytes_that_are_no_tar_fail(data):
    assume(not data.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"\x28\xb5\x2f\xfd")))
    assume(not (len(data) >= 512 and data[:512] == bytes(512)))
    try:
        samples = read(data)
    except NotATarError:
        return
    # A random first block that passes the header checksum is astronomically rare; then it is a tar.
    general(samples)


@SETTINGS
@given(st.sampled_from([IMAGE, PNG, corpus.png("RGBA"), corpus.cmyk_jpeg()]), st.data())
def test_decoder_gives_pixels_or_a_documented_status(image, draw):
    data = bytearray(image)
    if draw.draw(st.booleans()):
        data = data[: draw.draw(st.integers(0, len(data)))]
    for _ in range(draw.draw(st.integers(0, 6))):
        if data:
            data[draw.draw(st.integers(0, len(data) - 1))] ^= draw.draw(st.integers(1, 255))
    pre = Preprocessing(size=(16, 12))
    try:
        pixels, width, height, _ = decode_image(bytes(data), pre, max_pixels=10_000)
    except DecodeError as exc:
        assert exc.status in (schema.EMPTY, schema.NOT_AN_IMAGE, schema.DECODE_ERROR, schema.TOO_LARGE)
        return
    assert pixels.shape == (16, 12, 3) and pixels.dtype == np.uint8 and width > 0 and height > 0
