"""Turning what a user passes as ``source`` into a cursor over samples.

Accepted:

- an object with ``__len__`` and ``load(i)`` (a :class:`~rewardkit.data.SampleSource`);
- a folder with ``manifest.json`` (latents written by ``rewardkit data encode``);
- a folder of images with captions (``captions.jsonl`` / ``metadata.jsonl`` or sidecar ``.txt``);
- webdataset shards: a ``.tar`` path, a brace range ``data-{00000..00009}.tar``, ``a.tar::b.tar``,
  ``pipe:COMMAND``, an ``http(s)://`` URL, a list of those, or a folder holding only ``.tar`` files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataError
from .cursors import IndexCursor, ShardCursor
from .decode import IMAGE_EXTENSIONS
from .image_folder import ImageFolderSource
from .latent_shards import LatentShardSource, is_latent_folder
from .sample import CorruptSample, SampleSource
from .shard_spec import TAR_SUFFIXES, expand_shards, looks_like_shard_spec


@dataclass
class OpenedSource:
    """A cursor plus what the loader needs to know about the data behind it."""

    cursor: IndexCursor | ShardCursor
    kind: str  # "pixels" or "latents"
    describe: str
    vae_scaling_factor: float | None = None
    latent_shape: tuple[int, ...] | None = None
    resolution: int | None = None
    manifest_path: str | None = None


def _has_images(folder: Path) -> bool:
    return any(p.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS for p in folder.rglob("*"))


def as_sample_source(source: Any) -> SampleSource | list[str]:
    """The random-access source, or the shard URL list, that ``source`` names."""
    if isinstance(source, SampleSource) and not isinstance(source, (str, bytes)):
        return source
    if isinstance(source, (list, tuple)):
        return expand_shards(source)
    if not isinstance(source, (str, Path)):
        raise DataError(f"cannot read data from a {type(source).__name__}: pass a path, a shard "
                        "spec or an object with __len__ and load(i)")
    path = Path(source)
    if path.is_dir():
        if is_latent_folder(path):
            return LatentShardSource(path)
        if _has_images(path):
            return ImageFolderSource(path)
        if any(p.name.endswith(TAR_SUFFIXES) for p in path.iterdir()):
            return expand_shards(path)
        raise DataError(f"{path} holds no images, no .tar shards and no latent manifest.json")
    if path.is_file() and not str(source).endswith(TAR_SUFFIXES):
        raise DataError(f"cannot read data from file {path}: expected a .tar shard or a folder")
    if looks_like_shard_spec(str(source)):
        return expand_shards(str(source))
    raise DataError(f"data source {source} does not exist")


def probe(source: SampleSource, describe: str) -> tuple[str, tuple[int, ...] | None]:
    """Load samples in order until one is readable: its kind and latent shape.

    :class:`DataError` when none is, with the reasons found.
    """
    reasons: dict[str, int] = {}
    for index in range(len(source)):
        try:
            sample = source.load(index)
        except CorruptSample as exc:
            reasons[exc.reason] = reasons.get(exc.reason, 0) + 1
            continue
        except Exception as exc:  # a user source's own failure is a skipped sample too
            reason = f"load raised {type(exc).__name__}"
            reasons[reason] = reasons.get(reason, 0) + 1
            continue
        if sample.latents is not None:
            return "latents", tuple(sample.latents.shape)
        if sample.image is not None:
            return "pixels", None
        reasons["empty sample"] = reasons.get("empty sample", 0) + 1
    found = ", ".join(f"{r}: {n}" for r, n in sorted(reasons.items())) or "no samples"
    raise DataError(f"no readable samples in {describe} ({found})")


def open_source(source: Any, *, seed: int, rank: int, world_size: int,
                shuffle_buffer: int) -> OpenedSource:
    """A cursor over ``source`` for this rank, after checking that it can be read at all."""
    resolved = as_sample_source(source)
    if isinstance(resolved, list):
        describe = str(source) if isinstance(source, (str, Path)) else f"{len(resolved)} shards"
        cursor = ShardCursor(resolved, seed, rank, world_size, shuffle_buffer, describe)
        return OpenedSource(cursor, "pixels", describe)
    describe = repr(resolved) if isinstance(resolved, (ImageFolderSource, LatentShardSource)) \
        else f"{type(resolved).__name__} ({len(resolved)} samples)"
    if len(resolved) == 0:
        raise DataError(f"no samples in {describe}")
    kind, latent_shape = probe(resolved, describe)
    opened = OpenedSource(IndexCursor(resolved, seed, rank, world_size, describe), kind, describe,
                          latent_shape=latent_shape)
    factor = getattr(resolved, "vae_scaling_factor", None)
    opened.vae_scaling_factor = float(factor) if factor is not None else None
    if isinstance(resolved, LatentShardSource):
        opened.latent_shape = resolved.latent_shape
        opened.resolution = resolved.resolution
        opened.manifest_path = str(resolved.root / "manifest.json")
    return opened

