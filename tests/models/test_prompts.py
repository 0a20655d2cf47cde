"""The teacher's prompt set: 5 qualities x 9 scenes x 33 distortions in the documented order."""

from __future__ import annotations

from models.prompts import DEFAULT_SET, DISTORTIONS, QUALITIES, SCENES, prompt_set_name, quality_prompts


def test_the_spec_prompt_set() -> None:
    prompts = quality_prompts()
    assert (len(QUALITIES), len(SCENES), len(DISTORTIONS)) == (5, 9, 33)
    assert len(prompts) == len(set(prompts)) == 1485
    assert prompts[0] == "a photo of a animal with jpeg2000 compression artifacts, which is of bad quality"
    assert prompts[-1] == "a photo of a others with other realistic artifacts, which is of perfect quality"
    # quality outermost, distortion innermost
    q, s, d = 3, 7, 12  # good, still_life, oversaturation
    assert prompts[q * 9 * 33 + s * 33 + d] == (
        "a photo of a still_life with oversaturation artifacts, which is of good quality")


def test_prompt_set_names() -> None:
    assert prompt_set_name(quality_prompts()) == DEFAULT_SET
    assert prompt_set_name(["a", "b"]).startswith("custom-2-")
    assert prompt_set_name(["a", "b"]) != prompt_set_name(["b", "a"])
