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
        """Build from ``save_pretrained`` output (``overrides`` change non-shape settings).

        Reads JSON and safetensors only; a damaged or mismatched folder (a truncated config,
        weights of another proxy, only a pickled ``.bin``) raises one ConfigError naming it."""
        from safetensors.torch import load_file

        from ..errors import ConfigError

        directory = Path(directory)
        config_path = directory / CONFIG_NAME
        if not config_path.is_file():
            raise ConfigError(f"no saved proxy model in '{directory}' (missing {CONFIG_NAME})")
        try:
            config = json.loads(config_path.read_text())
            if not isinstance(config, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as error:
            raise ConfigError(f"'{config_path}' is unreadable (truncated or not JSON: {error}); "
                              "restore the proxy folder or train the proxy again") from None
        config.pop("name", None)
        config.update(overrides)
        try:
            model = cls(**config)
        except TypeError as error:
            raise ConfigError(f"'{config_path}' does not describe a {cls.name} proxy ({error}); "
                              "was it saved by another proxy?") from None
        weights = directory / WEIGHTS_NAME
        if not weights.is_file():
            pickled = sorted(p.name for p in directory.iterdir()
                             if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl"))
            if pickled:
                raise ConfigError(f"proxy folder '{directory}' has no {WEIGHTS_NAME}, only "
                                  f"{', '.join(pickled)}: pickled weights, which rewardkit "
                                  "refuses to load because unpickling can run code; convert "
                                  "them to safetensors with a tool you trust")
            raise ConfigError(f"proxy folder '{directory}' has no {WEIGHTS_NAME}; restore it or "
                              "train the proxy again")
        try:
            state = load_file(str(weights))
        except Exception as error:  # safetensors' own error: a truncated file, a renamed pickle
            raise ConfigError(f"'{weights}' is not a readable safetensors file (truncated, or "
                              f"another format under that name: {type(error).__name__}); "
                              "restore the proxy folder or train the proxy again") from None
        mismatch = state_mismatch(model, state)
        if mismatch:
            raise ConfigError(f"'{weights}' does not fit the proxy its {CONFIG_NAME} describes "
                              f"({mismatch}); the config and the weights come from different "
                              "proxies: restore the folder as save_pretrained wrote it")
        model.load_state_dict(state)
        return model


def state_mismatch(module: nn.Module, state: dict[str, torch.Tensor]) -> str:
    """How ``state`` fails to fit ``module`` in a few words (missing, unexpected and reshaped
    tensors, with the first of each), or ``""`` when it fits exactly."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    reshaped = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    parts = []
    if missing:
        parts.append(f"{len(missing)} tensors missing, e.g. {missing[0]}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected, e.g. {unexpected[0]}")
    if reshaped:
        key = reshaped[0]
        parts.append(f"{len(reshaped)} of another shape, e.g. {key} "
                     f"{list(state[key].shape)} instead of {list(own[key].shape)}")
    return "; ".join(parts)
