"""Generated member names and shard paths (issue 39): for every name webdataset accepts, the shard reader
(`engine/stages/source.py`: `list_shards`, then `shard_samples`/`iter_samples`) gives one row per sample, with
the keys webdataset's own `tar_file_iterator` + `group_by_keys` give for the same file; every shard below a
folder is found once, whatever characters its path holds."""

from __future__ import annotations

import io
import os
import tarfile
import tempfile
from pathlib import Path

import corpus
import webdataset.tariterators as wds
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dpiqa.engine.shards.listing import list_shards
from dpiqa.engine.stages.source import iter_samples, shard_samples

SETTINGS = settings(
    max_examples=50,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
IMAGE = corpus.jpeg(0, size=(8, 8))

# what real names hold: underscores (leading `__` included), dots, dashes, spaces, characters fsspec or a shell
# reads as syntax, non-ASCII letters
_CHARS = "ab_Z09.- #?%:[]{}~$é"
stems = st.text(alphabet=_CHARS, min_size=1, max_size=10).filter(lambda s: "/" not in s)
folders = st.sampled_from(["", "x/", "./", "__meta__/", "a/__b__/", "n.1/", "é e/", "__/"])
extensions = st.sampled_from(["jpg", "png", "txt", "json", "seg.png", "JPG"])
members = st.lists(st.tuples(folders, stems, extensions), min_size=1, max_size=8)
# names webdataset gives a meaning to, mixed in: its metadata members
meta = st.lists(st.sampled_from(["__key__", "__url__", "__meta__/info.json", "__x__"]), max_size=2)


def build(names: list[str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name in names:
            corpus.add(tar, name, IMAGE if name.lower().endswith(("jpg", "png")) else b"{}")
    return buf.getvalue()


def webdataset_keys(data: bytes) -> list[str] | None:
    """The keys of the samples webdataset reads from the tar; None when it refuses the tar (a member name
    repeated within a sample)."""
    files = [{**m, "__url__": "shard"} for m in wds.tar_file_iterator(io.BytesIO(data))]
    try:
        return [s["__key__"] for s in wds.group_by_keys(files)]
    except ValueError:
        return None


def names_of(spec: list[tuple[str, str, str]], extra: list[str]) -> list[str]:
    names = list(dict.fromkeys([*extra, *(f"{folder}{stem}.{ext}" for folder, stem, ext in spec)]))
    return names


@SETTINGS
@given(members, meta)
def test_one_row_per_sample_with_webdataset_s_keys(spec, extra):
    data = build(names_of(spec, extra))
    expected = webdataset_keys(data)
    assume(expected is not None)  # names webdataset accepts
    samples = list(iter_samples(io.BytesIO(data), reopen=lambda: io.BytesIO(data)))
    assert [s.key for s in samples] == expected


# path parts from tokens, so that the multi-character ones (fsspec's `::` chain, a glob's `[1]` and `*`, a
# brace pattern's `{a,b}`) come up as often as single characters
_TOKENS = ["a", "Z9", "_", "__", ".", "-", " ", "#", "?", "%41", "::", "[1]", "*", "{a,b}", "~", "$", "é"]
path_parts = (
    st.lists(st.sampled_from(_TOKENS), min_size=1, max_size=4).map("".join).filter(lambda s: s not in (".", ".."))
)


@SETTINGS
@given(st.lists(st.tuples(st.lists(path_parts, max_size=2).map(tuple), path_parts), min_size=1, max_size=4), members)
def test_every_shard_below_a_folder_is_found_once_and_read_as_webdataset_reads_it(paths, spec):
    names = names_of(spec, [])
    data = build(names)
    expected = webdataset_keys(data)
    assume(expected is not None)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "in put"
        written = set()
        for folders_, stem in paths:
            shard = root.joinpath(*folders_, f"{stem}.tar")
            if shard.parent.exists() and not shard.parent.is_dir():
                continue
            blocked = any(root.joinpath(*folders_[: i + 1]).is_file() for i in range(len(folders_)))
            if blocked or shard.is_dir():
                continue
            shard.parent.mkdir(parents=True, exist_ok=True)
            shard.write_bytes(data)
            written.add(os.path.abspath(shard))
        assume(written)
        listed = list_shards(str(root))
        assert sorted(listed.urls) == sorted(written)
        assert len(set(listed.names.values())) == len(written)
        for url in listed.urls:
            with shard_samples(url) as samples:
                assert [s.key for s in samples] == expected, url
