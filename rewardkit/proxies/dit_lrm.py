"""A diffusion-native latent proxy RM for MMDiT teachers, registered as proxy ``lrm-dit``: the
first transformer blocks of the teacher read the latent together with the prompt.

The transformer counterpart of ``lrm-unet`` (:mod:`rewardkit.proxies.unet_lrm`), after LPO and the
DiNa-LRM latent reward model built on SD3.5-Medium: a diffusion model's own first blocks already
read latents (at any noise level, through the timestep embedding) and are text-aligned (joint
attention with the prompt tokens), so they make a better start for a latent RM than a tower
trained from scratch. For an SD 3 / 3.5 teacher (``stable-diffusion-3`` backbone):

- **Image side**: copies of the teacher's patch embedding, timestep-and-pooled-text embedding,
  caption projection and its first ``num_blocks`` joint transformer blocks (initialised from the
  teacher, ``init_from_teacher``), run at a fixed model time ``dit_timestep`` (0: the latents it
  scores are clean estimates) with the prompt tokens and pooled projections; the image tokens
  are layer-normed, averaged and projected (the head).
- **Text side**: the light prompt-embedding tower of ``lrm``
  (:class:`~rewardkit.proxies.lrm.PromptEmbedTextTower`).
- **Score**: the cosine of the two unit-norm embeddings, ``logits = s * exp(logit_scale)``, as
  ``lrm`` (so the losses, the online update and the preference stage of ``lrm-pretrain`` treat it
  alike; like ``lrm-unet`` it has no prompt-free ``encode_latents``, so ``lrm-pretrain``'s
  contrastive stage does not apply).

It reads ``backbone.proxy_text(cond)``: SD3's prompt tokens followed by the pooled projections,
zero-padded into ``ceil(pooled_dim / text_dim)`` extra tokens, which it splits back. Any latent
side up to the teacher's ``pos_embed_max_size`` patches works (the position embedding is cropped,
as the teacher does).

``trainable``: ``"heads"``, ``"last"`` (default: heads, the last copied block and the text
tower's last layer), ``"all"`` or ``"none"``, as for ``lrm``.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .lrm import TRAINABLE_CHOICES, PromptEmbedTextTower, TwoTowerProxy
from .unet_lrm import plain_unet_config


class DiTEncoder(nn.Module):
    """Patch embedding, time/text embedding, caption projection and the first ``num_blocks``
    joint blocks of a diffusers ``SD3Transformer2DModel`` built from ``config``, with a pooled
    projection head."""

    def __init__(self, config: Mapping[str, Any], num_blocks: int, embed_dim: int,
                 timestep: float) -> None:
        super().__init__()
        from diffusers import SD3Transformer2DModel

        # One block more than kept: the last block of an SD3 transformer is context-pre-only,
        # unlike the teacher's block at that index, so it is built and dropped.
        model = SD3Transformer2DModel.from_config({**dict(config), "num_layers": num_blocks + 1})
        self.pos_embed = model.pos_embed
        self.time_text_embed = model.time_text_embed
        self.context_embedder = model.context_embedder
        self.transformer_blocks = nn.ModuleList(model.transformer_blocks[:num_blocks])
        del model
        width = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
        self.timestep = float(timestep)
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, embed_dim, bias=False))

    def forward(self, latents: torch.Tensor, tokens: torch.Tensor,
                pooled: torch.Tensor) -> torch.Tensor:
        timesteps = torch.full((latents.shape[0],), self.timestep, device=latents.device,
                               dtype=latents.dtype)
        hidden = self.pos_embed(latents)
        temb = self.time_text_embed(timesteps, pooled)
        context = self.context_embedder(tokens)
        for block in self.transformer_blocks:
            context, hidden = block(hidden_states=hidden, encoder_hidden_states=context, temb=temb)
        return self.head[1](self.head[0](hidden).mean(1))

    def teacher_state_dict(self, teacher: nn.Module) -> dict[str, torch.Tensor]:
        """The teacher transformer's weights of the modules this encoder copies (not the head)."""
        keep = ("pos_embed.", "time_text_embed.", "context_embedder.")
        blocks = len(self.transformer_blocks)
        out = {}
        for key, value in teacher.state_dict().items():
            if key.startswith(keep):
                out[key] = value
            elif key.startswith("transformer_blocks.") and int(key.split(".")[1]) < blocks:
                out[key] = value
        return out


class DiTLatentRewardModel(TwoTowerProxy):
    """Diffusion-native LRM for MMDiT teachers: the teacher's first joint blocks read the latent
    with the prompt; the score is its cosine with a prompt-embedding text tower.

    Parameters (kept in ``self.config`` for ``save_pretrained``/``from_pretrained``):

    - ``transformer_config``: the teacher transformer's diffusers config (filled in from the
      backbone by ``build_proxy``; stored so a saved proxy rebuilds without the teacher).
    - ``latent_channels``, ``text_dim`` (the prompt tokens' width), ``pooled_dim`` (the pooled
      projections' width): checked against the config.
    - ``num_blocks``: joint blocks copied (default 4, at most the teacher's count minus one).
    - ``embed_dim``, ``text_width``, ``text_depth``, ``text_heads``: as for ``lrm``.
    - ``dit_timestep``: the model time ``1000 s`` the blocks run at (0 by default).
    - ``init_from_teacher``, ``trainable``, ``logit_scale_init``: as for ``lrm-unet``.
    """

    name = "lrm-dit"

    def __init__(self, transformer_config: Mapping[str, Any] | None = None,
                 latent_channels: int = 16, text_dim: int = 4096, pooled_dim: int = 2048,
                 num_blocks: int = 4, embed_dim: int = 256, text_width: int = 256,
                 text_depth: int = 1, text_heads: int = 4, dit_timestep: float = 0.0,
                 init_from_teacher: bool = True, trainable: str = "last",
                 logit_scale_init: float = math.log(1 / 0.07)) -> None:
        super().__init__()
        if not transformer_config:
            raise ConfigError("lrm-dit needs the teacher's transformer_config; build it with "
                              "rewardkit.proxies.factory.build_proxy(name, params, backbone) on "
                              "a transformer backbone (stable-diffusion-3), which fills it in")
        if trainable not in TRAINABLE_CHOICES:
            raise ConfigError(
                f"lrm-dit trainable must be one of {TRAINABLE_CHOICES}, got {trainable!r}")
        config = plain_unet_config(transformer_config)
        checks = (("in_channels", latent_channels, "latent_channels"),
                  ("joint_attention_dim", text_dim, "text_dim"),
                  ("pooled_projection_dim", pooled_dim, "pooled_dim"))
        for key, value, name in checks:
            if int(config.get(key, value)) != value:
                raise ConfigError(f"lrm-dit: the transformer's {key} is {config[key]} but {name} "
                                  f"is {value}")
        layers = int(config.get("num_layers", num_blocks + 1))
        if not 1 <= num_blocks < layers:
            raise ConfigError(f"lrm-dit num_blocks must be between 1 and {layers - 1} (the "
                              f"teacher has {layers} joint blocks), got {num_blocks}")
        if dit_timestep < 0:
            raise ConfigError(f"lrm-dit dit_timestep must be >= 0, got {dit_timestep}")
        self.config = dict(
            transformer_config=config, latent_channels=latent_channels, text_dim=text_dim,
            pooled_dim=pooled_dim, num_blocks=int(num_blocks), embed_dim=embed_dim,
            text_width=text_width, text_depth=text_depth, text_heads=text_heads,
            dit_timestep=float(dit_timestep), init_from_teacher=bool(init_from_teacher),
            trainable=trainable, logit_scale_init=float(logit_scale_init))
        self.latent_channels, self.text_dim, self.pooled_dim = latent_channels, text_dim, pooled_dim
        self.pooled_tokens = -(-pooled_dim // text_dim)
        self.trainable = trainable
        self.image_tower = DiTEncoder(config, num_blocks, embed_dim, dit_timestep)
        self.text_tower = PromptEmbedTextTower(text_dim, text_width, text_depth, text_heads,
                                               embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(float(logit_scale_init)))
        self.freeze()
        self.eval()

    @classmethod
    def backbone_params(cls, backbone: Any) -> dict[str, Any]:
        """The teacher transformer's config and the sizes (a backbone without a transformer,
        such as SD 1.x/2.x or SDXL, is refused)."""
        transformer = getattr(backbone, "transformer", None)
        if transformer is None:
            raise ConfigError(f"lrm-dit reads an MMDiT teacher's transformer; the "
                              f"'{getattr(backbone, 'name', backbone)}' backbone has none (use "
                              "lrm-unet or lrm for UNet teachers)")
        return {"transformer_config": plain_unet_config(transformer.config),
                "latent_channels": backbone.latent_channels, "text_dim": backbone.text_embed_dim,
                "pooled_dim": int(transformer.config.pooled_projection_dim)}

    def initialise_from_backbone(self, backbone: Any) -> None:
        """Copy the teacher's first blocks (a new proxy with ``init_from_teacher``)."""
        if not self.config["init_from_teacher"]:
            return
        state = self.image_tower.teacher_state_dict(backbone.transformer)
        missing, unexpected = self.image_tower.load_state_dict(state, strict=False)
        not_head = [k for k in missing if not k.startswith("head.")]
        if not_head or unexpected:
            raise ConfigError(f"lrm-dit: the teacher transformer does not match its config "
                              f"(missing {not_head[:3]}, unexpected {list(unexpected)[:3]})")

    def split_text(self, prompt_embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens, pooled)`` from ``backbone.proxy_text``'s tensor (tokens, then the pooled
        projections padded into :attr:`pooled_tokens` tokens)."""
        if prompt_embeds.ndim != 3 or prompt_embeds.shape[-1] != self.text_dim:
            raise ConfigError(f"lrm-dit expects prompt embeddings [B, L, {self.text_dim}], got "
                              f"{tuple(prompt_embeds.shape)}")
        tokens = prompt_embeds[:, :-self.pooled_tokens]
        pooled = prompt_embeds[:, -self.pooled_tokens:].reshape(prompt_embeds.shape[0], -1)
        return tokens, pooled[:, :self.pooled_dim]

    def encode_prompts(self, prompt_embeds: torch.Tensor) -> torch.Tensor:
        """Unit-norm text embeddings ``[B, embed_dim]``."""
        return F.normalize(self.text_tower(prompt_embeds.to(self.logit_scale.dtype)), dim=-1)

    def encode_latents_for(self, latents: torch.Tensor, prompt_embeds: torch.Tensor) -> torch.Tensor:
        """Unit-norm image embeddings ``[B, embed_dim]`` of scaled latents read with their prompts."""
        if latents.ndim != 4 or latents.shape[1] != self.latent_channels:
            raise ConfigError(f"lrm-dit expects latents [B, {self.latent_channels}, h, w], got "
                              f"{tuple(latents.shape)}")
        dtype = self.logit_scale.dtype
        tokens, pooled = self.split_text(prompt_embeds.to(dtype))
        return F.normalize(self.image_tower(latents.to(dtype), tokens, pooled), dim=-1)

    def forward(self, latents: torch.Tensor, prompt_embeds: torch.Tensor) -> torch.Tensor:
        """Cosine scores ``[B]``."""
        if latents.shape[0] != prompt_embeds.shape[0]:
            raise ConfigError(f"lrm-dit got {latents.shape[0]} latents but "
                              f"{prompt_embeds.shape[0]} prompt embeddings; pass one per latent")
        return (self.encode_latents_for(latents, prompt_embeds)
                * self.encode_prompts(prompt_embeds)).sum(-1)

    def last_image_parameters(self) -> Iterator[nn.Parameter]:
        """The last copied joint block (part of ``trainable="last"``)."""
        return self.image_tower.transformer_blocks[-1].parameters()


__all__ = ["DiTLatentRewardModel", "DiTEncoder"]
