"""A diffusion-native latent proxy RM, registered as proxy ``lrm-unet``: the teacher's own UNet
encoder reads the latent.

Beyond the paper. RG-LCD's LRM is a latent CLIP trained from scratch; later work (LPO, "Diffusion
Model as a Noise-Aware Latent Reward Model", Zhang et al. 2025) builds the latent RM from the
diffusion model itself, because its encoder already reads latents (at any noise level) and is
text-aligned through cross-attention on the prompt. This proxy does the same with the backbone's
teacher UNet:

- **Image side**: a copy of the teacher's ``conv_in``, timestep embedding, down blocks and mid
  block (initialised from the teacher's weights, ``init_from_teacher``), run at a fixed
  timestep ``unet_timestep`` (0: the latents it scores, the student's ``f_theta`` and the
  candidates, are clean estimates) with cross-attention on the prompt embeddings; the mid
  block's output is pooled and projected (the head: GroupNorm, SiLU, average pooling, linear).
- **Text side**: the same light prompt-embedding tower as ``lrm``
  (:class:`~rewardkit.proxies.lrm.PromptEmbedTextTower`).
- **Score**: the cosine of the two unit-norm embeddings, ``logits = s * exp(logit_scale)``, as
  ``lrm``, so the losses, the online update and ``lrm-pretrain``'s preference stage treat both
  proxies alike. The image embedding depends on the prompt, so there is no prompt-free
  ``encode_latents`` and ``lrm-pretrain``'s contrastive stage does not apply (set
  ``contrastive_steps`` 0; the teacher's encoder is what replaces it).
- **Any latent resolution**, as ``lrm``: the encoder's convolutions and attention take any
  ``h x w`` and the head pools, so a run at another resolution than the teacher's native one
  scores its latents with the same weights.

``trainable`` (what rg-lcd's online update trains): ``"heads"`` (both projections and
``logit_scale``), ``"last"`` (default: the heads, the mid block and the text tower's last layer and
pooling), ``"all"`` (the whole encoder too) or ``"none"``.

Cost: the encoder is roughly half the teacher UNet (about 0.4 B parameters for SD 2.1, held in
the proxy's dtype, fp32 by default), and one proxy evaluation costs about half a teacher UNet
call. It supports UNets without added conditioning (SD 1.x / 2.x); SDXL's ``text_time``
embedding is refused with a clear error.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .lrm import TRAINABLE_CHOICES, PromptEmbedTextTower, TwoTowerProxy

#: UNet config keys that add conditioning this encoder does not provide.
UNSUPPORTED_CONDITIONING = ("addition_embed_type", "class_embed_type", "time_cond_proj_dim",
                            "encoder_hid_dim_type")


def plain_unet_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A diffusers UNet config as a JSON-able dict, without its bookkeeping (``_name_or_path``...)."""
    out = {}
    for key, value in dict(config).items():
        if key.startswith("_"):
            continue
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


class UNetEncoder(nn.Module):
    """``conv_in``, timestep embedding, down blocks and mid block of a diffusers
    ``UNet2DConditionModel`` built from ``unet_config``, with a pooled projection head."""

    def __init__(self, unet_config: Mapping[str, Any], embed_dim: int, timestep: int) -> None:
        super().__init__()
        from diffusers import UNet2DConditionModel

        extra = [k for k in UNSUPPORTED_CONDITIONING if unet_config.get(k) is not None]
        if extra:
            raise ConfigError(
                f"lrm-unet supports UNets without added conditioning (SD 1.x/2.x); this UNet sets "
                f"{', '.join(extra)}; use proxy 'lrm' for it")
        if unet_config.get("mid_block_type") in (None, "UNetMidBlock2DSimpleCrossAttn"):
            raise ConfigError("lrm-unet needs a UNet with a UNetMidBlock2DCrossAttn mid block")
        # Built whole from the config, then the decoder half is dropped: rebuilding the down path
        # by hand would duplicate diffusers' block construction.
        unet = UNet2DConditionModel.from_config(dict(unet_config))
        self.conv_in = unet.conv_in
        self.time_proj = unet.time_proj
        self.time_embedding = unet.time_embedding
        self.down_blocks = unet.down_blocks
        self.mid_block = unet.mid_block
        del unet
        width = int(unet_config["block_out_channels"][-1])
        groups = int(unet_config.get("norm_num_groups") or 32)
        self.timestep = int(timestep)
        self.head = nn.Sequential(nn.GroupNorm(math.gcd(groups, width), width), nn.SiLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(1),
                                  nn.Linear(width, embed_dim, bias=False))

    def forward(self, latents: torch.Tensor, prompt_embeds: torch.Tensor) -> torch.Tensor:
        timesteps = torch.full((latents.shape[0],), self.timestep, device=latents.device)
        emb = self.time_embedding(self.time_proj(timesteps).to(latents.dtype))
        h = self.conv_in(latents)
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                h, _ = block(hidden_states=h, temb=emb, encoder_hidden_states=prompt_embeds)
            else:
                h, _ = block(hidden_states=h, temb=emb)
        h = self.mid_block(h, emb, encoder_hidden_states=prompt_embeds)
        return self.head(h)

    def teacher_state_dict(self, teacher: nn.Module) -> dict[str, torch.Tensor]:
        """The teacher UNet's weights of the modules this encoder copies (the head excluded)."""
        prefixes = ("conv_in.", "time_proj.", "time_embedding.", "down_blocks.", "mid_block.")
        return {k: v for k, v in teacher.state_dict().items() if k.startswith(prefixes)}


class UNetLatentRewardModel(TwoTowerProxy):
    """Diffusion-native LRM: the teacher UNet's encoder reads the latent, with the prompt.

    The image side cross-attends to the prompt embeddings; the score is its cosine with a
    prompt-embedding text tower.

    Parameters (kept in ``self.config`` for ``save_pretrained``/``from_pretrained``):

    - ``unet_config``: the teacher UNet's diffusers config (filled in from the backbone by
      ``build_proxy``; stored so a saved proxy rebuilds without the teacher).
    - ``text_dim``: width of the prompt embeddings (the UNet's ``cross_attention_dim``).
    - ``latent_channels``: checked against the UNet's ``in_channels``.
    - ``embed_dim``, ``text_width``, ``text_depth``, ``text_heads``: as for ``lrm``.
    - ``unet_timestep``: the timestep the encoder runs at (0 by default).
    - ``init_from_teacher``: copy the teacher's encoder weights into a new proxy (default); off,
      the encoder starts from random weights (an ablation).
    - ``trainable``, ``logit_scale_init``: as for ``lrm``.
    """

    name = "lrm-unet"

    def __init__(self, unet_config: Mapping[str, Any] | None = None, latent_channels: int = 4,
                 text_dim: int = 1024, embed_dim: int = 256, text_width: int = 256,
                 text_depth: int = 1, text_heads: int = 4, unet_timestep: int = 0,
                 init_from_teacher: bool = True, trainable: str = "last",
                 logit_scale_init: float = math.log(1 / 0.07)) -> None:
        super().__init__()
        if not unet_config:
            raise ConfigError("lrm-unet needs the teacher's unet_config; build it with "
                              "rewardkit.proxies.factory.build_proxy(name, params, backbone), which "
                              "fills it in from the backbone")
        if trainable not in TRAINABLE_CHOICES:
            raise ConfigError(
                f"lrm-unet trainable must be one of {TRAINABLE_CHOICES}, got {trainable!r}")
        unet_config = plain_unet_config(unet_config)
        if int(unet_config.get("in_channels", latent_channels)) != latent_channels:
            raise ConfigError(f"lrm-unet: the UNet reads {unet_config['in_channels']}-channel "
                              f"latents but latent_channels is {latent_channels}")
        if int(unet_config.get("cross_attention_dim", text_dim)) != text_dim:
            raise ConfigError(f"lrm-unet: the UNet attends to {unet_config['cross_attention_dim']}"
                              f"-wide prompt embeddings but text_dim is {text_dim}")
        if unet_timestep < 0:
            raise ConfigError(f"lrm-unet unet_timestep must be >= 0, got {unet_timestep}")
        self.config = dict(
            unet_config=unet_config, latent_channels=latent_channels, text_dim=text_dim,
            embed_dim=embed_dim, text_width=text_width, text_depth=text_depth,
            text_heads=text_heads, unet_timestep=int(unet_timestep),
            init_from_teacher=bool(init_from_teacher), trainable=trainable,
            logit_scale_init=float(logit_scale_init))
        self.latent_channels = latent_channels
        self.text_dim = text_dim
        self.trainable = trainable
        self.image_tower = UNetEncoder(unet_config, embed_dim, unet_timestep)
        self.text_tower = PromptEmbedTextTower(text_dim, text_width, text_depth, text_heads,
                                               embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(float(logit_scale_init)))
        self.freeze()
        self.eval()

    # -------------------------------------------------------------- building

    @classmethod
    def backbone_params(cls, backbone: Any) -> dict[str, Any]:
        """What this proxy takes from the backbone: the teacher UNet's config and the sizes."""
        return {"unet_config": plain_unet_config(backbone.unet.config),
                "latent_channels": backbone.latent_channels, "text_dim": backbone.text_embed_dim}

    def initialise_from_backbone(self, backbone: Any) -> None:
        """Copy the teacher's encoder weights (a new proxy with ``init_from_teacher``)."""
        if not self.config["init_from_teacher"]:
            return
        state = self.image_tower.teacher_state_dict(backbone.unet)
        missing, unexpected = self.image_tower.load_state_dict(state, strict=False)
        not_head = [k for k in missing if not k.startswith("head.")]
        if not_head or unexpected:
            raise ConfigError(f"lrm-unet: the teacher UNet does not match its config "
                              f"(missing {not_head[:3]}, unexpected {list(unexpected)[:3]})")

    # -------------------------------------------------------------- scoring

    def encode_prompts(self, prompt_embeds: torch.Tensor) -> torch.Tensor:
        """Unit-norm text embeddings ``[B, embed_dim]`` of prompt embeddings ``[B, L, D]``."""
        self._check_prompts(prompt_embeds)
        return F.normalize(self.text_tower(prompt_embeds.to(self.logit_scale.dtype)), dim=-1)

    def encode_latents_for(self, latents: torch.Tensor, prompt_embeds: torch.Tensor) -> torch.Tensor:
        """Unit-norm image embeddings ``[B, embed_dim]`` of scaled latents read *with* their
        prompts (the encoder's cross-attention)."""
        if latents.ndim != 4 or latents.shape[1] != self.latent_channels:
            raise ConfigError(
                f"lrm-unet expects latents [B, {self.latent_channels}, h, w], got "
                f"{tuple(latents.shape)}")
        self._check_prompts(prompt_embeds)
        dtype = self.logit_scale.dtype
        # Contiguous: see LatentRewardModel.encode_latents (GroupNorm on channels_last).
        h = self.image_tower(latents.to(dtype).contiguous(), prompt_embeds.to(dtype))
        return F.normalize(h, dim=-1)

    def forward(self, latents: torch.Tensor, prompt_embeds: torch.Tensor) -> torch.Tensor:
        """Cosine scores ``[B]``."""
        if latents.shape[0] != prompt_embeds.shape[0]:
            raise ConfigError(
                f"lrm-unet got {latents.shape[0]} latents but {prompt_embeds.shape[0]} prompt "
                f"embeddings; pass one prompt embedding per latent")
        return (self.encode_latents_for(latents, prompt_embeds)
                * self.encode_prompts(prompt_embeds)).sum(-1)

    def _check_prompts(self, prompt_embeds: torch.Tensor) -> None:
        if prompt_embeds.ndim != 3 or prompt_embeds.shape[-1] != self.text_dim:
            raise ConfigError(
                f"lrm-unet expects prompt embeddings [B, L, {self.text_dim}], got "
                f"{tuple(prompt_embeds.shape)}")

    def last_image_parameters(self) -> Iterator[nn.Parameter]:
        """The mid block (part of ``trainable="last"``)."""
        return self.image_tower.mid_block.parameters()
