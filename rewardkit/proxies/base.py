"""The proxy-reward-model contract (the paper's latent proxy RM, LRM).

A proxy scores *latents* against prompt embeddings, so the student can maximise it without
decoding. It is trained online to agree with an expert RM's pairwise preferences; it is frozen
while the student steps and trained in a separate step with its own optimiser.
"""

from __future__ import annotations

import json
from abc import abstractmethod
from pathlib import Path
from typing import ClassVar, Iterator

import torch
from torch import nn

CONFIG_NAME = "proxy_config.json"
WEIGHTS_NAME = "proxy.safetensors"


class ProxyRewardModel(nn.Module):
    """A trainable latent-space reward model.

    Subclasses implement :meth:`forward` (cosine-like scores) and :meth:`trainable_parameters`,
    and keep their constructor keyword arguments in ``self.config`` (a JSON-able dict) so
    :meth:`save_pretrained` / :meth:`from_pretrained` round-trip.
    """

    name: ClassVar[str] = "proxy"
    config: dict

    @abstractmethod
    def forward(self, latents: torch.Tensor, prompt_embeds: torch.Tensor) -> torch.Tensor:
        """Scores ``[B]`` for scaled latents ``[B, C, h, w]`` and prompt embeddings ``[B, L, D]``."""

    def score(self, latents: torch.Tensor, prompt_embeds: torch.Tensor) -> torch.Tensor:
        """The reward the student maximises (same as calling the module)."""
        return self(latents, prompt_embeds)

    def logit_scale_value(self) -> torch.Tensor:
        """Multiplier turning scores into preference logits (1 unless the proxy learns one)."""
        return torch.ones((), device=next(self.parameters()).device)

    def logits(self, latents: torch.Tensor, prompt_embeds: torch.Tensor) -> torch.Tensor:
        """Preference logits ``[B]``: scores times the learned logit scale."""
        return self(latents, prompt_embeds) * self.logit_scale_value()

    @abstractmethod
    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters the online update trains (the configured unlocked layers)."""

    # -------------------------------------------------------------- building for a backbone

    @classmethod
    def backbone_params(cls, backbone) -> dict:
        """Constructor values a *new* proxy takes from the backbone unless the user sets them
        (:func:`~rewardkit.proxies.factory.build_proxy`); by default the latent channels and the
        prompt-embedding width, under the names ``latent_channels`` and ``text_dim``."""
        return {"latent_channels": backbone.latent_channels, "text_dim": backbone.text_embed_dim}

    def initialise_from_backbone(self, backbone) -> None:
        """Called once on a *new* proxy, never on a loaded one: a proxy built from the teacher
        (``lrm-unet``) copies its weights here. The default does nothing."""

    def freeze(self) -> "ProxyRewardModel":
        """Freeze every parameter (for the student step)."""
        self.requires_grad_(False)
        return self

    def unfreeze(self) -> "ProxyRewardModel":
        """Make exactly :meth:`trainable_parameters` trainable (for the proxy step)."""
        self.requires_grad_(False)
        for p in self.trainable_parameters():
            p.requires_grad_(True)
        return self

    # -------------------------------------------------------------- persistence

    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``proxy_config.json`` and ``proxy.safetensors`` into ``directory``."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_NAME).write_text(json.dumps({"name": self.name, **self.config}, indent=2))
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_NAME))

    @classmethod
    def from_pretrained(cls, directory: str | Path, **overrides) -> "ProxyRewardModel":
        """Build from ``save_pretrained`` output (``overrides`` change non-shape settings)."""
        from safetensors.torch import load_file

        from ..errors import ConfigError

        directory = Path(directory)
        config_path = directory / CONFIG_NAME
        if not config_path.is_file():
            raise ConfigError(f"no saved proxy model in '{directory}' (missing {CONFIG_NAME})")
        config = json.loads(config_path.read_text())
        config.pop("name", None)
        config.update(overrides)
        model = cls(**config)
        model.load_state_dict(load_file(str(directory / WEIGHTS_NAME)))
        return model
