"""``weighted``: a weighted sum of registered reward models.

>>> rm = rewardkit.reward_model("weighted", components={"hpsv2": 1.0, "imagereward": 0.1},
...                             params={"hpsv2": {"version": "v2.1"}})   # doctest: +SKIP

The RG-LCD reference's ``weighted_hpsv2_img_reward`` is ``1.0 * HPSv2.1 + 0.1 * ImageReward``.
Each component is built through the plugin host (:mod:`rewardkit.plugins`; so any plugin's RM
works), with ``params[key]`` as its parameters. To use one RM twice with different parameters, give keys
of the form ``NAME:LABEL`` (``"clip-score:laion"``): the part before ``:`` is the registered name.

Rules:

- ``differentiable`` is true only when every component is differentiable;
- all components must share one ``input_space`` (pixels or latents);
- ``logit_scale``: unless given, the |weight|-weighted mean of the logit scales of the components
  that have one, and ``None`` when none has (then, as for any RM without a scale, the LRM's own
  ``exp(logit_scale)`` scales the expert's scores: wrapping an RM in ``weighted`` does not change
  LRM training). A weighted sum has no single natural scale; this keeps a mix dominated by
  CLIP-style parts (scale ~100) near their logits.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from ..errors import ConfigError
from .base import RewardModel


class WeightedReward(RewardModel):
    """Weighted sum of registered reward models (differentiable only when all parts are)."""

    name = "weighted"

    def __init__(self, components: dict[str, float],
                 params: dict[str, dict[str, Any]] | None = None,
                 logit_scale: float | None = None) -> None:
        """Build each component ``NAME[:LABEL]`` with ``params[key]`` and weight it."""
        from ..plugins import get_host

        if not components:
            raise ConfigError("reward model 'weighted' needs at least one component, e.g. "
                              "components={'clip-score': 1.0}")
        params = dict(params or {})
        unknown = sorted(set(params) - set(components))
        if unknown:
            raise ConfigError(f"reward model 'weighted': params given for {unknown}, which are not "
                              f"among its components {sorted(components)}")
        models = []
        for key, weight in components.items():
            name = key.split(":", 1)[0]
            models.append((key, get_host().get("reward", name).build(**dict(params.get(key) or {})), weight))
        self._init_parts(models, logit_scale)

    @classmethod
    def from_models(cls, parts: Sequence[tuple[RewardModel, float]],
                    logit_scale: float | None = None) -> "WeightedReward":
        """Combine already built reward models: ``[(rm, weight), ...]``."""
        self = cls.__new__(cls)
        self._init_parts([(rm.name, rm, weight) for rm, weight in parts], logit_scale)
        return self

    def _init_parts(self, models: list[tuple[str, RewardModel, float]],
                    logit_scale: float | None) -> None:
        if not models:
            raise ConfigError("reward model 'weighted' needs at least one component")
        self.parts = []
        for key, rm, weight in models:
            try:
                weight = float(weight)
            except (TypeError, ValueError):
                raise ConfigError(f"reward model 'weighted': the weight of '{key}' must be a "
                                  f"number, got {weight!r}") from None
            self.parts.append((key, rm, weight))
        spaces = {rm.input_space for _, rm, _ in self.parts}
        if len(spaces) > 1:
            detail = ", ".join(f"{key}: {rm.input_space}" for key, rm, _ in self.parts)
            raise ConfigError(f"reward model 'weighted' mixes input spaces ({detail}); all "
                              "components must score pixels, or all latents")
        self.input_space = spaces.pop()  # type: ignore[misc]
        self.differentiable = all(rm.differentiable for _, rm, _ in self.parts)  # type: ignore[misc]
        self.logit_scale = (float(logit_scale) if logit_scale is not None
                            else self.mean_logit_scale(self.parts))

    @staticmethod
    def mean_logit_scale(parts: Sequence[tuple[str, RewardModel, float]]) -> float | None:
        """The |weight|-weighted mean of the logit scales of the parts that have one (``None``
        when none has)."""
        scaled = [(abs(w), float(rm.logit_scale)) for _, rm, w in parts
                  if rm.logit_scale is not None]
        total = sum(w for w, _ in scaled)
        if not scaled or total == 0:
            return None
        return sum(w * scale for w, scale in scaled) / total

    @property
    def weights(self) -> Mapping[str, float]:
        """Component key -> weight."""
        return {key: weight for key, _, weight in self.parts}

    def to(self, device: torch.device | str | None = None,
           dtype: torch.dtype | None = None) -> "WeightedReward":
        """Move every component once."""
        for _, rm, _ in self.parts:
            rm.to(device, dtype)
        return self

    @property
    def device(self) -> torch.device:
        return self.parts[0][1].device

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """``sum_i weight_i * score_i``; each part is called checked, so errors name the part."""
        total = None
        for _, rm, weight in self.parts:
            part = rm(images, prompts).to(images.device, torch.float32) * weight
            total = part if total is None else total + part
        return total
