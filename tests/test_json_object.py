"""`dpiqa.json_object`: the one parser of small JSON files that must hold an object (checkpoint configs and cards,
a run's records and completion markers, an audit baseline), and what its callers say about a damaged one."""

from __future__ import annotations

import logging

import pytest

from dpiqa.engine.output import CorruptFileError, OutputLocation
from dpiqa.json_object import NotAJsonObject, json_object
from dpiqa.models.checkpoint_files import read_json


def test_an_object_comes_back():
    assert json_object(b'{"a": [1, 2], "b": null}') == {"a": [1, 2], "b": None}
    assert json_object('{"x": 1}') == {"x": 1}


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"[1, 2]", "JSON list, not an object"),
        (b'"x"', "JSON str, not an object"),
        (b"3", "JSON int, not an object"),
        (b"null", "JSON NoneType, not an object"),
        (b'{"cut": ', "not JSON (Expecting value: line 1 column 9"),
        (b"", "not JSON (Expecting value"),
        (b"\xff\xfe{", "not JSON ("),  # not UTF-8: still one line, not a UnicodeDecodeError traceback
    ],
)
def test_anything_else_is_named(data, says):
    with pytest.raises(NotAJsonObject) as caught:
        json_object(data)
    assert str(caught.value).startswith(says)
    assert isinstance(caught.value, ValueError)  # callers that catch bad input keep working


def test_a_checkpoint_file_that_holds_no_object_is_named_as_damaged(tmp_path):
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError) as caught:
        read_json(str(tmp_path), "config.json")
    assert str(caught.value) == f"{tmp_path / 'config.json'}: JSON list, not an object; the checkpoint is damaged"


def test_a_run_file_that_holds_no_object_is_corrupt(tmp_path):
    out = OutputLocation(str(tmp_path))
    (tmp_path / "_run.json").write_text('"x"')
    with pytest.raises(CorruptFileError, match=r"_run.json: JSON str, not an object \(3 bytes\)"):
        out.read_json("_run.json")


def test_a_marker_that_holds_no_object_counts_as_not_done(tmp_path, caplog):
    out = OutputLocation(str(tmp_path))
    (tmp_path / "_done").mkdir()
    (tmp_path / "_done" / "a.json").write_text('{"rows": 3}')
    (tmp_path / "_done" / "b.json").write_text("[3]")
    with caplog.at_level(logging.WARNING):
        markers = out._read_markers(["a", "b"])
    assert markers == {"a": {"rows": 3}}
    assert "b.json: unreadable completion marker (JSON list, not an object)" in caplog.text
