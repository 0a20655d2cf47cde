"""`dpiqa export` then `dpiqa score` on onnxruntime: the same scores and maps as the torch runtime."""

from __future__ import annotations

import json

import corpus
import numpy as np
import pyarrow.parquet as pq
import pytest
from expected import MAPS_FIELDS, fields

from dpiqa.engine import schema
from dpiqa.jobs.cli import main
from dpiqa.models import checkpoint
from dpiqa.models.export import SCORE_TOLERANCE

MODEL = "dpiqa-student-tiny"


def scores_and_maps(out) -> tuple[dict[str, float], dict[str, np.ndarray], dict]:
    scores, maps = {}, {}
    for path in sorted((out / "scores").glob("*.parquet")):
        table = pq.read_table(path)
        meta = schema.read_metadata(table.schema)
        for row in table.to_pylist():
            assert row["status"] == "ok"
            scores[row["key"]] = row["score"]
    for path in sorted((out / "maps").glob("*.parquet")):
        table = pq.read_table(path)
        assert fields(table.schema) == MAPS_FIELDS
        maps_meta = json.loads(table.schema.metadata[b"dpiqa"])
        assert maps_meta["map_shape"] == [8, 16, 16] and maps_meta["map_dtype"] == "float16"
        for row in table.to_pylist():
            maps[row["key"]] = np.frombuffer(row["map"], np.float16).reshape(8, 16, 16)
    return scores, maps, meta


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "tiny-onnx"
    assert main(["export", "--model", MODEL, "--format", "onnx", "--output", str(out), "--validate-batch", "5"]) == 0
    return out


def test_export_then_score_on_onnxruntime_gives_the_torch_scores(exported, tmp_path, capsys):
    card = json.loads((exported / "card.json").read_text())
    assert card["format"] == "onnx" and set(card["onnx"]["validation"]["batches"]) == {"1", "5"}
    (tmp_path / "in").mkdir()
    corpus.write_corpus(tmp_path / "in", shards=2, per_shard=6)
    common = ["--input", str(tmp_path / "in"), "--executor", "local", "--batch-size", "4", "--write-maps"]
    assert main(["score", *common, "--output", str(tmp_path / "torch"), "--model", MODEL]) == 0
    assert (
        main(
            [
                "score",
                *common,
                "--output",
                str(tmp_path / "onnx"),
                "--model",
                str(exported),
                "--runtime",
                "onnx",
            ]
        )
        == 0
    )
    torch_scores, torch_maps, torch_meta = scores_and_maps(tmp_path / "torch")
    onnx_scores, onnx_maps, onnx_meta = scores_and_maps(tmp_path / "onnx")
    assert len(onnx_scores) == 12 and onnx_scores.keys() == torch_scores.keys()
    for key, score in torch_scores.items():
        assert onnx_scores[key] == pytest.approx(score, abs=SCORE_TOLERANCE * 100)
        # float16 maps: at most one float16 rounding step apart (values below 1)
        np.testing.assert_allclose(
            onnx_maps[key].astype(np.float32), torch_maps[key].astype(np.float32), rtol=0, atol=2**-11
        )
    # random weights make scores depend only weakly on the image: ONNX must reproduce that dependence
    keys = sorted(torch_scores)
    diffs = np.abs(np.array([onnx_scores[k] for k in keys]) - np.array([torch_scores[k] for k in keys]))
    assert diffs.max() < np.ptp([torch_scores[k] for k in keys]) / 100
    # the run records the export's identity, not the random-weights source's
    assert onnx_meta["checkpoint_hash"] == card["sha256"] != torch_meta["checkpoint_hash"]
    assert onnx_meta["preprocessing"] == torch_meta["preprocessing"]
    manifest = json.loads((tmp_path / "onnx" / "manifest.json").read_text())
    assert manifest["config"]["run"]["runtime"] == "onnx" and manifest["model"]["checkpoint_hash"] == card["sha256"]
    # an export scores into its own output: resuming a torch run's output with it is refused
    assert main(["score", *common, "--output", str(tmp_path / "torch"), "--model", str(exported)]) == 4
    assert "--overwrite" in capsys.readouterr().err


def test_bad_requests_get_one_line_errors(exported, tmp_path, capsys):
    assert main(["export", "--model", "dpiqa-teacher-tiny", "--output", str(tmp_path / "t")]) == 2
    assert "cannot be exported; only the student" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()
    (tmp_path / "in").mkdir()
    corpus.write_corpus(tmp_path / "in", shards=1, per_shard=2)
    common = ["--input", str(tmp_path / "in"), "--executor", "local"]
    assert main(["score", *common, "--output", str(tmp_path / "a"), "--model", MODEL, "--runtime", "onnx"]) == 2
    assert f"create one with `dpiqa export --model {MODEL}" in capsys.readouterr().err
    assert (
        main(
            [
                "score",
                *common,
                "--output",
                str(tmp_path / "b"),
                "--model",
                str(exported),
                "--precision",
                "bf16",
            ]
        )
        == 2
    )
    assert "precision bf16 apply to the torch runtime only" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # refused before any work
    assert (exported / checkpoint.ONNX_NAME).exists()


def test_an_existing_file_as_output_is_refused_before_the_export(tmp_path, caplog, capsys):
    taken = tmp_path / "student.bin"
    taken.write_bytes(b"someone's file")
    with caplog.at_level("INFO"):
        assert main(["export", "--model", MODEL, "--output", str(taken)]) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"dpiqa export: error: --output {taken} is an existing file; give a folder (it gets model.onnx, "
        "config.json, card.json)"
    ]
    assert "exporting" not in caplog.text  # refused before torch.onnx.export ran
    assert taken.read_bytes() == b"someone's file"
