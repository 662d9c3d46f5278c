"""The world's reward models: the rule-based judge and the learned, differentiable scorer."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..rewards.base import RewardModel
from .assets import SCORER, asset_path, load_net
from .judge import WEIGHTS, judge
from .nets import WorldScorerNet
from .scene_codes import encode_captions


class WorldJudge(RewardModel):
    """Rule-based judge of the embedded world (non-differentiable; numpy)."""

    name = "world-judge"
    differentiable = False

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return self.score_terms(images, prompts)[0]

    def score_terms(self, images: torch.Tensor,
                    prompts: Sequence[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The scores and the judge's terms (background, colour, count, shape, size,
        crispness; each in [0, 1], see :mod:`rewardkit.world.judge`)."""
        pixels = images.detach().float().clamp(0, 1).cpu().numpy()
        verdicts = [judge(image, prompt) for image, prompt in zip(pixels, prompts)]
        scores = torch.tensor([v.score for v in verdicts], dtype=torch.float32,
                              device=images.device)
        terms = {term: torch.tensor([v.terms[term] for v in verdicts], dtype=torch.float32,
                                    device=images.device) for term in WEIGHTS}
        return scores, terms


class WorldScorer(RewardModel):
    """Learned, differentiable RM of the embedded world (a small CNN that imitates the judge)."""

    name = "world-scorer"
    differentiable = True

    def __init__(self, path: str | None = None, device: str = "cpu") -> None:
        self.net = load_net(WorldScorerNet, Path(path) if path else asset_path(SCORER)).to(device)

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def to(self, device=None, dtype=None) -> "WorldScorer":
        self.net.to(device=device, dtype=dtype)
        return self

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        codes = encode_captions(prompts).to(images.device)
        return self.net(images.to(next(self.net.parameters()).dtype), codes)


def judge_scores(images: np.ndarray | torch.Tensor, prompts: Sequence[str]) -> np.ndarray:
    """Judge scores of a batch (NCHW in [0, 1]) as a numpy array."""
    return WorldJudge()(torch.as_tensor(images).float(), list(prompts)).numpy()
