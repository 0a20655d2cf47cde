"""Checkpoint files read and written at URLs go through `dpiqa.storage`: the storage options reach the object
store, and an endpoint nothing answers at is one line at once, not a minute of botocore's retries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from clirun import one_line, run
from conftest import free_port

from dpiqa.models import checkpoint


def test_checkpoint_files_round_trip_through_an_s3_endpoint_given_as_storage_options(s3, tmp_path: Path) -> None:
    """put_files writes, mirror and read_json read back, all at the loopback S3 server named only in the options
    (no environment variable names it)."""
    bucket, options = s3
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "config.json").write_text('{"architecture": "x"}\n')
    (staging / "card.json").write_text('{"note": "kept"}\n')
    url = f"s3://{bucket}/ckpt"
    checkpoint.put_files(staging, url, ("config.json", "card.json"), options)
    copy = checkpoint.mirror(url, lambda name: name.endswith(".json"), options)
    assert json.loads((copy / "card.json").read_text()) == {"note": "kept"}
    assert json.loads((copy / "config.json").read_text()) == {"architecture": "x"}


def test_mirror_at_an_endpoint_nothing_answers_is_one_line_naming_it() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # bound a moment ago and closed: nothing listens there
    options = {"client_kwargs": {"endpoint_url": endpoint}, "key": "k", "secret": "s"}
    with pytest.raises(ValueError, match=rf"cannot reach the object store at {endpoint}"):
        checkpoint.mirror("s3://bucket/sd", lambda name: True, options)


def test_export_takes_storage_options_for_its_output(capsys: pytest.CaptureFixture) -> None:
    """`dpiqa export --storage-options` reaches the output's filesystem: an unreachable endpoint there stops the
    export before any work, in one line (exit 4, dpiqa/errors.py)."""
    endpoint = f"http://127.0.0.1:{free_port()}"
    options = json.dumps({"client_kwargs": {"endpoint_url": endpoint}, "key": "k", "secret": "s"})
    code, _, err = run(
        capsys, "export", "--model", "dpiqa-student-tiny", "--output", "s3://bucket/out", "--storage-options", options
    )
    assert code == 4
    assert f"cannot reach the object store at {endpoint}" in one_line(err)
