"""Tiny CLIP models, tokenizers and aesthetic heads built offline, for tests.

Everything is written to a folder with ``save_pretrained`` (or ``torch.save``/safetensors for the
aesthetic head), so the reward models load it through the very same ``from_pretrained`` path a
user's real checkpoint takes. No network access, no downloaded weights.

>>> from rewardkit.testing.tiny_clip import build_tiny_clip, build_tiny_aesthetic_head
>>> clip_dir = build_tiny_clip(tmp_path / "clip")                       # doctest: +SKIP
>>> rm = rewardkit.reward_model("clip-score", model=str(clip_dir))      # doctest: +SKIP
>>> head = build_tiny_aesthetic_head(tmp_path / "head.pth", dim=16)     # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import torch

from .tiny_sd import DEFAULT_WORDS as TINY_SD_WORDS
from .tiny_sd import write_tiny_clip_tokenizer

#: Words the tiny tokenizer knows as whole tokens (anything else falls back to single bytes).
DEFAULT_WORDS: tuple[str, ...] = tuple(dict.fromkeys(TINY_SD_WORDS + (
    "in", "on", "with", "and", "painting", "picture", "house", "tree", "car", "sky", "sea",
    "yellow", "white", "black", "orange", "purple", "pink", "brown", "gray", "small", "horse",
)))


def build_tiny_clip_tokenizer(path: str | Path, words: Iterable[str] = DEFAULT_WORDS,
                              model_max_length: int = 77):
    """Write a tiny byte-level BPE CLIP tokenizer (``vocab.json``, ``merges.txt``, configs) to
    ``path`` and return it loaded with ``CLIPTokenizer.from_pretrained(path)``.

    The files come from :func:`rewardkit.testing.tiny_sd.write_tiny_clip_tokenizer` (one tokenizer
    builder for the whole project); any text tokenises, ``words`` become single tokens.
    """
    from transformers import CLIPTokenizer

    write_tiny_clip_tokenizer(path, tuple(words), model_max_length)
    return CLIPTokenizer.from_pretrained(Path(path))


def tiny_clip_config(vocab_size: int, eos_token_id: int, bos_token_id: int, *,
                     image_size: int = 32, patch_size: int = 8, hidden_size: int = 32,
                     projection_dim: int = 16, layers: int = 2, heads: int = 2):
    """A ``CLIPConfig`` with tiny towers (defaults: 32-px images, 2 layers, 32 wide, 16-d embeddings)."""
    from transformers import CLIPConfig, CLIPTextConfig, CLIPVisionConfig

    text = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=77,
        projection_dim=projection_dim, eos_token_id=eos_token_id, bos_token_id=bos_token_id,
        pad_token_id=eos_token_id,
    )
    vision = CLIPVisionConfig(
        image_size=image_size, patch_size=patch_size, hidden_size=hidden_size,
        intermediate_size=2 * hidden_size, num_hidden_layers=layers, num_attention_heads=heads,
        projection_dim=projection_dim,
    )
    return CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                      projection_dim=projection_dim)


def build_tiny_clip(path: str | Path, *, image_size: int = 32, projection_dim: int = 16,
                    seed: int = 0, words: Iterable[str] = DEFAULT_WORDS,
                    image_mean: Sequence[float] | None = None,
                    image_std: Sequence[float] | None = None) -> Path:
    """Build a tiny random ``CLIPModel`` with its tokenizer and image-processor config in ``path``.

    The folder looks like a hub CLIP repository (``config.json``, weights, tokenizer files,
    ``preprocessor_config.json``), so ``CLIPModel.from_pretrained(path)``,
    ``CLIPProcessor.from_pretrained(path)`` and the ``clip-score``/``pickscore``/``aesthetic``
    reward models all load it. Returns ``path``.
    """
    from transformers import CLIPImageProcessor, CLIPModel, CLIPProcessor

    path = Path(path)
    tokenizer = build_tiny_clip_tokenizer(path, words)
    config = tiny_clip_config(len(tokenizer), tokenizer.eos_token_id, tokenizer.bos_token_id,
                              image_size=image_size, projection_dim=projection_dim)
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    model.save_pretrained(path)
    processor_kwargs = {}
    if image_mean is not None:
        processor_kwargs["image_mean"] = list(image_mean)
    if image_std is not None:
        processor_kwargs["image_std"] = list(image_std)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size}, **processor_kwargs)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    image_processor.save_pretrained(path)  # preprocessor_config.json, as hub repositories have
    return path


def build_tiny_aesthetic_head(path: str | Path, dim: int = 16, *, kind: str = "linear",
                              hidden: Sequence[int] = (32, 8), seed: int = 0) -> Path:
    """Save a random aesthetic head for ``dim``-d CLIP features to ``path`` and return ``path``.

    ``kind="linear"``: LAION's ``sa_0_4_vit_l_14_linear.pth`` layout (keys ``weight``, ``bias``).
    ``kind="mlp"``: the improved-aesthetic-predictor layout (``sac+logos+ava1-l14-linearMSE.pth``):
    ``layers.{i}.weight/bias`` for linear layers separated by dropouts. A ``.safetensors``
    suffix saves with safetensors, anything else with ``torch.save``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    if kind == "linear":
        state = {"weight": torch.randn(1, dim, generator=generator) * 0.5,
                 "bias": torch.randn(1, generator=generator)}
    elif kind == "mlp":
        sizes = [dim, *hidden, 1]
        state = {}
        for layer, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            index = 2 * layer  # Linear, Dropout, Linear, Dropout, ... like the original Sequential
            state[f"layers.{index}.weight"] = torch.randn(fan_out, fan_in, generator=generator) / fan_in ** 0.5
            state[f"layers.{index}.bias"] = torch.randn(fan_out, generator=generator) * 0.1
    else:
        raise ValueError(f"unknown aesthetic head kind {kind!r}; use 'linear' or 'mlp'")
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path
