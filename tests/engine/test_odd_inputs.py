"""`score`, `filter` and `audit` over what real corpora and real users bring: GNU tar's hard links,
non-UTF-8 names, `[` and `$` in paths, relative patterns, growing trees, img2dataset folders, compressed
and upper-case shards, comment lines in a list. One row per sample, no shard scored twice."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

import corpus
import pyarrow.parquet as pq
import pytest
import zstandard

from dpiqa.engine import schema
from dpiqa.engine.audit import AuditConfig, run_audit
from dpiqa.engine.executor.local import LocalExecutor
from dpiqa.engine.filter import FilterConfig, run_filter
from dpiqa.engine.output import OutputLocation
from dpiqa.engine.pipeline import ScoreConfig, run_score

MODEL = "dpiqa-student-tiny"


def score(input: str, output: str | Path, **kw) -> dict:  # the option's name
    return run_score(ScoreConfig(input=input, output=str(output), model=MODEL, **kw), LocalExecutor()).manifest


def rows(output: str | Path) -> list[dict]:
    loc = OutputLocation(str(output))
    out = []
    for name in sorted(loc.done()):
        out += pq.read_table(loc.child("scores", f"{name}.parquet")).to_pylist()
    return out


def test_gnu_tar_hard_links_and_latin1_names_score_and_filter_back_byte_for_byte(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    latin1 = os.fsdecode(b"caf\xe9")
    img = corpus.jpeg(1)
    (src / f"{latin1}.jpg").write_bytes(img)
    (src / f"{latin1}.txt").write_bytes(b"a caption")
    os.link(src / f"{latin1}.jpg", src / "copy.jpg")  # GNU tar: the second name becomes a hard link
    (src / "plain.jpg").write_bytes(corpus.jpeg(2))
    shards = tmp_path / "shards"
    shards.mkdir()
    subprocess.run(
        [
            "tar",
            "-cf",
            str(shards / "00000.tar"),
            "-C",
            str(src),
            f"{latin1}.jpg",
            f"{latin1}.txt",
            "copy.jpg",
            "plain.jpg",
        ],
        check=True,
    )
    manifest = score(str(shards), tmp_path / "scores")
    assert manifest["rows"] == 3 and manifest["statuses"] == {"ok": 3}
    got = rows(tmp_path / "scores")
    assert [r["key"] for r in got] == ["caf\\xe9", "copy", "plain"]  # the documented escape of a non-UTF-8 byte
    assert got[0]["score"] == pytest.approx(got[1]["score"])  # the link scored with its target's bytes
    result = run_filter(
        FilterConfig(scores=str(tmp_path / "scores"), input=str(shards), output=str(tmp_path / "f"), min_score=-1e9)
    )
    assert result.exit_code == 0 and result.manifest["kept"] == 3
    with tarfile.open(tmp_path / "f" / "00000.tar", encoding="utf-8", errors="surrogateescape") as t:
        names = {m.name.encode("utf-8", "surrogateescape"): t.extractfile(m).read() for m in t.getmembers()}
    assert names[b"caf\xe9.jpg"] == img and names[b"caf\xe9.txt"] == b"a caption" and names[b"copy.jpg"] == img


def test_paths_with_brackets_and_dollars(tmp_path):
    shards = tmp_path / "in[1]" / "run_$_1_$"
    shards.mkdir(parents=True)
    corpus.write_shard(shards / "shard[1].tar", corpus.good_samples("b", 3))
    corpus.write_shard(shards / "shard1.tar", corpus.good_samples("c", 2))  # what the glob `shard[1]` would match
    out = tmp_path / "out[2]"
    manifest = score(str(shards / "shard[1].tar"), out)  # an existing path is taken literally
    assert manifest["rows"] == 3 and [r["key"] for r in rows(out)] == ["b0000", "b0001", "b0002"]
    assert score(str(shards / "shard[1].tar"), out)["shards"]["skipped_done"] == 1  # markers found under out[2]
    report = tmp_path / "report.html"
    result = run_audit(AuditConfig(scores=str(out), report=str(report), thumbnails=2))
    assert result.exit_code == 0 and "run_$_1_$" in report.read_text()
    f = run_filter(
        FilterConfig(
            scores=str(out), input=str(shards / "shard[1].tar"), output=str(tmp_path / "f[3]"), top_fraction=1e-12
        )
    )
    assert f.manifest["kept"] == 1  # ceil(1e-12 x 3) = 1, as the help promises


def test_names_stay_stable_as_the_tree_grows_and_no_shard_is_scored_twice(tmp_path):
    root = tmp_path / "catalog"
    (root / "2026-11-26").mkdir(parents=True)
    corpus.write_shard(root / "2026-11-26" / "00000.tar", corpus.good_samples("a", 3))
    out = tmp_path / "scores"
    # an earlier run named only the night's folder: its shard is `00000` in the output
    assert score(str(root / "2026-11-26"), out)["shards"]["written"] == 1
    (root / "2026-11-27").mkdir()
    corpus.write_shard(root / "2026-11-27" / "00000.tar", corpus.good_samples("b", 2, seed=1))
    manifest = score(str(root), out)
    assert manifest["shards"] == {"total": 2, "skipped_done": 1, "written": 1, "failed": 0}
    assert sorted(OutputLocation(str(out)).done()) == ["00000", "2026-11-27__00000"]
    assert len(rows(out)) == 5  # 3 + 2: the first night's shard was not scored again under a new name
    (root / "2026-11-28").mkdir()
    corpus.write_shard(root / "2026-11-28" / "00000.tar", corpus.good_samples("c", 1, seed=2))
    manifest = score(str(root), out)
    assert manifest["shards"]["written"] == 1 and "2026-11-28__00000" in OutputLocation(str(out)).done()


def test_relative_patterns_store_one_canonical_url(tmp_path, monkeypatch):
    shards = tmp_path / "shards"
    shards.mkdir()
    corpus.write_corpus(shards, shards=2, per_shard=2)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    assert score("shards/{00000..00001}.tar", out)["shards"]["written"] == 2
    assert {r["shard"] for r in rows(out)} == {str(shards / "00000.tar"), str(shards / "00001.tar")}
    monkeypatch.chdir(shards)  # the same shards typed another way, from another folder
    assert score(f"{shards}/", out)["shards"]["skipped_done"] == 2
    assert score("../shards/*.tar", out)["shards"]["skipped_done"] == 2


def test_img2dataset_folder_glob_and_listing_take_only_tar_shards(tmp_path):
    d = tmp_path / "img2dataset"
    d.mkdir()
    corpus.write_shard(d / "00000.tar", corpus.good_samples("k", 2))
    corpus.write_shard(d / "00001.TAR", corpus.good_samples("u", 2, seed=1))  # upper case, from another tool
    packed = zstandard.ZstdCompressor().compress(corpus.shard_bytes(corpus.good_samples("z", 2, seed=2)))
    (d / "00002.tar.zst").write_bytes(packed)
    (d / "00000.parquet").write_bytes(b"PAR1")
    (d / "00000_stats.json").write_text("{}")
    (d / "README").write_text("img2dataset output")
    for spec in (f"{d}/*", str(d)):
        manifest = score(spec, tmp_path / ("o" + str(len(spec))))
        assert manifest["shards"]["total"] == 3 and manifest["statuses"] == {"ok": 6}, spec


def test_list_file_with_comments_and_relative_paths(tmp_path):
    d = tmp_path / "lists"
    (d / "shards").mkdir(parents=True)
    corpus.write_corpus(d / "shards", shards=2, per_shard=1)
    (d / "tonight.txt").write_text("# tonight's shards\n\nshards/00000.tar\n   shards/00001.tar   \n# end\n")
    manifest = score(str(d / "tonight.txt"), tmp_path / "o")  # relative to the list's own folder
    assert manifest["shards"]["written"] == 2


def test_several_images_in_one_sample_and_dotted_stems_get_explaining_rows(tmp_path):
    shards = tmp_path / "in"
    shards.mkdir()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        corpus.add(t, "two.jpg", corpus.jpeg(1))
        corpus.add(t, "two.png", corpus.png())
        corpus.add(t, "sd1.5_normal_000.jpg", corpus.jpeg(2))  # AGIQA-3K's own file names
        corpus.add(t, "sd1.5_normal_001.jpg", corpus.jpeg(3))
        corpus.add(t, "mask.jpg", corpus.jpeg(4))
        corpus.add(t, "mask.seg.png", corpus.png())  # an image beside its segmentation: the plain one is scored
    (shards / "00000.tar").write_bytes(buf.getvalue())
    score(str(shards), tmp_path / "o")
    got = {r["key"]: r for r in rows(tmp_path / "o")}
    assert got["two"]["status"] == schema.SEVERAL_IMAGES and "give each its own key" in got["two"]["error"]
    assert got["sd1"]["status"] == schema.SEVERAL_IMAGES and "first dot" in got["sd1"]["error"]
    assert got["mask"]["status"] == "ok"
