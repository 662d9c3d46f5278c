"""The reward-model contract.

A reward model (RM) scores images against prompts, higher is better. Implement :meth:`score`;
callers use the instance as a function (``rm(images, prompts)``), which checks the input and the
output and names the RM in any error.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Sequence

import torch

from ..checks import nonfinite_count, require
from ..errors import RewardModelError


class RewardModel(ABC):
    """Scores a batch of images against their prompts.

    Class attributes a plugin sets:

    - ``name``: the registered name.
    - ``input_space``: ``"pixels"`` (float RGB in [0, 1], NCHW) or ``"latents"`` (scaled VAE latents).
    - ``differentiable``: ``True`` if gradients flow from the score to the images. Only
      differentiable RMs can be optimised directly; any RM can teach a proxy (LRM).
    - ``logit_scale``: the multiplier that turns a score into a preference logit (CLIP-style RMs
      use ``exp(logit_scale)`` of their model, about 100); ``None`` when the RM has none: the
      LRM's distillation loss then uses the LRM's own learned scale (the reference's choice for
      ImageReward).

    ``images_scored`` counts the images this instance has scored through :meth:`__call__` (the
    training loop logs it as ``expert_images``: the expert's cost, which a proxy saves).
    """

    name: ClassVar[str] = "reward"
    input_space: ClassVar[str] = "pixels"
    differentiable: ClassVar[bool] = True
    logit_scale: float | None = None
    images_scored: int = 0

    @abstractmethod
    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Return a float tensor of shape ``[B]`` for ``B`` images and ``B`` prompts."""

    def score_terms(self, images: torch.Tensor,
                    prompts: Sequence[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The scores and the terms they are made of, ``{term: Tensor[B]}`` (a judge's
        sub-scores, say; what ``rewardkit serve-reward`` answers beside the scores). An RM
        with terms overrides this and computes both at once; the default has none."""
        return self.score(images, prompts), {}

    def to(self, device: torch.device | str | None = None,
           dtype: torch.dtype | None = None) -> "RewardModel":
        """Move the RM's weights once (never on every call). The base has no weights."""
        return self

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Checked :meth:`score`: validates shapes and values, names this RM on failure."""
        self.check_input(images, prompts)
        scores = self.score(images, prompts)
        self.images_scored = self.images_scored + int(images.shape[0])
        return self.check_output(scores, images.shape[0])

    def call_with_terms(self, images: torch.Tensor, prompts: Sequence[str],
                        **kwargs: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Checked :meth:`score_terms` (``kwargs`` passed on, e.g. the ``metadata`` a served RM
        takes): the scores are checked as by a call; each term must be a tensor of shape
        ``[B]`` (its values may be anything, NaN included)."""
        self.check_input(images, prompts)
        scores, terms = self.score_terms(images, prompts, **kwargs)
        batch = images.shape[0]
        for term, values in terms.items():
            if not isinstance(values, torch.Tensor) or tuple(values.shape) != (batch,):
                shape = (tuple(values.shape) if isinstance(values, torch.Tensor)
                         else type(values).__name__)
                raise RewardModelError(f"reward model '{self.name}' returned term '{term}' of "
                                       f"shape {shape}, expected ({batch},)")
        return self.check_output(scores, batch), dict(terms)

    # -------------------------------------------------------------- checks

    def check_input(self, images: torch.Tensor, prompts: Sequence[str]) -> None:
        where = f"reward model '{self.name}'"
        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise RewardModelError(f"{where} expects a 4-D NCHW tensor, got {shape}")
        if self.input_space == "pixels" and images.shape[1] != 3:
            raise RewardModelError(
                f"{where} expects RGB images (N, 3, H, W), got {tuple(images.shape)}")
        if not images.is_floating_point():
            raise RewardModelError(f"{where} expects float images, got {images.dtype}")
        if isinstance(prompts, str) or len(prompts) != images.shape[0]:
            count = "a single string" if isinstance(prompts, str) else f"{len(prompts)} prompts"
            raise RewardModelError(
                f"{where} got {images.shape[0]} images but {count}; pass one prompt per image")

    def check_output(self, scores: torch.Tensor, batch: int) -> torch.Tensor:
        where = f"reward model '{self.name}'"
        if not isinstance(scores, torch.Tensor):
            raise RewardModelError(f"{where} returned {type(scores).__name__}, not a tensor")
        if scores.ndim == 2 and scores.shape[1] == 1:
            scores = scores[:, 0]
        if tuple(scores.shape) != (batch,):
            raise RewardModelError(
                f"{where} returned shape {tuple(scores.shape)}, expected ({batch},)")
        # read at once, or with the training step's metrics (rewardkit.checks.deferred)
        require(nonfinite_count(scores),
                lambda bad, _: f"{where} returned {bad} non-finite score(s) (NaN or inf)",
                RewardModelError)
        return scores.float() if scores.dtype != torch.float32 else scores
