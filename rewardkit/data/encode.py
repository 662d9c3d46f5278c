"""Running a teacher's VAE once over a dataset and writing latent shards (``rewardkit data encode``).

Design choice: we store **sampled, scaled latents** (``encode_images(pixels, generator)``, i.e.
``latent_dist.sample() * scaling_factor`` with a generator seeded by ``seed``), not the 8-channel
mean/log-variance the reference's ``work_on_latent`` reads and samples at load time. Reasons:
it goes through the Backbone contract alone (any backbone can encode, VAE internals stay
private to the backbone); it halves the disk; the loader hands latents to training as they are.
What it gives up is a fresh posterior sample per epoch, which matters little: an SD VAE's
posterior standard deviation is tiny next to its mean, so the sample is nearly deterministic.
Images are centre-cropped by default (a random crop would be frozen into the file anyway).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..errors import DataError
from .cursors import Item, ShardCursor, decoder, derived_seed
from .latent_shards import LatentShardWriter
from .sample import CorruptSample, SampleSource
from .skips import SkipLog
from .sources import as_sample_source
from .transforms import ImageTransform


def ordered_items(source: SampleSource | list[str], seed: int) -> Iterator[Item]:
    """Every sample of a source once, in file order (no shuffling, one rank)."""
    if isinstance(source, list):
        cursor = ShardCursor(source, seed, 0, 1, 1, "shards")
        for shard in range(len(source)):
            for ordinal, (where, payload) in enumerate(cursor.raw_samples(shard)):
                yield Item(0, where, decoder(where, payload), derived_seed(seed, shard, ordinal))
        return
    key = getattr(source, "key", None)
    for index in range(len(source)):
        where = key(index) if callable(key) else f"#{index}"
        yield Item(0, where, (lambda i=index: source.load(i)), derived_seed(seed, index))


def _vae_placement(backbone: Any) -> tuple[torch.device, torch.dtype]:
    try:
        parameter = next(backbone.vae.parameters())
        return parameter.device, parameter.dtype
    except (AttributeError, StopIteration, TypeError):
        return torch.device("cpu"), torch.float32


def encode_dataset(source: Any, out_dir: str | Path, backbone: Any, *, resolution: int = 512,
                   batch_size: int = 8, center_crop: bool = True, seed: int = 0,
                   shard_size: int = 1000, limit: int | None = None,
                   latent_dtype: torch.dtype = torch.float32, teacher: str | None = None,
                   progress: bool = True) -> tuple[Path, SkipLog]:
    """Encode every readable image of ``source`` with ``backbone.encode_images`` into ``out_dir``.

    Returns the manifest path and the log of skipped samples. ``limit`` stops after that many
    latents. :class:`DataError` when nothing could be encoded.
    """
    resolved = as_sample_source(source)
    transform = ImageTransform(resolution, center_crop=center_crop, random_flip=False)
    device, dtype = _vae_placement(backbone)
    generator = torch.Generator(device=device).manual_seed(seed)
    writer = LatentShardWriter(out_dir, shard_size=shard_size, dtype=latent_dtype)
    skips = SkipLog()
    total = None if isinstance(resolved, list) else len(resolved)
    if limit is not None:
        total = limit if total is None else min(total, limit)
    skips_advance = 1 if limit is None and total is not None else 0  # the bar counts what total counts

    pixels: list[torch.Tensor] = []
    captions: list[str] = []
    keys: list[str] = []

    def flush() -> None:
        with torch.no_grad():
            batch = torch.stack(pixels).to(device=device, dtype=dtype)
            latents = backbone.encode_images(batch, generator=generator)
        writer.add(latents.float(), captions, keys)
        pixels.clear(), captions.clear(), keys.clear()

    columns = (TextColumn("encoding"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[skipped]} skipped"))
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task("encode", total=total, skipped=0)
        for item in ordered_items(resolved, seed):
            if limit is not None and skips.loaded >= limit:
                break
            try:
                sample = item.load()
                if sample.image is None or not isinstance(sample.caption, str):
                    raise CorruptSample("missing image" if sample.image is None else "missing caption")
                tensor = transform(sample.image, item.rng())
            except CorruptSample as exc:
                skips.add(exc.reason, exc.key or item.where)
                bar.update(task, advance=skips_advance, skipped=skips.total)
                continue
            except Exception as exc:  # one bad sample never stops the encode
                skips.add(f"load raised {type(exc).__name__}", item.where)
                bar.update(task, advance=skips_advance, skipped=skips.total)
                continue
            pixels.append(tensor)
            captions.append(sample.caption)
            keys.append(sample.key or item.where)
            skips.loaded += 1
            bar.update(task, advance=1)
            if len(pixels) == batch_size:
                flush()
        if pixels:
            flush()
    if writer.count == 0:
        raise DataError(f"no readable images in {source}: nothing to encode "
                        f"({', '.join(f'{r}: {n}' for r, n in skips.counts.items()) or 'empty'})")
    manifest = writer.finish(
        scaling_factor=float(backbone.vae_scaling_factor), resolution=resolution,
        center_crop=center_crop, seed=seed, source=str(source), teacher=teacher,
        encoder=type(backbone).__name__, skipped=dict(skips.counts))
    return manifest, skips
