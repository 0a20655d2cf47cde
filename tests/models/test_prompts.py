"""The teacher's prompt set: 5 qualities x 9 scenes x 33 distortions in the documented order."""

from __future__ import annotations

import pytest

from dpiqa.models.prompts import (
    COARSE_DISTORTIONS,
    COARSE_SET,
    DEFAULT_SET,
    DISTORTIONS,
    EMPTY_SET,
    PROMPT_SETS,
    QUALITIES,
    SCENES,
    prompt_set_name,
    prompt_texts,
    quality_prompts,
)


def test_the_spec_prompt_set() -> None:
    prompts = quality_prompts()
    assert (len(QUALITIES), len(SCENES), len(DISTORTIONS)) == (5, 9, 33)
    assert len(prompts) == len(set(prompts)) == 1485
    assert prompts[0] == "a photo of a animal with jpeg2000 compression artifacts, which is of bad quality"
    assert prompts[-1] == "a photo of a others with other realistic artifacts, which is of perfect quality"
    # quality outermost, distortion innermost
    q, s, d = 3, 7, 12  # good, still_life, oversaturation
    assert prompts[q * 9 * 33 + s * 33 + d] == (
        "a photo of a still_life with oversaturation artifacts, which is of good quality"
    )


def test_prompt_set_names() -> None:
    assert prompt_set_name(quality_prompts()) == DEFAULT_SET
    assert prompt_set_name(["a", "b"]).startswith("custom-2-")
    assert prompt_set_name(["a", "b"]) != prompt_set_name(["b", "a"])


def test_coarse_classes_cover_the_33_names_once() -> None:
    assert len(COARSE_DISTORTIONS) == 11
    covered = [name for names in COARSE_DISTORTIONS.values() for name in names]
    assert sorted(covered) == sorted(DISTORTIONS) and len(covered) == 33


def test_named_sets() -> None:
    coarse = prompt_texts(COARSE_SET)
    assert len(coarse) == len(set(coarse)) == 5 * 9 * 11 == 495
    assert coarse[0] == "a photo of a animal with blur artifacts, which is of bad quality"
    assert coarse[-1] == "a photo of a others with other artifacts, which is of perfect quality"
    assert prompt_texts(EMPTY_SET) == [""]
    assert prompt_texts(DEFAULT_SET) == quality_prompts()
    for name in PROMPT_SETS:
        assert prompt_set_name(prompt_texts(name)) == name
    with pytest.raises(ValueError, match="unknown prompt set 'x'; named sets: dpiqa-quality-1485, dpiqa-coarse-495"):
        prompt_texts("x")
