"""Data loader throughput: webdataset shards vs image folder vs pre-encoded latents, workers 0 vs N.

    python benchmarks/bench_data.py [--images 256] [--side 320] [--resolution 256] [--workers 2]

Writes a temporary dataset of random JPEGs (shards and a folder), encodes latent shards of the
right shape with a stand-in encoder, then times ``build_loader`` batches and a mid-shard resume.
Prints images/s and ratios. Numbers depend on the machine's free cores.
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rewardkit.data import LatentShardWriter, build_loader


def jpeg(seed: int, side: int) -> bytes:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(side // 8, side * 5 // 32, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((side * 5 // 4, side), Image.BILINEAR)  # smooth, JPEG-like
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def write_data(root: Path, images: int, side: int, resolution: int) -> tuple[str, str, str]:
    shards, folder, latents = root / "wds", root / "folder", root / "latents"
    shards.mkdir(), folder.mkdir()
    per_shard = max(1, images // 4)
    lines = []
    for i in range(images):
        data, text = jpeg(i, side), f"image {i}".encode()
        shard = shards / f"data-{i // per_shard:05d}.tar"
        with tarfile.open(shard, "a") as tar:
            for ext, payload in (("jpg", data), ("txt", text)):
                info = tarfile.TarInfo(f"{i:06d}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
        (folder / f"{i:06d}.jpg").write_bytes(data)
        lines.append(json.dumps({"file_name": f"{i:06d}.jpg", "text": f"image {i}"}))
    (folder / "captions.jsonl").write_text("\n".join(lines))
    writer = LatentShardWriter(latents, shard_size=per_shard, scaling_factor=0.18215,
                               resolution=resolution)
    h = resolution // 8
    writer.add(torch.randn(images, 4, h, h), [f"image {i}" for i in range(images)],
               [str(i) for i in range(images)])
    writer.finish()
    n = len(list(shards.glob("*.tar")))
    return str(shards / f"data-{{00000..{n - 1:05d}}}.tar"), str(folder), str(latents)


def images_per_second(source: str, resolution: int, batch: int, batches: int, workers: int) -> float:
    loader = build_loader(source, resolution=resolution, batch_size=batch, seed=0,
                          random_flip=True, num_workers=workers)
    next(loader)  # warm-up: opens files, starts threads
    start = time.perf_counter()
    for _ in range(batches):
        next(loader)
    elapsed = time.perf_counter() - start
    loader.close()
    return batches * batch / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--side", type=int, default=320)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        shards, folder, latents = write_data(Path(tmp), args.images, args.side, args.resolution)
        rates = {}
        for name, source in (("webdataset", shards), ("folder", folder), ("latents", latents)):
            for workers in (0, args.workers):
                rates[name, workers] = images_per_second(source, args.resolution, args.batch,
                                                         args.batches, workers)
                print(f"{name:10s} workers={workers}: {rates[name, workers]:8.1f} images/s")
        print(f"latents / webdataset (workers=0): {rates['latents', 0] / rates['webdataset', 0]:.1f}x")
        for name in ("webdataset", "folder"):
            print(f"{name} workers={args.workers} / workers=0: "
                  f"{rates[name, args.workers] / rates[name, 0]:.2f}x")
        loader = build_loader(shards, resolution=args.resolution, batch_size=args.batch)
        for _ in range(3):
            next(loader)
        state = loader.state_dict()
        start = time.perf_counter()
        resumed = build_loader(shards, resolution=args.resolution, batch_size=args.batch)
        resumed.load_state_dict(state)
        next(resumed)
        print(f"resume mid-shard + first batch: {time.perf_counter() - start:.3f} s "
              f"(one batch normally {args.batch / rates['webdataset', 0]:.3f} s)")


if __name__ == "__main__":
    main()
