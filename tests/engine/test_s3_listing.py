"""`list_s3_keys` on the loopback S3 server: its key ranges, split page by page, list every key once, checked
against boto3's own paginator (one prefix, page after page) as the reference. Pages of 7 keys make the
splits happen at a few hundred keys: digits-only names that share their first characters (the common case at
scale), every kind of next character (control, ASCII, DEL, non-ASCII), a key equal to a split prefix, keys
outside the folder, and a folder marker."""

from __future__ import annotations

import boto3
import fsspec
import pytest

from dpiqa import storage


def reference(endpoint: str, bucket: str, prefix: str) -> list[str]:
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return [f"{bucket}/{k}" for k in keys if not k.endswith("/")]


@pytest.mark.parametrize("threads", [1, 16])  # 1: page after page, never split
def test_split_ranges_list_every_key_once(s3, s3_server, threads):
    bucket, options = s3
    fs, _ = storage.get_fs(f"s3://{bucket}/", options)
    names = [f"{i:04d}.tar" for i in range(230)]  # 0000.tar ... 0229.tar: one leading character, then three
    names += ["0", "00", "000", "0001", "01"]  # keys equal to the prefixes a split makes
    names += ["\x01ctrl", "\x1fctrl", " space", "~tilde", "\x7fdel", "\x7f\x7f", "é-accent", "日本", "\U0001f600"]
    names += [f"z{i:03d}" for i in range(40)] + ["zz", "z~", "zé"]
    names += ["sub/", "sub/a.tar", "sub/deeper/b.tar"]  # a folder marker and keys below it
    fs.pipe({f"{bucket}/in/{n}": b"" for n in names})
    fs.pipe({f"{bucket}/in-other/x.tar": b"", f"{bucket}/im.tar": b""})  # beside the folder: not listed

    got = storage.list_s3_keys(fs, f"{bucket}/in", threads=threads, page_size=7)

    want = reference(s3_server, bucket, "in/")
    assert len(want) == len(names) - 1  # the folder marker is left out
    assert len(got) == len(set(got))  # no key twice
    assert sorted(got) == sorted(want)


def test_one_page_folder_is_one_request(s3):
    """A folder that fits in one page costs one request (no split, no second session's requests)."""
    bucket, options = s3
    fs = fsspec.filesystem("s3", **options)
    fs.pipe({f"{bucket}/small/{i:03d}.tar": b"" for i in range(12)})
    fs, _ = storage.get_fs(f"s3://{bucket}/", options)
    calls = []
    real = fs.call_s3

    def counting(method, *args, **kwargs):
        calls.append(kwargs.get("Prefix"))
        return real(method, *args, **kwargs)

    fs.call_s3 = counting
    try:
        keys = storage.list_s3_keys(fs, f"{bucket}/small", page_size=20)
    finally:
        del fs.call_s3
    assert sorted(keys) == [f"{bucket}/small/{i:03d}.tar" for i in range(12)]
    assert calls == ["small/"]


LAYOUT = ["a/00000.tar", "a/00001.tar", "a/00002.tar.gz", "a/x-1.tar", "a/notes.txt", "a/deep/00003.tar", "b/00000.tar"]


@pytest.mark.parametrize(
    "pattern",
    [
        "a",
        "a/*.tar",
        "a/0000?.tar",
        "a/0000[02].tar*",
        "**/0000*.tar",
        "a/**",
        "{a,b}/00000.tar",
        "a/{00000..00002}.tar*",
    ],
)
def test_s3_patterns_name_the_shards_a_local_folder_gives(s3, tmp_path, pattern):
    """Globs (through one ranged listing and fsspec's glob rules) and brace patterns (existence from one listing
    with sizes) on S3 name the same shards, under the same output names, as the same layout on a local disk
    (fsspec's local glob); and planning leaves nothing in s3fs's listing cache (`fs.isdir`/`fs.glob`/`fs.ls` kept
    every listed key there, ~1.5 KiB each)."""
    from dpiqa.engine.shards.listing import list_shards

    bucket, options = s3
    fs, _ = storage.get_fs(f"s3://{bucket}/", options)
    fs.pipe({f"{bucket}/in/{p}": b"" for p in LAYOUT})
    for p in LAYOUT:
        (tmp_path / p).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / p).write_bytes(b"")

    local = list_shards(f"{tmp_path}/{pattern}", skip_missing=True)
    remote = list_shards(f"s3://{bucket}/in/{pattern}", options, skip_missing=True)

    assert local.urls  # every pattern names some shard
    assert [u.split("/in/", 1)[1] for u in remote.urls] == [u[len(str(tmp_path)) + 1 :] for u in local.urls]
    assert sorted(remote.names.values()) == sorted(local.names.values())
    assert [m.split("/in/", 1)[1] for m in remote.missing] == [m[len(str(tmp_path)) + 1 :] for m in local.missing]
    cached = [k for k in fs.dircache if k.split("/", 1)[0] == bucket]  # (the filesystem is shared by other tests)
    assert not cached, cached[:3]
