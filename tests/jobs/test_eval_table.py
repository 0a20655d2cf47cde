"""`dpiqa eval --table` writes its markdown table to a local path or a URL, through `--storage-options` as every
URL the jobs write (issue 36: it was written with `Path.write_text`, so a URL became a local file named `s3:`)."""

from __future__ import annotations

import json

import corpus
from clirun import dpiqa

from dpiqa.storage import get_fs


def test_the_table_goes_to_a_bucket_with_the_storage_options(s3, tmp_path, monkeypatch):
    bucket, options = s3
    table = corpus.graded_table(tmp_path, n=12)
    monkeypatch.chdir(tmp_path)  # where the old code's local file `s3:/...` would have appeared
    url = f"s3://{bucket}/reports/eval.md"
    args = ["eval", "--model", "brisque", "--dataset", "csv", "--root", str(table), "--split", "all", "--table", url]
    result = dpiqa(*args, "--storage-options", json.dumps(options))
    assert result.returncode == 0, result.stderr
    fs, path = get_fs(url, options)
    text = fs.cat_file(path).decode()
    assert text.startswith("# Evaluation\n") and "| brisque (not trained here) |" in text and "n=12" in text
    assert not (tmp_path / "s3:").exists()


def test_a_root_per_dataset_is_a_usage_error(tmp_path):
    """The options alone tell it: exit status 2 (it was 4, the status of a file the command met)."""
    args = ["eval", "--model", "brisque", "--dataset", "csv", "--dataset", "csv", "--root", str(tmp_path / "t.csv")]
    result = dpiqa(*args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "dpiqa eval: error: 2 --dataset but 1 --root: give one root per dataset"
    )
