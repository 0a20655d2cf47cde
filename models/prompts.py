"""The teacher's quality prompt set (configuration): template, qualities, scenes, distortions, fixed order."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

TEMPLATE = "a photo of a {scene} with {distortion} artifacts, which is of {quality} quality"

QUALITIES: tuple[str, ...] = ("bad", "poor", "fair", "good", "perfect")

SCENES: tuple[str, ...] = (
    "animal", "cityscape", "human", "indoor", "landscape", "night", "plant", "still_life", "others",
)

# The KADID/LIQE distortion names, in the spec's order.
DISTORTIONS: tuple[str, ...] = (
    "jpeg2000 compression", "jpeg compression", "white noise", "gaussian blur", "fastfading", "fnoise",
    "contrast", "lens", "motion", "diffusion", "shifting", "color quantization", "oversaturation",
    "desaturation", "white with color", "impulse", "multiplicative", "white noise with denoise", "brighten",
    "darken", "shifting the mean", "jitter", "noneccentricity patch", "pixelate", "quantization",
    "color blocking", "sharpness", "realistic blur", "realistic noise", "underexposure", "overexposure",
    "realistic contrast change", "other realistic",
)

# Name of the default set, as written into a teacher's config (`TeacherConfig.prompt_set`).
DEFAULT_SET = "dpiqa-quality-1485"


def quality_prompts(
    qualities: Sequence[str] = QUALITIES,
    scenes: Sequence[str] = SCENES,
    distortions: Sequence[str] = DISTORTIONS,
    template: str = TEMPLATE,
) -> list[str]:
    """Every (quality, scene, distortion) prompt, quality outermost, distortion innermost.

    The order is fixed so that the stored embedding rows can be traced back to their texts; the
    teacher's output does not depend on it (cross-attention without a mask is invariant to the order
    of its context tokens).

    Args:
        qualities: quality words (5 by default).
        scenes: scene names (9 by default).
        distortions: distortion names (33 by default).
        template: a format string with `{scene}`, `{distortion}` and `{quality}`.

    Returns:
        `len(qualities) * len(scenes) * len(distortions)` prompts (1485 by default).
    """
    return [
        template.format(quality=quality, scene=scene, distortion=distortion)
        for quality in qualities
        for scene in scenes
        for distortion in distortions
    ]


def prompt_set_name(prompts: Sequence[str]) -> str:
    """`dpiqa-quality-1485` for the default set, else `custom-<K>-<sha256 prefix>` naming the texts."""
    if list(prompts) == quality_prompts():
        return DEFAULT_SET
    digest = hashlib.sha256("\n".join(prompts).encode()).hexdigest()[:16]
    return f"custom-{len(prompts)}-{digest}"
