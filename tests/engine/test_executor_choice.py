"""`--executor auto`: a small input with no cluster named runs in this process; a large one, or any run given
`--address` or `RAY_ADDRESS`, on Ray; `dpiqa score` records the choice in its manifest's `startup.executor`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import corpus
import pytest
from clirun import dpiqa

from dpiqa.engine import executor as executors
from dpiqa.engine.executor import choose_executor
from dpiqa.engine.executor.local import LocalExecutor
from dpiqa.engine.executor.ray_actors import RayExecutor
from dpiqa.engine.shards.listing import list_shards


@pytest.fixture
def shards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Three shards of 8 small JPEGs each (a few KB in all), with no cluster named in the environment."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    (tmp_path / "in").mkdir()
    paths = corpus.write_corpus(tmp_path / "in", shards=3, per_shard=8)
    return tmp_path, sum(Path(p).stat().st_size for p in paths)


def test_auto_runs_a_small_input_in_this_process(shards, caplog):
    tmp_path, size = shards
    assert size < executors.SMALL_BYTES and 3 < executors.SMALL_SHARDS
    with caplog.at_level(logging.INFO):
        chosen = choose_executor("auto", None, list_shards(str(tmp_path / "in")), None, "score")
    assert type(chosen) is LocalExecutor and chosen.in_process
    assert "score: in this process (3 shards" in caplog.text


@pytest.mark.parametrize(
    ("small_shards", "small_bytes"),
    [(2, 512 << 20), (64, 1000)],  # one shard too many; a few KB too big
    ids=["more-shards-than-small", "more-bytes-than-small"],
)
def test_auto_runs_a_large_input_on_ray(shards, monkeypatch, caplog, small_shards, small_bytes):
    tmp_path, size = shards
    monkeypatch.setattr(executors, "SMALL_SHARDS", small_shards)
    monkeypatch.setattr(executors, "SMALL_BYTES", small_bytes)
    assert size > 1000
    with caplog.at_level(logging.INFO):
        chosen = choose_executor("auto", None, list_shards(str(tmp_path / "in")), None, "score")
    assert type(chosen) is RayExecutor and not chosen.in_process and chosen.address is None
    assert "score: on a local Ray" in caplog.text


def test_auto_takes_the_at_most_thresholds_inclusively(shards, monkeypatch):
    """Exactly SMALL_SHARDS shards of exactly SMALL_BYTES in all is still small."""
    tmp_path, size = shards
    monkeypatch.setattr(executors, "SMALL_SHARDS", 3)
    monkeypatch.setattr(executors, "SMALL_BYTES", size)
    assert type(choose_executor("auto", None, list_shards(str(tmp_path / "in")))) is LocalExecutor


def test_auto_with_a_named_cluster_runs_on_it_whatever_the_size(shards, monkeypatch, caplog):
    tmp_path, _ = shards
    small = list_shards(str(tmp_path / "in"))
    with caplog.at_level(logging.INFO):
        chosen = choose_executor("auto", "ray://head:10001", small, None, "score")
    assert type(chosen) is RayExecutor and chosen.address == "ray://head:10001"
    assert "score: on the Ray cluster at ray://head:10001" in caplog.text
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    chosen = choose_executor("auto", None, small, None, "score")
    assert type(chosen) is RayExecutor and not chosen.in_process
    # and a named executor is taken as named
    assert type(choose_executor("local", "ray://head:10001", small)) is LocalExecutor


def _score(tmp_path: Path, out: str, *extra: str) -> dict:
    result = dpiqa(
        "score",
        "--input",
        str(tmp_path / "in"),
        "--output",
        str(tmp_path / out),
        "--model",
        "dpiqa-student-tiny",
        *extra,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((tmp_path / out / "manifest.json").read_text())


def test_score_records_in_process_for_a_small_input(shards):
    """`dpiqa score` without `--executor` (auto) on a small input: in this process, and the manifest says so."""
    tmp_path, _ = shards
    small = _score(tmp_path, "small")
    assert small["startup"]["executor"] == "local" and small["rows"] == 24


@pytest.mark.slow  # a Ray Data run on the session's Ray: ~40 s on a 2-core machine
def test_score_records_ray_for_a_large_input(shards, monkeypatch, ray_local):
    """The same small input made large by lowering the thresholds: on (the session's) Ray, recorded so."""
    tmp_path, _ = shards
    monkeypatch.setattr(executors, "SMALL_SHARDS", 1)
    large = _score(tmp_path, "large")
    assert large["startup"]["executor"] == "ray" and large["rows"] == 24
