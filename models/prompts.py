"""The teacher's prompt sets (configuration): template, qualities, scenes, distortions, named sets, fixed order."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

TEMPLATE = "a photo of a {scene} with {distortion} artifacts, which is of {quality} quality"

QUALITIES: tuple[str, ...] = ("bad", "poor", "fair", "good", "perfect")

SCENES: tuple[str, ...] = (
    "animal",
    "cityscape",
    "human",
    "indoor",
    "landscape",
    "night",
    "plant",
    "still_life",
    "others",
)

# The KADID/LIQE distortion names, in the spec's order.
DISTORTIONS: tuple[str, ...] = (
    "jpeg2000 compression",
    "jpeg compression",
    "white noise",
    "gaussian blur",
    "fastfading",
    "fnoise",
    "contrast",
    "lens",
    "motion",
    "diffusion",
    "shifting",
    "color quantization",
    "oversaturation",
    "desaturation",
    "white with color",
    "impulse",
    "multiplicative",
    "white noise with denoise",
    "brighten",
    "darken",
    "shifting the mean",
    "jitter",
    "noneccentricity patch",
    "pixelate",
    "quantization",
    "color blocking",
    "sharpness",
    "realistic blur",
    "realistic noise",
    "underexposure",
    "overexposure",
    "realistic contrast change",
    "other realistic",
)

# The 11 coarse distortion classes (the ablation's K = 5 x 9 x 11 = 495 prompts), each with the distortion
# names it covers; every one of the 33 names is in exactly one class. The class names are LIQE's 11 coarse
# types (Zhang et al., CVPR 2023, whose list the 33 names come from). The assignment is ours and follows
# KADID-10k's published distortion groups (blurs, noise, compression, colour, brightness change, spatial,
# sharpness and contrast) where a name is a KADID type, with these choices:
# - fastfading (LIVE: a JPEG2000 bitstream sent over a fading channel) is JPEG2000 compression;
# - fnoise (CSIQ: 1/f pink noise) is noise;
# - colour diffusion and colour shift (KADID: colour distortions) and the two saturation changes are colour;
# - quantization (KADID: spatial group) joins colour quantization: both posterize the intensities;
# - sharpness (KADID: "sharpness and contrast", high sharpen) joins the contrast changes;
# - brighten / darken (KADID: brightness change) join the realistic over- / underexposure;
# - shifting the mean (KADID: mean shift, up or down) has no single direction, so it is other,
#   with other realistic.
COARSE_DISTORTIONS: dict[str, tuple[str, ...]] = {
    "blur": ("gaussian blur", "lens", "motion", "realistic blur"),
    "noise": (
        "white noise",
        "fnoise",
        "white with color",
        "impulse",
        "multiplicative",
        "white noise with denoise",
        "realistic noise",
    ),
    "jpeg compression": ("jpeg compression",),
    "jpeg2000 compression": ("jpeg2000 compression", "fastfading"),
    "color": ("diffusion", "shifting", "oversaturation", "desaturation"),
    "quantization": ("color quantization", "quantization"),
    "spatial": ("jitter", "noneccentricity patch", "pixelate", "color blocking"),
    "contrast": ("contrast", "realistic contrast change", "sharpness"),
    "overexposure": ("brighten", "overexposure"),
    "underexposure": ("darken", "underexposure"),
    "other": ("shifting the mean", "other realistic"),
}

# Name of the default set, as written into a teacher's config (`TeacherConfig.prompt_set`).
DEFAULT_SET = "dpiqa-quality-1485"
COARSE_SET = "dpiqa-coarse-495"
EMPTY_SET = "empty-1"


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


# The named prompt sets a teacher can be built with (`TeacherConfig.prompt_set`,
# `DPIQATeacher.from_stable_diffusion(prompts=NAME)`): the paper's 1485, the coarse 495 (the template
# with the 11 class names in place of the 33 distortion names), and one empty prompt (K = 1: a context
# without quality words, for the ablation "does the text condition matter at all").
PROMPT_SETS: dict[str, Callable[[], list[str]]] = {
    DEFAULT_SET: quality_prompts,
    COARSE_SET: lambda: quality_prompts(distortions=tuple(COARSE_DISTORTIONS)),
    EMPTY_SET: lambda: [""],
}


def prompt_texts(name: str) -> list[str]:
    """The texts of a named prompt set.

    Args:
        name: a key of `PROMPT_SETS`.
    """
    if name not in PROMPT_SETS:
        raise ValueError(
            f"unknown prompt set {name!r}; named sets: {', '.join(PROMPT_SETS)} (other texts are passed as a list)"
        )
    return PROMPT_SETS[name]()


def prompt_set_size(name: str) -> int | None:
    """K of a named prompt set; None for a `custom-...` name (whose texts are not known here)."""
    return len(prompt_texts(name)) if name in PROMPT_SETS else None


def prompt_set_name(prompts: Sequence[str]) -> str:
    """The name of a named set with exactly these texts in this order, else `custom-<K>-<sha256 prefix>`."""
    for name, texts in PROMPT_SETS.items():
        if list(prompts) == texts():
            return name
    digest = hashlib.sha256("\n".join(prompts).encode()).hexdigest()[:16]
    return f"custom-{len(prompts)}-{digest}"
