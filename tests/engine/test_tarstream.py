"""Tar streams made by the tools users have (GNU tar, zip, gzip, bzip2, xz, zstd) and damaged in the ways
files get damaged: every sample a row, every non-tar a failed shard, every damage reported."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import subprocess
import tarfile
import zipfile
from pathlib import Path

import corpus
import pytest
import zstandard

from dpiqa.engine import schema
from dpiqa.engine.shards.tarstream import NotATarError, iter_members
from dpiqa.engine.stages.source import iter_samples


def tool(name: str) -> str:
    """The path of a command-line tool these tests use (they come with the machine; CI must have them)."""
    import shutil

    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is missing on CI")
        pytest.skip(f"needs {name}")
    return path


def samples(data: bytes):
    return list(iter_samples(io.BytesIO(data), reopen=lambda: io.BytesIO(data)))


def rows(data: bytes) -> list[tuple]:
    return [(s.key, s.status) for s in samples(data)]


def gnu_tar(folder: Path, *names: str, args: tuple[str, ...] = ()) -> bytes:
    """A tar made by GNU tar of `names` inside `folder`, in that order."""
    out = folder.parent / f"{folder.name}.tar"
    subprocess.run([tool("tar"), *args, "-cf", str(out), "-C", str(folder), *names], check=True)
    return out.read_bytes()


def test_gnu_tar_hard_link_gets_its_targets_bytes(tmp_path):
    d = tmp_path / "src"
    d.mkdir()
    img = corpus.jpeg(1)
    (d / "a.jpg").write_bytes(img)
    (d / "a.txt").write_bytes(b"first")
    os.link(d / "a.jpg", d / "b.jpg")  # GNU tar stores the second name of one inode as a hard link
    (d / "b.txt").write_bytes(b"second")
    data = gnu_tar(d, "a.jpg", "a.txt", "b.jpg", "b.txt")
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        assert t.getmember("b.jpg").islnk()  # the tool really wrote a link
    got = samples(data)
    assert [(s.key, s.status) for s in got] == [("a", "ok"), ("b", "ok")]
    assert got[1].image_member() == ("jpg", img)


def test_hard_link_whose_target_scrolled_away_is_read_again(tmp_path):
    big = os.urandom(400_000)  # more than the reader keeps behind its position
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        corpus.add(t, "a.jpg", big)
        corpus.add(t, "pad.bin", os.urandom(300_000))
        link = tarfile.TarInfo("b.jpg")
        link.type, link.linkname = tarfile.LNKTYPE, "a.jpg"
        t.addfile(link)
    data = buf.getvalue()
    got = samples(data)
    assert got[2].key == "b" and got[2].members["jpg"] == big
    # compressed too: the stream is decompressed again up to the target
    gz = gzip.compress(data)
    assert list(iter_samples(io.BytesIO(gz), reopen=lambda: io.BytesIO(gz)))[2].members["jpg"] == big
    # without a way to reopen, the row says why instead of silently dropping the sample
    alone = list(iter_samples(io.BytesIO(data)))
    assert alone[2].status == schema.SPECIAL_MEMBER and "cannot be read again" in alone[2].error


def test_symlink_fifo_and_device_members_get_an_explaining_row(tmp_path):
    d = tmp_path / "src"
    d.mkdir()
    (d / "a.jpg").write_bytes(corpus.jpeg(2))
    (d / "b.jpg").symlink_to("a.jpg")
    os.mkfifo(d / "c.jpg")
    data = gnu_tar(d, "a.jpg", "b.jpg", "c.jpg")
    # add a character device by hand (making one needs root)
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        members = [(m, t.extractfile(m).read() if m.isreg() else None) for m in t.getmembers()]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        for m, payload in members:
            t.addfile(m, io.BytesIO(payload) if payload is not None else None)
        dev = tarfile.TarInfo("d.jpg")
        dev.type, dev.devmajor, dev.devminor = tarfile.CHRTYPE, 1, 3
        t.addfile(dev)
        corpus.add(t, "e.jpg", corpus.jpeg(3))
    got = samples(buf.getvalue())
    assert [(s.key, s.status) for s in got] == [
        ("a", "ok"),
        ("b", schema.SPECIAL_MEMBER),
        ("c", schema.SPECIAL_MEMBER),
        ("d", schema.SPECIAL_MEMBER),
        ("e", "ok"),
    ]
    assert "symbolic link to 'a.jpg'" in got[1].error
    assert "FIFO" in got[2].error and "character device" in got[3].error


def test_directories_are_not_samples(tmp_path):
    d = tmp_path / "src"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "x.jpg").write_bytes(corpus.jpeg(4))
    assert rows(gnu_tar(d, "sub")) == [("sub/x", "ok")]


def test_non_utf8_member_names_keep_their_bytes(tmp_path):
    d = tmp_path / "src"
    d.mkdir()
    latin1 = "café".encode("latin-1")  # b"caf\xe9", not UTF-8
    (d / os.fsdecode(latin1 + b".jpg")).write_bytes(corpus.jpeg(5))
    (d / "ok.jpg").write_bytes(corpus.jpeg(6))
    for fmt in ("--format=gnu", "--format=posix"):
        got = samples(gnu_tar(d, os.fsdecode(latin1 + b".jpg"), "ok.jpg", args=(fmt,)))
        assert [(s.key, s.status) for s in got] == [("caf\\xe9", "ok"), ("ok", "ok")], fmt
        # the stored name round-trips to the original bytes (filter writes members under it)
        assert got[0].names["jpg"].encode("utf-8", "surrogateescape") == latin1 + b".jpg"
        got[0].key.encode("utf-8")  # the key is valid text for Parquet


@pytest.mark.parametrize("what", ["zip", "random", "text", "png", "short"])
def test_bytes_that_are_no_tar_fail_the_shard(tmp_path, what):
    if what == "zip":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("a.jpg", corpus.jpeg(0))
        data, match = buf.getvalue(), "zip archive"
    elif what == "random":
        data, match = os.urandom(5000), "no tar header"
    elif what == "text":
        data, match = b"hello\n" * 200, "no tar header"
    elif what == "png":
        data, match = corpus.png(), "PNG image"
    else:
        data, match = b"abc", "too short"
    with pytest.raises(NotATarError, match=match):
        samples(data)


@pytest.mark.parametrize("codec", ["gzip", "bzip2", "xz", "zstd"])
def test_compressed_tars_are_read_whatever_their_name(tmp_path, codec):
    """`.tar.bz2`, `.tar.xz`, `.tar.zst` (and the same renamed `.tar`) are read: told by magic bytes."""
    d = tmp_path / "src"
    d.mkdir()
    names = []
    for i in range(12):  # ~1.3 MB: more than one compressed block of every codec
        (d / f"k{i:02d}.jpg").write_bytes(corpus.jpeg(i, size=(220, 200)))
        names.append(f"k{i:02d}.jpg")
    plain = gnu_tar(d, *names)
    level = ["-1"] if codec == "bzip2" else []  # 100 kB blocks: bzip2 decodes nothing of a block cut short
    packed = subprocess.run([tool(codec), "-c", *level], input=plain, capture_output=True, check=True).stdout
    assert rows(packed) == [(n[:-4], "ok") for n in names]
    # cut short: the rows that could be decompressed, then one truncated_tar row
    got = rows(packed[: len(packed) * 3 // 4])
    assert got[-1][1] == schema.TRUNCATED and "cut short" in samples(packed[: len(packed) * 3 // 4])[-1].error
    assert 1 <= len(got) - 1 < len(names) and all(status == "ok" for _, status in got[:-1])
    # cut so early that no member is whole: a failed shard where nothing decompresses, else one
    # truncated_tar row; never an ok row
    try:
        early = rows(packed[:200])
    except NotATarError as exc:
        assert "cut short" in str(exc)
    else:
        assert [status for _, status in early] == [schema.TRUNCATED]


def test_gzip_crc_error_and_cut_trailer_are_detected():
    tar = corpus.shard_bytes(corpus.good_samples("g", 3))
    gz = bytearray(gzip.compress(tar))
    gz[-8] ^= 0xFF  # the CRC32 in the trailer
    got = samples(bytes(gz))
    assert [s.status for s in got] == ["ok", "ok", "ok", schema.CORRUPT]
    assert "CRC" in got[-1].error
    cut = gzip.compress(tar)[:-8]  # trailer cut off: the tar itself is whole
    got = samples(cut)
    assert [s.status for s in got] == ["ok", "ok", "ok", schema.TRUNCATED]
    assert "end-of-stream marker" in got[-1].error


def test_corrupt_bytes_inside_a_compressed_stream():
    """Never every row `ok` over damaged bytes: rows up to the damage and a damage row, or (where nothing
    could be decompressed) a failed shard."""
    tar = corpus.shard_bytes(corpus.good_samples("x", 6))
    for packed in (
        gzip.compress(tar),
        bz2.compress(tar),
        lzma.compress(tar),
        zstandard.ZstdCompressor(write_checksum=True).compress(tar),
    ):
        bad = bytearray(packed)
        bad[len(bad) // 2] ^= 0x55
        try:
            got = samples(bytes(bad))
        except NotATarError as exc:
            assert "corrupt" in str(exc) or "cut short" in str(exc)
            continue
        assert got[-1].status in (schema.CORRUPT, schema.TRUNCATED) and len(got) <= 7


def test_concatenated_archives_are_read_on():
    a = corpus.shard_bytes(corpus.good_samples("a", 2))
    b = corpus.shard_bytes(corpus.good_samples("b", 2))
    assert rows(a + b) == [("a0000", "ok"), ("a0001", "ok"), ("b0000", "ok"), ("b0001", "ok")]
    # a key of the second archive that the first had is a duplicate, as within one archive
    assert rows(a + a)[2:] == [("a0000", schema.DUPLICATE_KEY), ("a0001", schema.DUPLICATE_KEY)]


def test_bytes_after_the_end_of_archive_are_reported():
    a = corpus.shard_bytes(corpus.good_samples("a", 2))
    got = rows(a + b"trailing junk" * 100)
    assert got[:2] == [("a0000", "ok"), ("a0001", "ok")] and got[2] == (None, schema.CORRUPT)


def test_members_of_a_gnu_tar_with_long_names_and_pax_headers(tmp_path):
    d = tmp_path / "src"
    deep = d / ("x" * 120) / ("y" * 90)
    deep.mkdir(parents=True)
    (deep / "k.jpg").write_bytes(corpus.jpeg(7))
    for fmt in ("--format=gnu", "--format=posix"):
        got = [m for m in iter_members(io.BytesIO(gnu_tar(d, ".", args=(fmt,))))]
        assert [m.name.rsplit("/", 1)[-1] for m in got] == ["k.jpg"], fmt
