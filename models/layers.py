"""Building blocks shared by the teacher and the student: the score MLP."""

from __future__ import annotations

import torch
from torch import nn


class ScoreMLP(nn.Module):
    """Flattened quality map -> FC -> ReLU -> FC -> ReLU -> FC 1 (DP-IQA's 32768 -> 512 -> 512 -> 1).

    Args:
        in_features: size of the flattened quality map (`8 * 64 * 64` at full size).
        hidden: width of the two hidden layers.
    """

    def __init__(self, in_features: int, hidden: int = 512) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, 1),
        )

    def forward(self, quality_map: torch.Tensor) -> torch.Tensor:
        return self.net(quality_map).squeeze(-1)
