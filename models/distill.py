"""Training losses: the teacher's label loss and the student's distillation loss (plain torch, CPU-testable)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Student loss modes: "feature" is the paper's (labels + the quality map); "score" swaps the map term for the
# teacher's score, "both" uses both teacher terms, "none" trains on the labels alone (distillation off).
MODES = ("feature", "score", "both", "none")


@dataclass
class LossTerms:
    """A loss and the terms it was summed from (each detached, for logging; absent terms are left out).

    Args:
        total: the weighted sum to call `backward()` on.
        terms: `label`, `feature`, `score`: each unweighted term that had data in this batch.
    """

    total: torch.Tensor
    terms: dict[str, torch.Tensor]


def _masked_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
    """MSE over the samples whose target is finite everywhere (NaN marks a missing value); None if none is.

    Both `(B,)` or `(B, ...)`; a sample with any non-finite target element is left out entirely.
    """
    present = torch.isfinite(target).reshape(target.shape[0], -1).all(dim=1)
    if not present.any():
        return None
    return F.mse_loss(prediction[present], target[present].to(prediction.dtype))


def teacher_loss(score: torch.Tensor, target_mos_scaled: torch.Tensor) -> torch.Tensor:
    """The teacher's loss: MSE between its score and the label MOS / mos_scale, over the labelled samples.

    Args:
        score: predicted scores `(B,)` (MOS / mos_scale).
        target_mos_scaled: labels `(B,)` already divided by the model's `mos_scale`; NaN where missing.

    Returns:
        The scalar loss; zero (still connected to `score`, so every replica backpropagates) when no sample
        in the batch is labelled.
    """
    loss = _masked_mse(score, target_mos_scaled)
    return loss if loss is not None else score.sum() * 0.0


def distillation_loss(
    student_score: torch.Tensor,
    student_map: torch.Tensor,
    target_mos_scaled: torch.Tensor | None = None,
    teacher_score: torch.Tensor | None = None,
    teacher_map: torch.Tensor | None = None,
    mode: str = "feature",
    label_weight: float = 1.0,
    feature_weight: float = 1.0,
    score_weight: float = 1.0,
) -> LossTerms:
    """The student's loss: `label_weight * MSE(score, MOS / mos_scale)` plus the teacher terms of `mode`.

    The spec's loss is mode `feature` with equal weights: `MSE(score, MOS/100) + MSE(F_s, F_teacher)`.
    Each term averages over the samples that have its target: labels where `target_mos_scaled` is finite
    (unlabelled images carry NaN), teacher terms where the teacher's output is given and finite. A term
    with no target in the batch is left out; the total is zero (connected to the student's outputs) when
    no term has one.

    Args:
        student_score: the student's scores `(B,)`.
        student_map: the student's quality maps `(B, C, H, W)`.
        target_mos_scaled: labels `(B,)` divided by `mos_scale`, NaN where missing; None: no labels.
        teacher_score: the teacher's scores `(B,)` (same units), NaN rows where missing; None: not computed.
        teacher_map: the teacher's quality maps `(B, C, H, W)`, NaN rows where missing; None: not computed.
        mode: `feature` (labels + map), `score` (labels + teacher score), `both`, or `none` (labels only,
            teacher outputs ignored).
        label_weight: weight of the label term.
        feature_weight: weight of the map term (`MSE(F_s, F_teacher)`, mean over all map elements).
        score_weight: weight of the teacher-score term.
    """
    if mode not in MODES:
        raise ValueError(f"distillation mode must be one of {', '.join(MODES)}, not {mode!r}")
    if teacher_map is not None and tuple(teacher_map.shape) != tuple(student_map.shape):
        raise ValueError(f"teacher map {tuple(teacher_map.shape)} and student map {tuple(student_map.shape)} differ")
    pairs = {
        "label": (student_score, target_mos_scaled, label_weight),
        "feature": (student_map, teacher_map if mode in ("feature", "both") else None, feature_weight),
        "score": (student_score, teacher_score if mode in ("score", "both") else None, score_weight),
    }
    total = student_score.sum() * 0.0
    terms: dict[str, torch.Tensor] = {}
    for name, (prediction, target, weight) in pairs.items():
        term = _masked_mse(prediction, target) if target is not None else None
        if term is not None:
            terms[name] = term.detach()
            total = total + weight * term
    return LossTerms(total, terms)


def ranking_pairs(group: torch.Tensor, family: torch.Tensor, level: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The ordered pairs `(better, worse)` of a batch that a ranking loss compares: two samples of one source
    (`group`, -1 = none) where the first has the lower distortion `level` and both share the distortion
    `family` or the first is the undistorted reference (level 0). Distortions of different families at
    different levels are not ordered (is JPEG 3 worse than blur 2? no label says).

    Returns:
        Index tensors `(i, j)`: sample `i` should score above sample `j`.
    """
    same = (group[:, None] == group[None, :]) & (group[:, None] >= 0)
    comparable = (family[:, None] == family[None, :]) | (level[:, None] == 0)
    better = level[:, None] < level[None, :]
    return torch.nonzero(same & comparable & better, as_tuple=True)


def ranking_loss(
    score: torch.Tensor, group: torch.Tensor, family: torch.Tensor, level: torch.Tensor, margin: float = 0.05
) -> torch.Tensor | None:
    """Pairwise hinge loss over the ordered pairs of a batch (`ranking_pairs`): the mean over pairs of
    `max(0, margin - (score_better - score_worse))`. It teaches the order of a source's distortion levels,
    not the MOS of any one dataset, and needs no label (unlabelled photographs rank too).

    Args:
        score: the model's scores `(B,)` (MOS / mos_scale).
        group: the source of each sample `(B,)`, -1 where it has none.
        family: the distortion family of each sample `(B,)` (any id; the reference's is ignored).
        level: the distortion level `(B,)`, 0 for the reference.
        margin: the gap wanted between a better and a worse sample, in score units.

    Returns:
        The scalar loss, or None when the batch holds no ordered pair.
    """
    i, j = ranking_pairs(group, family, level)
    if len(i) == 0:
        return None
    return F.relu(margin - (score[i] - score[j])).mean()
