"""The training losses against hand-computed values on tiny tensors, with missing labels and teacher outputs."""

from __future__ import annotations

import math

import pytest
import torch

from dpiqa.models.distill import distillation_loss, teacher_loss

NAN = math.nan


def batch() -> dict[str, torch.Tensor]:
    """Three samples: the second is unlabelled, the third has no teacher outputs; maps are 1x1x2."""
    return {
        "student_score": torch.tensor([0.5, 0.2, 0.9], requires_grad=True),
        "student_map": torch.tensor([[[[1.0, 2.0]]], [[[0.0, 0.0]]], [[[3.0, 3.0]]]], requires_grad=True),
        "target_mos_scaled": torch.tensor([0.4, NAN, 1.0]),
        "teacher_score": torch.tensor([0.6, 0.0, NAN]),
        "teacher_map": torch.tensor([[[[1.0, 0.0]]], [[[1.0, 1.0]]], [[[NAN, NAN]]]], dtype=torch.float16),
    }


# By hand:
# label   = mean((0.5 - 0.4)^2, (0.9 - 1.0)^2)              = (0.01 + 0.01) / 2     = 0.01   (sample 2 unlabelled)
# feature = mean over samples 1, 2 of ((1-1)^2, (2-0)^2, (0-1)^2, (0-1)^2) = 6 / 4 = 1.5    (sample 3 no teacher)
# score   = mean((0.5 - 0.6)^2, (0.2 - 0.0)^2)             = (0.01 + 0.04) / 2     = 0.025
@pytest.mark.parametrize(
    ("mode", "total", "terms"),
    [
        ("feature", 0.01 + 1.5, {"label", "feature"}),  # the spec's: MSE(score, MOS/100) + MSE(F_s, F_teacher)
        ("score", 0.01 + 0.025, {"label", "score"}),
        ("both", 0.01 + 1.5 + 0.025, {"label", "feature", "score"}),
        ("none", 0.01, {"label"}),
    ],
)
def test_modes_by_hand(mode: str, total: float, terms: set[str]) -> None:
    loss = distillation_loss(**batch(), mode=mode)
    assert loss.total.item() == pytest.approx(total, rel=1e-6)
    assert set(loss.terms) == terms
    expected = {"label": 0.01, "feature": 1.5, "score": 0.025}
    assert {k: pytest.approx(v.item(), rel=1e-6) for k, v in loss.terms.items()} == {k: expected[k] for k in terms}


def test_weights_and_gradients_skip_missing_targets() -> None:
    b = batch()
    loss = distillation_loss(**b, mode="both", label_weight=2.0, feature_weight=0.5, score_weight=4.0)
    assert loss.total.item() == pytest.approx(2 * 0.01 + 0.5 * 1.5 + 4 * 0.025, rel=1e-6)
    loss.total.backward()
    # d/ds: label 2 * 2(s - y)/2 on samples 1, 3; score 4 * 2(s - t)/2 on samples 1, 2.
    expected_score_grad = [2 * 0.1 + 4 * -0.1, 4 * 0.2, 2 * -0.1]
    torch.testing.assert_close(b["student_score"].grad, torch.tensor(expected_score_grad))
    # d/dF: 0.5 * 2(F - T)/4 on samples 1, 2; sample 3 (no teacher map) gets nothing.
    expected_map_grad = torch.tensor([[[[0.0, 0.5]]], [[[-0.25, -0.25]]], [[[0.0, 0.0]]]])
    torch.testing.assert_close(b["student_map"].grad, expected_map_grad)


def test_no_teacher_outputs_or_no_labels() -> None:
    b = batch()
    labels_only = distillation_loss(b["student_score"], b["student_map"], b["target_mos_scaled"], mode="feature")
    assert set(labels_only.terms) == {"label"} and labels_only.total.item() == pytest.approx(0.01, rel=1e-6)

    unlabelled = torch.full((3,), NAN)
    nothing = distillation_loss(b["student_score"], b["student_map"], unlabelled, mode="none")
    assert nothing.terms == {} and nothing.total.item() == 0.0
    nothing.total.backward()  # still connected, so every data-parallel replica runs its backward
    assert torch.equal(b["student_score"].grad, torch.zeros(3))

    teacher_only = distillation_loss(b["student_score"], b["student_map"], None, teacher_map=b["teacher_map"])
    assert set(teacher_only.terms) == {"feature"} and teacher_only.total.item() == pytest.approx(1.5, rel=1e-6)


def test_teacher_loss_masks_missing_labels() -> None:
    score = torch.tensor([0.5, 0.2, 0.9], requires_grad=True)
    loss = teacher_loss(score, torch.tensor([0.4, NAN, 1.0]))
    assert loss.item() == pytest.approx(0.01, rel=1e-6)
    loss.backward()
    torch.testing.assert_close(score.grad, torch.tensor([0.1, 0.0, -0.1]))
    assert teacher_loss(score, torch.full((3,), NAN)).item() == 0.0


def test_bad_arguments_are_named() -> None:
    b = batch()
    with pytest.raises(ValueError, match="distillation mode must be one of feature, score, both, none, not 'map'"):
        distillation_loss(**b, mode="map")
    with pytest.raises(ValueError, match=r"teacher map \(3, 1, 2, 1\) and student map \(3, 1, 1, 2\) differ"):
        distillation_loss(b["student_score"], b["student_map"], teacher_map=b["teacher_map"].transpose(2, 3))


def ranked_batch(scores: list[float]) -> dict[str, torch.Tensor]:
    """One source (group 7) with its reference and blur at levels 1, 3; noise at level 2; a sample of
    another source (group 9) and one with no group."""
    return {
        "score": torch.tensor(scores, requires_grad=True),
        "group": torch.tensor([7, 7, 7, 7, 9, -1]),
        "family": torch.tensor([0, 1, 1, 2, 1, 0]),
        "level": torch.tensor([0, 1, 3, 2, 1, 0]),
    }


def test_ranking_pairs_are_within_one_source_and_family():
    from dpiqa.models.distill import ranking_pairs

    b = ranked_batch([0.0] * 6)
    i, j = ranking_pairs(b["group"], b["family"], b["level"])
    # the reference above all three distortions of its source; blur 1 above blur 3; noise 2 vs blur 1/3: no
    assert sorted(zip(i.tolist(), j.tolist(), strict=True)) == [(0, 1), (0, 2), (0, 3), (1, 2)]


def test_ranking_loss_by_hand_and_it_prefers_the_right_order():
    from dpiqa.models.distill import ranking_loss

    def loss(scores):
        b = ranked_batch(scores)
        return ranking_loss(b["score"], b["group"], b["family"], b["level"], margin=0.1)

    # Right order with gaps >= 0.1 except blur 1 -> 3 (gap 0.05): pairs (0,1) 0.8-0.7=0.1 -> 0, (0,2) 0.15 -> 0,
    # (0,3) 0.3 -> 0, (1,2) 0.05 -> 0.05; mean 0.0125.
    right = loss([0.8, 0.7, 0.65, 0.5, 0.1, 0.9])
    assert right.item() == pytest.approx(0.05 / 4, rel=1e-5)
    # Backwards (the reference lowest, blur 3 above blur 1): (0,1) 0.1+0.2, (0,2) 0.1+0.3, (0,3) 0.1+0.1,
    # (1,2) 0.1+0.1; mean (0.3 + 0.4 + 0.2 + 0.2) / 4 = 0.275.
    backwards = loss([0.5, 0.7, 0.8, 0.6, 0.1, 0.9])
    assert backwards.item() == pytest.approx(0.275, rel=1e-5)
    assert backwards > right
    backwards.backward()  # gradients push the reference up and the stronger distortions down
    b = ranked_batch([0.0] * 6)
    assert ranking_loss(b["score"], torch.tensor([-1] * 6), b["family"], b["level"]) is None  # no pair at all
