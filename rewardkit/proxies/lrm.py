"""The latent proxy reward model (LRM) of RG-LCD, registered as proxy ``lrm``.

An LRM scores a *latent* against a prompt: ``s(z, c) = <normalize(img(z)), normalize(txt(c))>``,
a cosine in ``[-1, 1]``, and ``logits = s * exp(logit_scale)`` for the pairwise preference losses
(:mod:`rewardkit.proxies.losses`). The student maximises ``s`` on its single-step prediction
``f_theta`` without decoding; the LRM itself is trained online to agree with an expert RM
(:mod:`rewardkit.proxies.update`).

Two deliberate departures from the reference implementation (a LatentCLIP with a 1B-parameter
OpenCLIP ViT-H-14 text tower and a fixed 64x64 latent grid):

- **Any latent resolution.** The default ``image_tower="conv"`` is a small residual conv net that
  ends in adaptive average pooling, so 8x8, 64x64 and 96x96 latents all work with the same
  weights. ``image_tower="vit"`` is a small ViT whose position embeddings are bicubically
  interpolated to the input's patch grid (the reference's fixed-length embedding only fits
  512-px images).
- **No text encoder of its own.** The text tower reads the backbone's *frozen prompt
  embeddings* ``[B, L, D]`` (the same tensor the UNet is conditioned on), then a few transformer
  layers, attention pooling and a projection. The backbone's text encoder already turned the
  tokens into contextual embeddings, so a second copy of a large text encoder would add memory
  and a tokenizer dependency for little gain; the light text tower is enough to learn which
  image features a prompt asks for. Position information is already inside those contextual
  embeddings, so the tower adds no position embedding and accepts any sequence length ``L``.

Inputs are *scaled* latents (``vae_latent * scaling_factor``, roughly unit variance: what the
training loop holds), not the reference's unscaled ones.

``trainable`` picks the layers the online update trains (the rest stay frozen, every step):

- ``"all"``: every parameter.
- ``"heads"``: the two output heads (final norm + projection of each tower) and ``logit_scale``.
- ``"last"`` (default): ``"heads"`` plus the last image block, the last text block and the text
  attention pooling, mirroring the reference's intended partial unlock.
- ``"none"``: nothing (a static proxy: a pretrained LRM used only as a latent reward).
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .base import ProxyRewardModel

TRAINABLE_CHOICES = ("all", "heads", "last", "none")
IMAGE_TOWERS = ("conv", "vit")
MAX_LOGIT_SCALE = 100.0  # CLIP's clamp of exp(logit_scale)


# ---------------------------------------------------------------- image towers


class ResidualBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with a skip connection (resolution and width preserved)."""

    def __init__(self, width: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, width)
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return x + h


class ConvImageTower(nn.Module):
    """Residual conv net over latents; stride-2 between stages; adaptive average pooling.

    :attr:`blocks` is the flat list of residual blocks (``blocks[-1]`` is the "last block");
    ``head`` is the final norm + projection to ``embed_dim``.
    """

    def __init__(self, in_channels: int, widths: Sequence[int], blocks_per_stage: int,
                 embed_dim: int) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        if not widths or any(w <= 0 for w in widths):
            raise ConfigError(f"LRM image_widths must be positive integers, got {widths}")
        if blocks_per_stage < 1:
            raise ConfigError(f"LRM blocks_per_stage must be >= 1, got {blocks_per_stage}")
        groups = [math.gcd(w, 32) for w in widths]
        self.stem = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.stages = nn.ModuleList()
        previous = widths[0]
        for index, (width, group) in enumerate(zip(widths, groups)):
            stage: list[nn.Module] = []
            if index > 0:  # downsample and widen
                stage.append(nn.Conv2d(previous, width, 3, stride=2, padding=1))
            for _ in range(blocks_per_stage):
                stage.append(ResidualBlock(width, group))
            self.stages.append(nn.Sequential(*stage))
            previous = width
        # Adaptive pooling after the final norm: any latent resolution gives one vector.
        self.head = nn.Sequential(nn.GroupNorm(groups[-1], previous), nn.SiLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(1),
                                  nn.Linear(previous, embed_dim, bias=False))

    @property
    def blocks(self) -> list[ResidualBlock]:
        """The residual blocks of all stages, in order."""
        return [m for stage in self.stages for m in stage if isinstance(m, ResidualBlock)]

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        h = self.stem(latents)
        for stage in self.stages:
            h = stage(h)
        return self.head(h)

    def last_parameters(self) -> Iterator[nn.Parameter]:
        """The last residual block (the "last image block")."""
        yield from self.blocks[-1].parameters()


class ViTImageTower(nn.Module):
    """A small ViT over latent patches with interpolated position embeddings and a CLS token."""

    def __init__(self, in_channels: int, width: int, depth: int, heads: int, patch_size: int,
                 grid_size: int, embed_dim: int) -> None:
        super().__init__()
        if depth < 1 or width % heads != 0:
            raise ConfigError(
                f"LRM vit needs image_depth >= 1 and vit_width divisible by vit_heads; "
                f"got depth={depth}, width={width}, heads={heads}")
        self.patch_size = patch_size
        self.grid_size = grid_size
        self.patch_embed = nn.Conv2d(in_channels, width, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.randn(1, 1, width) * width ** -0.5)
        self.pos_embed = nn.Parameter(torch.randn(1, grid_size * grid_size, width) * 0.02)
        self.cls_pos = nn.Parameter(torch.zeros(1, 1, width))
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=True)
            for _ in range(depth))
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, embed_dim, bias=False))

    def position_embedding(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """The ``[1, grid_h*grid_w, width]`` position embedding, interpolated if needed."""
        if (grid_h, grid_w) == (self.grid_size, self.grid_size):
            return self.pos_embed
        width = self.pos_embed.shape[-1]
        grid = self.pos_embed.reshape(1, self.grid_size, self.grid_size, width).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(grid_h, grid_w), mode="bicubic", align_corners=False)
        return grid.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, width)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        pad_h, pad_w = (-latents.shape[-2]) % p, (-latents.shape[-1]) % p
        if pad_h or pad_w:
            latents = F.pad(latents, (0, pad_w, 0, pad_h))
        tokens = self.patch_embed(latents)
        grid_h, grid_w = tokens.shape[-2:]
        tokens = tokens.flatten(2).transpose(1, 2) + self.position_embedding(grid_h, grid_w)
        cls = (self.cls_token + self.cls_pos).expand(tokens.shape[0], -1, -1)
        h = torch.cat([cls, tokens], dim=1)
        for block in self.blocks:
            h = block(h)
        return self.head(h[:, 0])

    def last_parameters(self) -> Iterator[nn.Parameter]:
        """The last transformer block (the "last image block")."""
        yield from self.blocks[-1].parameters()


# ---------------------------------------------------------------- text tower


class AttentionPool(nn.Module):
    """One learned query attending over the token sequence."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(1, 1, width) * width ** -0.5)
        self.attention = nn.MultiheadAttention(width, heads, batch_first=True)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        query = self.query.expand(tokens.shape[0], -1, -1)
        pooled, _ = self.attention(query, tokens, tokens, need_weights=False)
        return pooled[:, 0]


class PromptEmbedTextTower(nn.Module):
    """Projection of frozen prompt embeddings, ``depth`` transformer layers, attention pooling."""

    def __init__(self, text_dim: int, width: int, depth: int, heads: int, embed_dim: int) -> None:
        super().__init__()
        if depth < 0 or width % heads != 0:
            raise ConfigError(
                f"LRM text tower needs text_depth >= 0 and text_width divisible by text_heads; "
                f"got depth={depth}, width={width}, heads={heads}")
        self.input_norm = nn.LayerNorm(text_dim)
        self.input_proj = nn.Linear(text_dim, width)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=True)
            for _ in range(depth))
        self.pool = AttentionPool(width, heads)
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, embed_dim, bias=False))

    def forward(self, prompt_embeds: torch.Tensor) -> torch.Tensor:
        h = self.input_proj(self.input_norm(prompt_embeds))
        for block in self.blocks:
            h = block(h)
        return self.head(self.pool(h))

    def last_parameters(self) -> Iterator[nn.Parameter]:
        """The last transformer layer (if any) and the attention pooling."""
        if len(self.blocks):
            yield from self.blocks[-1].parameters()
        yield from self.pool.parameters()


class TwoTowerProxy(ProxyRewardModel):
    """What the LRMs share: the cosine of an image and a text embedding, a learned
    ``logit_scale``, and the ``trainable`` groups (heads, last blocks, all, none).

    Subclasses set ``image_tower`` (with a ``head``), ``text_tower``
    (:class:`PromptEmbedTextTower`), ``logit_scale`` and ``trainable``, and implement
    :meth:`forward` and :meth:`last_image_parameters`.
    """

    image_tower: nn.Module
    text_tower: PromptEmbedTextTower
    logit_scale: nn.Parameter
    trainable: str

    def last_image_parameters(self) -> Iterator[nn.Parameter]:
        """The image side's part of ``trainable="last"`` (beside its head)."""
        raise NotImplementedError

    def logit_scale_value(self) -> torch.Tensor:
        """``exp(logit_scale)``, clamped at 100 as in CLIP."""
        return self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    # -------------------------------------------------------------- trainable set

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters selected by ``trainable`` (each yielded once)."""
        if self.trainable == "none":
            return iter(())
        if self.trainable == "all":
            return iter(list(self.parameters()))
        groups = [self.image_tower.head.parameters(), self.text_tower.head.parameters(),
                  iter([self.logit_scale])]
        if self.trainable == "last":
            groups += [self.last_image_parameters(), self.text_tower.last_parameters()]
        seen: dict[int, nn.Parameter] = {}
        for group in groups:
            for p in group:
                seen.setdefault(id(p), p)
        return iter(list(seen.values()))

    def trainable_parameter_names(self) -> set[str]:
        """Names (as in ``named_parameters``) of :meth:`trainable_parameters`."""
        ids = {id(p) for p in self.trainable_parameters()}
        return {name for name, p in self.named_parameters() if id(p) in ids}

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Parameter count (of the trainable set when ``trainable_only``)."""
        params = self.trainable_parameters() if trainable_only else self.parameters()
        return sum(p.numel() for p in params)


# ---------------------------------------------------------------- the LRM


class LatentRewardModel(TwoTowerProxy):
    """Latent proxy RM (LRM): cosine between a latent image tower and a prompt-embedding tower.

    Parameters (all stored in ``self.config`` for ``save_pretrained``/``from_pretrained``):

    - ``latent_channels``: channels of the latents (4 for SD). ``text_dim``: width ``D`` of the
      backbone's prompt embeddings (1024 for SD 2.x, 768 for SD 1.x).
    - ``embed_dim``: shared embedding width of the two towers.
    - ``image_tower``: ``"conv"`` (default) or ``"vit"``.
    - conv: ``image_widths`` (one per stage, stride 2 between stages), ``blocks_per_stage``.
    - vit: ``vit_width``, ``vit_depth``, ``vit_heads``, ``vit_patch_size``, ``vit_grid_size``
      (the patch grid the position embedding is stored for; other grids interpolate).
    - text: ``text_width``, ``text_depth`` (transformer layers, 0 allowed), ``text_heads``.
    - ``trainable``: ``"last"`` (default), ``"heads"``, ``"all"`` or ``"none"`` (module docstring).
    - ``logit_scale_init``: initial ``logit_scale`` (``ln(1/0.07)`` as in CLIP).

    The defaults give about 3 M parameters; widen ``image_widths``/``text_width`` and deepen
    the towers for a larger proxy. A new LRM is frozen and in eval mode (the student-step
    state); :class:`~rewardkit.proxies.ProxyUpdater` unfreezes the trainable set per update.
    """

    name = "lrm"

    def __init__(self, latent_channels: int = 4, text_dim: int = 1024, embed_dim: int = 256,
                 image_tower: str = "conv", image_widths: Sequence[int] = (64, 128, 256),
                 blocks_per_stage: int = 1, vit_width: int = 256, vit_depth: int = 4,
                 vit_heads: int = 4, vit_patch_size: int = 2, vit_grid_size: int = 32,
                 text_width: int = 256, text_depth: int = 1, text_heads: int = 4,
                 trainable: str = "last", logit_scale_init: float = math.log(1 / 0.07)) -> None:
        super().__init__()
        if image_tower not in IMAGE_TOWERS:
            raise ConfigError(f"LRM image_tower must be one of {IMAGE_TOWERS}, got {image_tower!r}")
        if trainable not in TRAINABLE_CHOICES:
            raise ConfigError(
                f"LRM trainable must be one of {TRAINABLE_CHOICES}, got {trainable!r}")
        if latent_channels < 1 or text_dim < 1 or embed_dim < 1:
            raise ConfigError(
                f"LRM latent_channels, text_dim and embed_dim must be positive; got "
                f"{latent_channels}, {text_dim}, {embed_dim}")
        self.config = dict(
            latent_channels=latent_channels, text_dim=text_dim, embed_dim=embed_dim,
            image_tower=image_tower, image_widths=[int(w) for w in image_widths],
            blocks_per_stage=blocks_per_stage, vit_width=vit_width, vit_depth=vit_depth,
            vit_heads=vit_heads, vit_patch_size=vit_patch_size, vit_grid_size=vit_grid_size,
            text_width=text_width, text_depth=text_depth, text_heads=text_heads,
            trainable=trainable, logit_scale_init=float(logit_scale_init))
        self.latent_channels = latent_channels
        self.text_dim = text_dim
        self.trainable = trainable
        if image_tower == "conv":
            self.image_tower: nn.Module = ConvImageTower(latent_channels, image_widths,
                                                         blocks_per_stage, embed_dim)
        else:
            self.image_tower = ViTImageTower(latent_channels, vit_width, vit_depth, vit_heads,
                                             vit_patch_size, vit_grid_size, embed_dim)
        self.text_tower = PromptEmbedTextTower(text_dim, text_width, text_depth, text_heads,
                                               embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(float(logit_scale_init)))
        self.freeze()  # frozen until an update unfreezes the trainable set
        self.eval()

    # -------------------------------------------------------------- scoring

    def encode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Unit-norm image embeddings ``[B, embed_dim]`` of scaled latents ``[B, C, h, w]``."""
        if latents.ndim != 4 or latents.shape[1] != self.latent_channels:
            raise ConfigError(
                f"LRM expects latents [B, {self.latent_channels}, h, w], got "
                f"{tuple(latents.shape)}; build it with latent_channels=backbone.latent_channels")
        # Contiguous (NCHW): UNet outputs can be channels_last, and GroupNorm's CPU backward on
        # channels_last inputs crashes the process (segfault) in torch 2.13.
        latents = latents.to(self.logit_scale.dtype).contiguous()
        return F.normalize(self.image_tower(latents), dim=-1)

    def encode_prompts(self, prompt_embeds: torch.Tensor) -> torch.Tensor:
        """Unit-norm text embeddings ``[B, embed_dim]`` of prompt embeddings ``[B, L, D]``."""
        if prompt_embeds.ndim != 3 or prompt_embeds.shape[-1] != self.text_dim:
            raise ConfigError(
                f"LRM expects prompt embeddings [B, L, {self.text_dim}], got "
                f"{tuple(prompt_embeds.shape)}; build it with text_dim=backbone.text_embed_dim")
        dtype = self.logit_scale.dtype
        return F.normalize(self.text_tower(prompt_embeds.to(dtype)), dim=-1)

    def forward(self, latents: torch.Tensor, prompt_embeds: torch.Tensor) -> torch.Tensor:
        """Cosine scores ``[B]`` (the reward the student maximises)."""
        if latents.shape[0] != prompt_embeds.shape[0]:
            raise ConfigError(
                f"LRM got {latents.shape[0]} latents but {prompt_embeds.shape[0]} prompt "
                f"embeddings; pass one prompt embedding per latent")
        return (self.encode_latents(latents) * self.encode_prompts(prompt_embeds)).sum(-1)

    def last_image_parameters(self) -> Iterator[nn.Parameter]:
        """The last image block (part of ``trainable="last"``)."""
        return self.image_tower.last_parameters()
