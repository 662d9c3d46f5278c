"""BLIP's "MED" BERT text encoder in multimodal mode (``ImageReward/models/BLIP/med.py``), plain torch.

Each layer: bidirectional self-attention over the prompt tokens, cross-attention to the image
tokens, feed-forward; post-norm as in BERT. Parameter names match ImageReward's checkpoint
(``blip.text_encoder.*``): ``embeddings.{word_embeddings,position_embeddings,LayerNorm}``,
``encoder.layer.N.{attention,crossattention}.{self.{query,key,value},output.{dense,LayerNorm}}``,
``encoder.layer.N.intermediate.dense``, ``encoder.layer.N.output.{dense,LayerNorm}``.
Masked positions get -10000 added to the attention scores, as in BLIP.

Written against torch only because ``med.py`` uses transformers internals that transformers 5
removed (``apply_chunking_to_forward``, head masks); it needs no transformers at all.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .configs import TextConfig

_ACTIVATIONS = {
    "gelu": nn.GELU,
    "gelu_new": lambda: nn.GELU(approximate="tanh"),
    "gelu_pytorch_tanh": lambda: nn.GELU(approximate="tanh"),
    "relu": nn.ReLU,
}


class Embeddings(nn.Module):
    """Word + absolute position embeddings, LayerNorm (BLIP's MED has no token-type embeddings)."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size,
                                            padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)[None]
        return self.LayerNorm(x)


class SelfAttention(nn.Module):
    """Scaled dot-product attention; keys/values from ``context`` (width ``kv_width``)."""

    def __init__(self, config: TextConfig, kv_width: int) -> None:
        super().__init__()
        self.heads = config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(kv_width, config.hidden_size)
        self.value = nn.Linear(kv_width, config.hidden_size)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.view(b, n, self.heads, c // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor,
                additive_mask: torch.Tensor | None) -> torch.Tensor:
        q, k, v = self._split(self.query(x)), self._split(self.key(context)), self._split(self.value(context))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=additive_mask)
        b, h, n, d = out.shape
        return out.transpose(1, 2).reshape(b, n, h * d)


class SelfOutput(nn.Module):
    """dense, then LayerNorm of (result + residual)."""

    def __init__(self, config: TextConfig, width_in: int) -> None:
        super().__init__()
        self.dense = nn.Linear(width_in, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class Attention(nn.Module):
    """Attention block (``self`` + ``output``), used for self- and cross-attention."""

    def __init__(self, config: TextConfig, kv_width: int) -> None:
        super().__init__()
        self.self = SelfAttention(config, kv_width)
        self.output = SelfOutput(config, config.hidden_size)

    def forward(self, x: torch.Tensor, context: torch.Tensor,
                additive_mask: torch.Tensor | None) -> torch.Tensor:
        return self.output(self.self(x, context, additive_mask), x)


class Intermediate(nn.Module):
    """dense -> activation."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = _ACTIVATIONS[config.hidden_act]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class Layer(nn.Module):
    """Self-attention, cross-attention to the image, feed-forward."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.attention = Attention(config, config.hidden_size)
        self.crossattention = Attention(config, config.encoder_width)
        self.intermediate = Intermediate(config)
        self.output = SelfOutput(config, config.intermediate_size)

    def forward(self, x: torch.Tensor, text_mask: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, x, text_mask)
        x = self.crossattention(x, image, None)  # every image token is attended to
        return self.output(self.intermediate(x), x)


class Encoder(nn.Module):
    """The stack of :class:`Layer`."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList([Layer(config) for _ in range(config.num_hidden_layers)])


class MedTextEncoder(nn.Module):
    """Prompt tokens + image tokens -> last hidden states ``[B, L, hidden]`` (no pooler)."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        if config.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"hidden_act {config.hidden_act!r} is not one of {sorted(_ACTIVATIONS)}")
        self.config = config
        self.embeddings = Embeddings(config)
        self.encoder = Encoder(config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                image_embeds: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(input_ids)
        # BLIP's extended mask: 0 where attended, -10000 where padded, broadcast over heads/queries
        mask = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
        image_embeds = image_embeds.to(x.dtype)
        for layer in self.encoder.layer:
            x = layer(x, mask, image_embeds)
        return x
