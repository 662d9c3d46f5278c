"""The models of a run as configs, built without weights: on the meta device to count their
parameters, or under fake tensors to measure their activations.

A :class:`ModelSpec` is a kind (``unet``, ``vae``, ``clip-text``, ``clip``, ``imagereward``,
``lrm``) and the config its library builds it from (a diffusers or transformers ``config.json``,
or the LRM's keyword arguments). :func:`build` makes the module from it in whatever device or
tensor mode is active; :func:`parameter_count` counts on the meta device (no memory, well under a
second for an SDXL UNet).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

#: Config keys that change no tensor a model holds or computes (names, versions, scaling
#: constants, the default sample size): left out of a spec's fingerprint.
_NOT_STRUCTURAL = {"sample_size", "scaling_factor", "shift_factor", "force_upcast",
                   "latents_mean", "latents_std", "architectures", "transformers_version",
                   "torch_dtype", "dtype", "name_or_path", "model_type",
                   "bos_token_id", "eos_token_id", "pad_token_id", "use_quant_conv",
                   "use_post_quant_conv", "mid_block_add_attention"}


@dataclass(frozen=True)
class ModelSpec:
    """A model by its kind and its config (no weights)."""

    kind: str
    config: dict = field(hash=False)
    #: Where the config came from (a hub id, a folder, "known"), for the plan's notes.
    source: str = ""

    def fingerprint(self) -> str:
        """A short hash of the config's structural fields (two specs with the same fingerprint
        keep the same activations)."""
        def clean(value: Any) -> Any:
            if isinstance(value, dict):
                return {k: clean(v) for k, v in sorted(value.items())
                        if not k.startswith("_") and k not in _NOT_STRUCTURAL}
            if isinstance(value, (list, tuple)):
                return [clean(v) for v in value]
            return value

        text = json.dumps([self.kind, clean(self.config)], sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def build(spec: ModelSpec, **changes: Any) -> nn.Module:
    """The module of ``spec`` (``changes`` override config fields, e.g. ``time_cond_proj_dim``),
    built in the active device context / tensor mode, in the default dtype."""
    config = {**spec.config, **changes}
    kind = spec.kind
    if kind == "unet":
        from diffusers import UNet2DConditionModel

        return UNet2DConditionModel.from_config(_diffusers_config(config))
    if kind == "vae":
        from diffusers import AutoencoderKL

        return AutoencoderKL.from_config(_diffusers_config(config))
    if kind in ("clip-text", "clip-text-projection"):
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

        cls = CLIPTextModelWithProjection if kind == "clip-text-projection" else CLIPTextModel
        return cls(CLIPTextConfig(**_hf_config(config)))
    if kind == "clip":
        from transformers import CLIPConfig, CLIPModel

        return CLIPModel(CLIPConfig(**_hf_config(config)))
    if kind == "imagereward":
        from rewardkit_imagereward.model import ImageRewardModel  # the plugin's own modules

        return ImageRewardModel()
    if kind == "lrm":
        from ..proxies.lrm import LatentRewardModel

        return LatentRewardModel(**config)
    raise ValueError(f"unknown model kind {kind!r}")


def _diffusers_config(config: dict) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def _hf_config(config: dict) -> dict:
    drop = {"architectures", "transformers_version", "torch_dtype", "dtype", "model_type"}
    return {k: v for k, v in config.items() if not k.startswith("_") and k not in drop}


def on_meta(spec: ModelSpec, **changes: Any) -> nn.Module:
    """``spec``'s module on the meta device (shapes only)."""
    with torch.device("meta"):
        return build(spec, **changes)


def parameter_count(spec: ModelSpec, **changes: Any) -> int:
    """Parameters of ``spec``'s module, counted on the meta device."""
    return sum(p.numel() for p in on_meta(spec, **changes).parameters())


def parameter_shapes(module: nn.Module, trainable_only: bool = False) -> list[int]:
    """Element counts of ``module``'s parameters (of the trainable ones when asked)."""
    return [p.numel() for p in module.parameters() if p.requires_grad or not trainable_only]


def materialise(module: nn.Module) -> nn.Module:
    """Replace ``module``'s meta parameters and buffers with empty ones made in the active
    device / tensor mode (tied tensors stay tied); returns ``module``."""
    made: dict[int, torch.Tensor] = {}
    for sub in module.modules():
        for table, wrap in ((sub._parameters, True), (sub._buffers, False)):
            for name, tensor in list(table.items()):
                if tensor is None:
                    continue
                if id(tensor) not in made:
                    fresh = torch.zeros(tensor.shape, dtype=tensor.dtype)
                    made[id(tensor)] = (nn.Parameter(fresh, requires_grad=tensor.requires_grad)
                                        if wrap else fresh)
                table[name] = made[id(tensor)]
    return module


def build_with_lora(spec: ModelSpec, lora: tuple, **changes: Any) -> nn.Module:
    """``spec``'s UNet with LoRA adapters (:func:`add_lora`), built in the active device / mode.
    Under fake tensors, where peft's moves of its new layers cannot run, it is built on the meta
    device and then materialised as fake tensors."""
    from torch._guards import detect_fake_mode
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    if detect_fake_mode() is None:
        return add_lora(build(spec, **changes), *lora)
    dtype = torch.get_default_dtype()
    with unset_fake_temporarily(), torch.device("meta"):
        module = add_lora(build(spec, **changes), *lora)
    return materialise(nn.Module.to(module, dtype))  # not diffusers' .to, which warns


def add_lora(unet: nn.Module, rank: int, alpha: int | None,
             target_modules: Sequence[str] | None, backbone: str = "stable-diffusion") -> nn.Module:
    """LoRA adapters exactly as the ``backbone``'s own ``add_lora`` adds them (only the
    adapters and the guidance embedding trainable). The backbone is looked up through the host;
    its ``add_lora`` reads nothing of the loaded teacher, so it runs without one."""
    from ..plugins import get_host

    backbone_class = get_host().get("backbone", backbone).factory
    return backbone_class.add_lora(None, unet, rank=rank, alpha=alpha,
                                   target_modules=target_modules)


__all__ = ["ModelSpec", "add_lora", "build", "build_with_lora", "materialise", "on_meta",
           "parameter_count", "parameter_shapes"]
