"""Helpers that write tiny datasets for the data tests: webdataset tars, image folders, fakes.

Every image is distinct (its seed is painted into it), so tests can tell samples apart by caption
or by pixels. Corrupt samples come in the kinds the loader must survive.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from PIL import Image
from torch import nn

from rewardkit.data import Sample

CORRUPTIONS = ("truncated", "garbage", "no_caption", "bad_utf8")


def make_image(seed: int, width: int = 24, height: int = 20, mode: str = "RGB") -> Image.Image:
    """A small random image, different for every seed."""
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    image = Image.fromarray(array, "RGB")
    return image if mode == "RGB" else image.convert(mode)


def image_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    """The encoded file content of ``image``."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def caption(seed: int) -> str:
    """The caption of sample ``seed``."""
    return f"sample {seed}"


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def sample_members(seed: int, corruption: str | None = None) -> dict[str, bytes]:
    """``{extension: bytes}`` of one webdataset sample, possibly corrupt."""
    png = image_bytes(make_image(seed))
    text = caption(seed).encode()
    if corruption == "truncated":
        png = png[: len(png) // 2]
    elif corruption == "garbage":
        png = bytes(np.random.default_rng(seed).integers(0, 256, 300, dtype=np.uint8))
    elif corruption == "bad_utf8":
        text = b"\xff\xfe\xfa broken"
    members = {"png": png, "txt": text}
    if corruption == "no_caption":
        del members["txt"]
    return members


def write_shard(path: Path, seeds: Iterable[int], corrupt: dict[int, str] | None = None) -> Path:
    """A webdataset tar with one sample per seed (key ``%06d``); ``corrupt`` maps seed -> kind."""
    corrupt = corrupt or {}
    with tarfile.open(path, "w") as tar:
        for seed in seeds:
            for ext, data in sample_members(seed, corrupt.get(seed)).items():
                _add(tar, f"{seed:06d}.{ext}", data)
    return path


def write_shards(folder: Path, n_shards: int, per_shard: int,
                 corrupt: dict[int, str] | None = None, stem: str = "data") -> str:
    """``n_shards`` tars of ``per_shard`` samples each; returns the brace spec naming them all."""
    folder.mkdir(parents=True, exist_ok=True)
    for shard in range(n_shards):
        seeds = range(shard * per_shard, (shard + 1) * per_shard)
        write_shard(folder / f"{stem}-{shard:05d}.tar", seeds, corrupt)
    return str(folder / f"{stem}-{{00000..{n_shards - 1:05d}}}.tar")


def write_image_folder(folder: Path, n: int, *, jsonl: bool = True,
                       corrupt: dict[int, str] | None = None) -> Path:
    """``n`` PNGs with captions in ``captions.jsonl`` (or sidecar .txt files)."""
    corrupt = corrupt or {}
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for seed in range(n):
        members = sample_members(seed, corrupt.get(seed))
        name = f"img_{seed:04d}.png"
        (folder / name).write_bytes(members["png"])
        if "txt" not in members:
            continue
        if jsonl:
            text = members["txt"].decode("utf-8", errors="replace")
            lines.append(json.dumps({"file_name": name, "text": text}))
        else:
            (folder / f"img_{seed:04d}.txt").write_bytes(members["txt"])
    if jsonl:
        (folder / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return folder


class ListSource:
    """An in-memory SampleSource of seeded images (or latents); ``bad`` indices raise."""

    def __init__(self, n: int, *, latents: tuple[int, ...] | None = None,
                 bad: Iterable[int] = ()) -> None:
        self.n = n
        self.latents = latents
        self.bad = set(bad)
        self.vae_scaling_factor = 0.5 if latents else None
        self.loads: list[int] = []

    def __len__(self) -> int:
        return self.n

    def load(self, index: int) -> Sample:
        self.loads.append(index)
        if index in self.bad:
            raise ValueError(f"sample {index} is broken")
        if self.latents is not None:
            values = torch.full(self.latents, float(index))
            values[..., 0] = -1.0  # left-right asymmetric, so a flip is visible
            return Sample(caption=caption(index), latents=values, key=f"item{index}")
        return Sample(caption=caption(index), image=make_image(index), key=f"item{index}")


def read_good_samples(loader, count: int) -> list[str]:
    """Captions of the next ``count`` readable samples, one per batch (``batch_size`` must be 1)."""
    assert loader.batch_size == 1
    return [next(loader)["captions"][0] for _ in range(count)]


class FakeBackbone:
    """A stand-in for the Backbone contract's image encoder: stride-8 conv 'VAE', scaled, noisy.

    Records every latent batch it returns so tests can compare them with what was written.
    """

    name = "fake-vae"

    def __init__(self, pretrained_model_name_or_path: str = "fake", scaling_factor: float = 0.5,
                 latent_channels: int = 4) -> None:
        torch.manual_seed(0)
        self.vae = nn.Conv2d(3, latent_channels, kernel_size=8, stride=8)
        self.vae_scaling_factor = scaling_factor
        self.latent_channels = latent_channels
        self.path = pretrained_model_name_or_path
        self.outputs: list[torch.Tensor] = []

    def encode_images(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Scaled 'latents' of images in [-1, 1]."""
        mean = self.vae(pixels)
        noise = torch.randn(mean.shape, generator=generator)
        latents = (mean + 0.01 * noise) * self.vae_scaling_factor
        self.outputs.append(latents.clone())
        return latents
