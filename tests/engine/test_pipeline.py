"""`run_score` end to end on real parts: local and Ray executors, resume, refusal, bad input, S3."""

from __future__ import annotations

import io
import json
import tarfile

import corpus
import pyarrow.parquet as pq
import pytest
from expected import SCORES_FIELDS, SCORES_METADATA_KEYS, fields

from dpiqa import models
from dpiqa.engine import schema
from dpiqa.engine.executor.local import LocalExecutor
from dpiqa.engine.output import ForeignOutputError, OutputLocation
from dpiqa.engine.pipeline import ScoreConfig, run_score
from dpiqa.engine.stages.decode import decode_image
from dpiqa.models.run_options import RunOptions

MODEL = "dpiqa-student-tiny"


def read_rows(out: str, storage_options: dict | None = None) -> list[dict]:
    loc = OutputLocation(out, storage_options)
    rows = []
    for name in sorted(loc.done()):
        with loc.fs.open(f"{loc.path}/scores/{name}.parquet", "rb") as f:
            rows += pq.read_table(f).to_pylist()
    return sorted(rows, key=lambda r: (r["shard"], r["index"]))


def reference_scores(shard_paths: list[str]) -> dict[str, float]:
    """Scores computed directly: decode each image and score it alone with the same model."""
    scorer = models.load_scorer(MODEL, RunOptions(device="cpu"))
    out = {}
    for path in shard_paths:
        with tarfile.open(path) as t:
            for m in t.getmembers():
                if m.name.endswith(".jpg"):
                    pixels, _, _, _ = decode_image(t.extractfile(m).read(), scorer.preprocessing)
                    out[m.name[: -len(".jpg")]] = float(scorer(pixels[None]).scores[0])
    return out


@pytest.fixture(scope="module")
def good_corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    paths = corpus.write_corpus(d, shards=3, per_shard=7)
    return d, paths


def test_local_run_writes_one_explained_row_per_sample(good_corpus, tmp_path):
    d, paths = good_corpus
    out = str(tmp_path / "out")
    result = run_score(ScoreConfig(input=str(d), output=out, model=MODEL, batch_size=4), LocalExecutor())
    assert result.exit_code == 0
    rows = read_rows(out)
    assert len(rows) == 21 and len({(r["shard"], r["key"]) for r in rows}) == 21
    assert {r["status"] for r in rows} == {"ok"} and all(r["error"] is None for r in rows)
    assert [r["index"] for r in rows if r["shard"] == paths[0]] == list(range(7))
    ref = reference_scores(paths)
    for r in rows:
        assert r["score"] == pytest.approx(ref[r["key"]], rel=1e-5)
        assert r["model"] == MODEL and r["width"] >= 40 and r["height"] >= 36
    # schema and key-value metadata
    table = pq.read_table(f"{out}/scores/00000.parquet")
    assert fields(table.schema) == SCORES_FIELDS
    meta = json.loads(table.schema.metadata[b"dpiqa"])
    assert set(meta) == SCORES_METADATA_KEYS
    info = models.describe(MODEL)
    assert meta["checkpoint_hash"] == info.checkpoint_hash and meta["preprocessing"]["size"] == [64, 64]
    assert meta["config_hash"] == json.load(open(f"{out}/_run.json"))["config_hash"]
    marker = json.load(open(f"{out}/_done/00000.json"))
    assert marker["shard"] == paths[0] and marker["rows"] == 7 and marker["statuses"] == {"ok": 7}
    manifest = json.load(open(f"{out}/manifest.json"))
    assert manifest["rows"] == 21 and manifest["shards"] == {"total": 3, "skipped_done": 0, "written": 3, "failed": 0}
    assert manifest["model"]["checkpoint_hash"] == info.checkpoint_hash and manifest["code_version"]


def test_rerun_skips_done_shards_and_redoes_the_rest(good_corpus, tmp_path):
    d, paths = good_corpus
    out = tmp_path / "out"
    config = ScoreConfig(input=str(d), output=str(out), model=MODEL)
    run_score(config, LocalExecutor())
    before = read_rows(str(out))
    (out / "_done" / "00001.json").unlink()  # as if the run died before finishing this shard
    (out / "scores" / "00002.parquet").write_bytes(b"garbage")  # a half-written file without a marker is redone
    (out / "_done" / "00002.json").unlink()
    result = run_score(config, LocalExecutor())
    assert result.manifest["shards"] == {"total": 3, "skipped_done": 1, "written": 2, "failed": 0}
    assert read_rows(str(out)) == before
    again = run_score(config, LocalExecutor())
    assert again.manifest["shards"]["written"] == 0 and again.manifest["shards"]["skipped_done"] == 3


def test_foreign_output_is_refused_unless_overwrite(good_corpus, tmp_path):
    d, _ = good_corpus
    out = str(tmp_path / "out")
    run_score(ScoreConfig(input=str(d), output=out, model=MODEL), LocalExecutor())
    other = ScoreConfig(input=str(d), output=out, model=MODEL, run=RunOptions(precision="bf16"))
    with pytest.raises(ForeignOutputError, match="--overwrite"):
        run_score(other, LocalExecutor())
    other.overwrite = True
    result = run_score(other, LocalExecutor())
    assert result.manifest["shards"]["written"] == 3
    assert json.load(open(f"{out}/_run.json"))["identity"]["precision"] == "bf16"
    # a folder holding our kind of files but no identity is refused too
    stray = tmp_path / "stray"
    (stray / "scores").mkdir(parents=True)
    with pytest.raises(ForeignOutputError, match="no _run.json"):
        run_score(ScoreConfig(input=str(d), output=str(stray), model=MODEL), LocalExecutor())


def bad_corpus(d) -> tuple[list[str], dict[str, str]]:
    """One shard with every bad sample a corpus has, one truncated shard, one file that is no tar."""
    samples = [
        ("ok0", {"jpg": corpus.jpeg(1)}),
        ("corrupt", {"jpg": corpus.corrupt_jpeg()}),
        ("zero", {"jpg": b""}),
        ("text", {"jpg": b"hello, I am not a jpeg"}),
        ("noimg", {"txt": b"caption only", "json": b"{}"}),
        ("alpha", {"png": corpus.png("RGBA")}),
        ("gray16", {"png": corpus.png("I;16")}),
        ("palette", {"png": corpus.png("P")}),
        ("gray", {"png": corpus.png("L")}),
        ("cmyk", {"jpg": corpus.cmyk_jpeg()}),
        ("bomb", {"png": corpus.bomb_png(20000)}),
        ("ok0", {"jpg": corpus.jpeg(2)}),  # duplicate key
    ]
    corpus.write_shard(d / "00000.tar", samples)
    full = corpus.shard_bytes(corpus.good_samples("t", 4))
    with tarfile.open(fileobj=io.BytesIO(full)) as t:
        last = t.getmember("t0003.txt").offset
    (d / "00001.tar").write_bytes(full[: last + 512 + 5])  # cut inside the data of the last member
    expected = {
        "ok0": "ok",
        "corrupt": schema.DECODE_ERROR,
        "zero": schema.EMPTY,
        "text": schema.NOT_AN_IMAGE,
        "noimg": schema.NO_IMAGE,
        "alpha": "ok",
        "gray16": "ok",
        "palette": "ok",
        "gray": "ok",
        "cmyk": "ok",
        "bomb": schema.TOO_LARGE,
    }
    (d / "00002.tar").write_bytes(b"PK\x03\x04" + bytes(range(256)) * 8)  # a zip named .tar
    urls = [str(d / "00000.tar"), str(d / "00001.tar"), str(d / "00002.tar")]
    (d / "list.txt").write_text("\n".join(urls) + "\n")
    return urls, expected


def test_bad_input_gives_rows_and_a_failed_shard_gives_exit_1(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    urls, expected = bad_corpus(d)
    out = str(tmp_path / "out")
    result = run_score(ScoreConfig(input=str(d / "list.txt"), output=out, model=MODEL), LocalExecutor())
    assert result.exit_code == 1 and list(result.failed) == [urls[2]]
    rows = read_rows(out)
    first = [r for r in rows if r["shard"] == urls[0]]
    assert [r["key"] for r in first] == list(expected) + ["ok0"]
    for r in first[:-1]:
        assert r["status"] == expected[r["key"]], r
        assert (r["score"] is not None) == (r["status"] == "ok")
        assert (r["error"] is None) == (r["status"] == "ok")
    assert first[-1]["status"] == schema.DUPLICATE_KEY and first[-1]["index"] == 11
    assert first[10]["width"] == 20000  # the bomb's claimed size is not recorded as decoded
    truncated = [r for r in rows if r["shard"] == urls[1]]
    assert [r["status"] for r in truncated] == ["ok", "ok", "ok", schema.TRUNCATED]
    assert truncated[-1]["key"] == "t0003" and "t0003.txt" in truncated[-1]["error"]
    manifest = json.load(open(f"{out}/manifest.json"))
    assert manifest["failed_shards"] == {urls[2]: result.failed[urls[2]]}
    assert "not a tar archive: it is a zip archive" in result.failed[urls[2]]
    assert manifest["statuses"][schema.TRUNCATED] == 1
    assert not (tmp_path / "out" / "_done" / "00002.json").exists()  # no marker: the next run tries it again


def test_a_list_naming_missing_shards_is_refused_unless_asked(good_corpus, tmp_path):
    d, paths = good_corpus
    listing = tmp_path / "list.txt"
    listing.write_text("# shards of tonight\n" + "\n".join([*paths, str(d / "09999.tar")]) + "\n\n")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"1 of 4 shards do not exist \(first: .*09999.tar\); pass --skip-missing"):
        run_score(ScoreConfig(input=str(listing), output=str(out), model=MODEL), LocalExecutor())
    assert not out.exists()  # refused before anything was written
    result = run_score(
        ScoreConfig(input=str(listing), output=str(out), model=MODEL, skip_missing=True), LocalExecutor()
    )
    assert result.exit_code == 0 and result.manifest["shards"]["written"] == 3
