"""The filter: kept samples against an independent computation from the scores, byte-identical members,
top fraction with ties, keys only, refused member names, s3, Ray, resume."""

from __future__ import annotations

import math
import tarfile
import zlib
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from corpus import jpeg, shard_bytes, write_shard
from scored import score_shards

from dpiqa.engine.filter import FilterConfig, min_score_cutoff, run_filter, sortable, unsafe_name
from dpiqa.engine.output import ForeignOutputError

SHARDS, PER_SHARD = 3, 12


def samples(shard: int) -> list[tuple[str, dict[str, bytes]]]:
    """Samples with three members each (image, caption, metadata), as img2dataset writes them."""
    return [
        (
            f"s{shard}_{i:04d}",
            {
                "jpg": jpeg(shard * 100 + i, size=(30 + i, 24 + shard)),
                "txt": f"caption {shard} {i}".encode(),
                "json": f'{{"i": {i}}}'.encode(),
            },
        )
        for i in range(PER_SHARD)
    ]


def score_of(url: str, index: int, key: str) -> float | None:
    """Scores on a 0.5 grid (so ties are common); one sample per shard fails to score."""
    if index == 5:
        return None
    return float(np.random.default_rng(zlib.crc32(key.encode())).integers(0, 12)) / 2


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[str], str]:
    root = tmp_path_factory.mktemp("filter")
    (root / "shards").mkdir()
    urls = []
    for s in range(SHARDS):
        write_shard(root / "shards" / f"{s:05d}.tar", samples(s))
        urls.append(str(root / "shards" / f"{s:05d}.tar"))
    score_shards(urls, str(root / "scores"), score_of)
    return str(root / "shards"), urls, str(root / "scores")


def scores_frame(out: str) -> pd.DataFrame:
    df = pq.read_table(f"{out}/scores").to_pandas()
    df["name"] = [Path(u).stem for u in df.shard]
    return df


def read_tar(path: str | Path) -> list[tuple[str, bytes]]:
    """Every member of a tar, in order, with its bytes (read with tarfile, not with our reader)."""
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]


def members_by_key(members: list[tuple[str, bytes]]) -> dict[str, list[tuple[str, bytes]]]:
    out = defaultdict(list)
    for name, data in members:
        out[name.rsplit("/", 1)[-1].split(".", 1)[0]].append((name, data))
    return dict(out)


def check_output(out: Path, urls: list[str], expected: pd.DataFrame, originals: list[Path] | None = None) -> None:
    """NEW holds exactly the `expected` rows' samples, each member identical to the original's.

    Args:
        out: the filter's (local) output folder.
        urls: the input shard URLs.
        expected: the scores rows that should be kept (with a `name` column).
        originals: local copies of the input shards, if `urls` are not local.
    """
    for url, original_path in zip(urls, originals or urls, strict=True):
        name = Path(url).stem
        want = expected[expected.name == name].sort_values("index")
        written = read_tar(out / f"{name}.tar")
        original = members_by_key(read_tar(original_path))
        assert [n for n, _ in written] == [n for k in want.key for n, _ in original[k]]
        assert written == [m for k in want.key for m in original[k]]  # names and bytes
        keys = pq.read_table(out / "keys" / f"{name}.parquet").to_pandas()
        assert keys.key.tolist() == want.key.tolist()
        assert keys["index"].tolist() == want["index"].tolist()
        assert np.array_equal(keys.score.to_numpy(), want.score.to_numpy())
        assert (keys.shard == url).all()


def test_min_score_keeps_exactly_the_rows_above(scored: tuple[str, list[str], str], tmp_path: Path) -> None:
    folder, urls, out = scored
    result = run_filter(FilterConfig(scores=out, input=folder, output=str(tmp_path / "new"), min_score=3.0))
    df = scores_frame(out)
    expected = df[(df.status == "ok") & (df.score >= 3.0)]
    assert 0 < len(expected) < (df.status == "ok").sum()
    check_output(tmp_path / "new", urls, expected)
    assert result.manifest["kept"] == len(expected) and result.exit_code == 0
    assert sorted(p.name for p in (tmp_path / "new" / "_done").iterdir()) == [f"{s:05d}.json" for s in range(SHARDS)]


def test_top_fraction_breaks_ties_by_shard_and_index(scored: tuple[str, list[str], str], tmp_path: Path) -> None:
    folder, urls, out = scored
    fraction = 0.3
    result = run_filter(FilterConfig(scores=out, input=folder, output=str(tmp_path / "new"), top_fraction=fraction))
    df = scores_frame(out)
    ok = df[df.status == "ok"]
    want = math.ceil(fraction * len(ok))
    expected = ok.assign(neg=-ok.score).sort_values(["neg", "name", "index"]).head(want)
    cut = expected.score.min()
    assert (ok.score == cut).sum() > (expected.score == cut).sum()  # the cut falls inside a run of ties
    check_output(tmp_path / "new", urls, expected)
    assert result.manifest["kept"] == want
    assert result.manifest["cutoff"]["score"] == cut


def test_keys_only_writes_no_shards(scored: tuple[str, list[str], str], tmp_path: Path) -> None:
    folder, urls, out = scored
    run_filter(FilterConfig(scores=out, input=folder, output=str(tmp_path / "new"), min_score=2.5, keys_only=True))
    df = scores_frame(out)
    expected = df[(df.status == "ok") & (df.score >= 2.5)].sort_values(["name", "index"])
    assert not list((tmp_path / "new").glob("*.tar"))
    keys = pq.read_table(tmp_path / "new" / "keys").to_pandas().sort_values(["shard", "index"])
    assert keys.key.tolist() == expected.key.tolist()


def test_malicious_member_names_are_refused(tmp_path: Path) -> None:
    good = jpeg(7)
    shard = tmp_path / "in" / "00000.tar"
    shard.parent.mkdir()
    shard.write_bytes(
        shard_bytes(
            [
                ("a", {"jpg": good, "txt": b"fine"}),
                ("../../etc/evil", {"jpg": jpeg(1)}),
                ("/abs/evil2", {"jpg": jpeg(2)}),
                ("dir/../../evil3", {"jpg": jpeg(3)}),
                ("b", {"jpg": good}),
            ]
        )
    )
    scores = str(tmp_path / "scores")
    score_shards([str(shard)], scores, lambda u, i, k: 5.0)
    new = tmp_path / "work" / "new"
    result = run_filter(FilterConfig(scores=scores, input=str(shard), output=str(new), min_score=1.0))
    assert result.manifest["refused"] == 3 and result.manifest["kept"] == 2
    assert [n for n, _ in read_tar(new / "00000.tar")] == ["a.jpg", "a.txt", "b.jpg"]
    marker = (new / "_done" / "00000.json").read_text()
    assert "'..' component" in marker and "absolute member name" in marker
    # Nothing named evil anywhere but in the input shard; the output extracts under the strict filter.
    assert not [p for p in tmp_path.rglob("*evil*")]
    with tarfile.open(new / "00000.tar") as tar:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 (Debian 12's 3.11.2 has no extraction filters)
            tar.extractall(tmp_path / "work" / "x", filter="data")
        else:  # the checks of the "data" filter that concern names, by hand
            for m in tar.getmembers():
                assert m.isfile() and not Path(m.name).is_absolute() and ".." not in Path(m.name).parts, m.name
            tar.extractall(tmp_path / "work" / "x")
    assert sorted(p.name for p in (tmp_path / "work" / "x").iterdir()) == ["a.jpg", "a.txt", "b.jpg"]


@pytest.mark.parametrize(
    "name, bad",
    [
        ("a/b.jpg", False),
        ("x..y.jpg", False),
        ("./a.jpg", False),
        ("../a.jpg", True),
        ("/etc/a.jpg", True),
        ("a/../../b.jpg", True),
        ("C:x.jpg", True),
        ("\\\\server\\a.jpg", True),
        ("a\\..\\b.jpg", True),
        ("", True),
    ],
)
def test_unsafe_names(name: str, bad: bool) -> None:
    assert (unsafe_name(name) is not None) == bad


def test_sortable_keys_keep_float_order() -> None:
    values = np.array([-np.inf, -3.5, -1e-30, -0.0, 0.0, 1e-30, 2.0, 2.0000002, np.inf], dtype=np.float32)
    keys = sortable(values)
    assert (np.diff(keys.astype(np.int64)) >= 0).all()
    assert keys[3] == keys[4]  # -0.0 == 0.0
    cut = min_score_cutoff(2.0000001)  # between two float32s: the next float32 up is the cut
    assert cut.score == float(np.float32(2.0000002))


def test_rerun_skips_done_shards_and_redoes_the_rest(scored: tuple[str, list[str], str], tmp_path: Path) -> None:
    folder, urls, out = scored
    new = tmp_path / "new"
    config = FilterConfig(scores=out, input=folder, output=str(new), min_score=1.0)
    run_filter(config)
    done_before = (new / "00000.tar").stat().st_mtime_ns
    (new / "_done" / "00001.json").unlink()
    (new / "00001.tar").write_bytes(b"half a tar")  # what a killed run leaves
    result = run_filter(config)
    assert result.manifest["shards"] == {"total": 3, "skipped_done": 2, "written": 1, "failed": 0}
    assert (new / "00000.tar").stat().st_mtime_ns == done_before
    df = scores_frame(out)
    check_output(new, urls, df[(df.status == "ok") & (df.score >= 1.0)])


def test_another_threshold_into_the_same_output_is_refused(scored: tuple[str, list[str], str], tmp_path: Path) -> None:
    folder, _, out = scored
    run_filter(FilterConfig(scores=out, input=folder, output=str(tmp_path / "new"), min_score=1.0, keys_only=True))
    with pytest.raises(ForeignOutputError):
        run_filter(FilterConfig(scores=out, input=folder, output=str(tmp_path / "new"), min_score=2.0, keys_only=True))
    again = run_filter(
        FilterConfig(
            scores=out, input=folder, output=str(tmp_path / "new"), min_score=2.0, keys_only=True, overwrite=True
        )
    )
    assert again.manifest["shards"]["written"] == 3


def test_changed_or_unscored_shards_fail_alone(scored: tuple[str, list[str], str], tmp_path: Path) -> None:
    _, urls, out = scored
    folder = tmp_path / "in"
    folder.mkdir()
    for s in range(SHARDS):
        (folder / f"{s:05d}.tar").write_bytes(Path(urls[s]).read_bytes())
    write_shard(folder / "00001.tar", reversed(samples(1)))  # same name, other order: keys disagree
    write_shard(folder / "00009.tar", samples(9))  # never scored
    result = run_filter(FilterConfig(scores=out, input=str(folder), output=str(tmp_path / "new"), min_score=0.0))
    assert set(result.failed) == {str(folder / "00001.tar"), str(folder / "00009.tar")}
    assert "changed since it was scored" in result.failed[str(folder / "00001.tar")]
    assert "no completed scores" in result.failed[str(folder / "00009.tar")]
    assert result.exit_code == 1
    assert sorted(p.name for p in (tmp_path / "new" / "_done").iterdir()) == ["00000.json", "00002.json"]


def test_output_on_top_of_or_inside_the_input_is_refused(scored: tuple[str, list[str], str], tmp_path: Path) -> None:
    """A filter's new shards inside the input folder would be taken for input by the next run over it."""
    folder, urls, out = scored
    for output in (folder, f"{folder}/filtered"):
        with pytest.raises(ValueError, match="lies inside the input folder"):
            run_filter(FilterConfig(scores=out, input=folder, output=output, min_score=0.0))
        assert not Path(output, "_run.json").exists()
    with pytest.raises(ValueError, match="the input folder .* lies inside --output"):
        run_filter(FilterConfig(scores=out, input=folder, output=str(Path(folder).parent), min_score=0.0))
    # shards named one by one (no input folder): writing over one of them is still refused
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(urls))
    with pytest.raises(ValueError, match="would overwrite input shard"):
        run_filter(FilterConfig(scores=out, input=str(listing), output=folder, min_score=0.0))


def test_s3_in_and_out(s3: tuple[str, dict], tmp_path: Path) -> None:
    import s3fs

    bucket, options = s3
    fs = s3fs.S3FileSystem(**options)
    urls = []
    for s in range(2):
        path = tmp_path / f"{s:05d}.tar"
        write_shard(path, samples(s))
        fs.put(str(path), f"{bucket}/in/{s:05d}.tar")
        urls.append(f"s3://{bucket}/in/{s:05d}.tar")
    score_shards(urls, f"s3://{bucket}/scores", score_of, storage_options=options)
    result = run_filter(
        FilterConfig(
            scores=f"s3://{bucket}/scores",
            input=f"s3://{bucket}/in/",
            output=f"s3://{bucket}/new",
            top_fraction=0.5,
            storage_options=options,
        )
    )
    assert result.exit_code == 0
    local = tmp_path / "new"
    fs.get(f"{bucket}/new/", str(local), recursive=True)
    frames = [pq.read_table(fs.open(f"{bucket}/scores/scores/{s:05d}.parquet")).to_pandas() for s in range(2)]
    df = pd.concat(frames)
    df["name"] = [u.rsplit("/", 1)[1][:-4] for u in df.shard]
    ok = df[df.status == "ok"]
    expected = ok.assign(neg=-ok.score).sort_values(["neg", "name", "index"]).head(math.ceil(0.5 * len(ok)))
    check_output(local, urls, expected, originals=[tmp_path / f"{s:05d}.tar" for s in range(2)])


def test_ray_executor_writes_the_same_shards(scored: tuple[str, list[str], str], tmp_path: Path, ray_local) -> None:
    folder, urls, out = scored
    run_filter(FilterConfig(scores=out, input=folder, output=str(tmp_path / "local"), min_score=2.0))
    result = run_filter(
        FilterConfig(scores=out, input=folder, output=str(tmp_path / "ray"), min_score=2.0), executor="ray"
    )
    assert result.manifest["shards"]["written"] == SHARDS
    for s in range(SHARDS):
        assert (tmp_path / "ray" / f"{s:05d}.tar").read_bytes() == (tmp_path / "local" / f"{s:05d}.tar").read_bytes()


def test_top_fraction_without_ok_rows_keeps_nothing(tmp_path: Path) -> None:
    shard = tmp_path / "00000.tar"
    write_shard(shard, samples(0)[:3])
    scores = str(tmp_path / "scores")
    score_shards([str(shard)], scores, lambda u, i, k: None)  # every sample failed to score
    result = run_filter(FilterConfig(scores=scores, input=str(shard), output=str(tmp_path / "new"), top_fraction=0.5))
    assert result.manifest["kept"] == 0 and result.manifest["cutoff"]["score"] is None
    assert read_tar(tmp_path / "new" / "00000.tar") == []


def test_top_fraction_cuts_inside_one_high_bucket_by_the_low_16_bits(tmp_path: Path) -> None:
    """Scores that share their high 16 bits and differ in the low 16 (3.0 plus a few float32 steps of 2**-22,
    so the cut is found only by the second radix pass), with ties and rows in other buckets: the kept rows are
    exactly the first ceil(F x N) of a sort done here."""
    per_shard, step = 40, np.float32(2.0**-22)  # float32's spacing in [2, 4): 3.0 + i x step keeps 3.0's high bits
    rng = np.random.default_rng(11)
    levels = {}
    for s in range(2):
        for i in range(per_shard):
            key = f"s{s}_{i:04d}"
            if i % 10 == 9:  # a few rows in buckets above and below, with low bits of their own
                high = i % 20 == 9
                levels[key] = np.float32(5.0 if high else 1.0) + np.float32(rng.integers(0, 60000)) * step * (
                    np.float32(2) if high else np.float32(0.5)
                )
            else:
                levels[key] = np.float32(3.0) + np.float32(rng.integers(0, 300)) * step
    (tmp_path / "shards").mkdir()
    shards = []
    for s in range(2):
        shard = tmp_path / "shards" / f"{s:05d}.tar"
        write_shard(shard, [(k, {"jpg": b"x"}) for k in levels if k.startswith(f"s{s}_")])
        shards.append(str(shard))
    scores = str(tmp_path / "scores")
    score_shards(shards, scores, lambda url, index, key: float(levels[key]))
    bits = np.array(list(levels.values()), np.float32).view(np.uint32)
    in_bucket = bits[bits >> 16 == 0x4040]  # 3.0 is 0x40400000
    assert len(in_bucket) == 72 and len(np.unique(in_bucket & 0xFFFF)) > 50 and len(np.unique(in_bucket)) < 72
    for fraction in (0.3, 0.55):
        out = tmp_path / f"new-{fraction}"
        run_filter(
            FilterConfig(
                scores=scores, input=str(tmp_path / "shards"), output=str(out), top_fraction=fraction, keys_only=True
            )
        )
        table = [(float(levels[k]), f"{int(k[1]):05d}", int(k.split("_")[1]), k) for k in levels]
        want = math.ceil(fraction * len(table))
        expected = sorted(table, key=lambda t: (-t[0], t[1], t[2]))[:want]
        assert 3.0 < expected[-1][0] < 3.0 + 300 * 2.0**-22  # the cut lies inside the shared bucket
        kept = pq.read_table(out / "keys").to_pandas()
        assert sorted(kept.key) == sorted(t[3] for t in expected)
