"""How much does antialiasing HPSv2's resize change its input and its scores?

HPSv2's own evaluation transform converts the image to a tensor *first* and then resizes the
tensor (``ToTensor`` before ``ResizeMaxSize``), so whether the bicubic resize antialiases depends
on torchvision: tensors were not antialiased before torchvision 0.17 (``antialias`` None/"warn"
meant False for tensors), and are by default since. The published HPSv2/HPSv2.1 scores date
from that earlier behaviour; the unchanged ``hpsv2`` package under a current torchvision
antialiases.

Prints, for SD-sized images (512 and 768 px) resized to 224: the largest and mean absolute
difference of the normalised model input between ``antialias=False`` and ``True``, and the
difference of the HPS scores with the given checkpoint (the published weights, e.g.
``--checkpoint HPS_v2.1_compressed.pt``; by default a tiny random model, which shows only that
the two settings differ, not by how much a real HPS would)::

    python scripts/measure_antialias.py [--checkpoint FILE] [--images FOLDER] [--count 16]
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import torch

from rewardkit_hpsv2 import HPSv2Config, HPSv2Reward
from rewardkit_hpsv2.preprocess import hps_preprocess
from rewardkit_hpsv2.testing import build_tiny_hps_checkpoint


def synthetic_images(count: int, size: int, seed: int = 0) -> torch.Tensor:
    """Images with detail at every scale (summed random sinusoids plus sharp-edged discs), in
    [0, 1]: what a resize to 224 px aliases."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    out = torch.zeros(count, 3, size, size)
    for n in range(count):
        for _ in range(12):
            freq = 2 ** (torch.rand(1, generator=g) * math.log2(size / 2))
            angle = torch.rand(1, generator=g) * math.pi
            phase = torch.rand(1, generator=g) * 2 * math.pi
            wave = torch.sin(2 * math.pi * freq * (x * torch.cos(angle) + y * torch.sin(angle)) + phase)
            out[n] += torch.rand(3, 1, 1, generator=g) * wave / 6
        for _ in range(4):
            cy, cx, r = torch.rand(3, generator=g)
            disc = ((y - cy) ** 2 + (x - cx) ** 2 < (0.05 + 0.2 * r) ** 2).float()
            out[n] = torch.where(disc.bool(), torch.rand(3, 1, 1, generator=g), out[n])
    return (out + 0.5).clamp(0, 1)


def folder_images(folder: Path, count: int) -> torch.Tensor:
    import numpy as np
    from PIL import Image

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[:count]
    if not files:
        raise SystemExit(f"no .png/.jpg images in {folder}")
    images = [torch.from_numpy(np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255)
              for f in files]
    return torch.stack([i.permute(2, 0, 1) for i in images if i.shape == images[0].shape])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="HPS checkpoint (default: a tiny random model)")
    parser.add_argument("--model_config", help="OpenCLIP config of --checkpoint (default ViT-H-14)")
    parser.add_argument("--images", type=Path, help="a folder of images (default: synthetic)")
    parser.add_argument("--count", type=int, default=16)
    args = parser.parse_args(argv)
    if args.checkpoint:
        checkpoint, config = args.checkpoint, args.model_config
    else:
        checkpoint, config = build_tiny_hps_checkpoint(Path(tempfile.mkdtemp()))
        checkpoint, config = str(checkpoint), str(config)
    models = {flag: HPSv2Reward(HPSv2Config(checkpoint=checkpoint, model_config=config,
                                            antialias=flag)) for flag in (False, True)}
    print(f"input difference at HPS's 224 px; scores: "
          f"{checkpoint if args.checkpoint else 'a tiny random model'} "
          f"(input {models[False].image_size} px)")
    sets = ({f"{args.images}": folder_images(args.images, args.count)} if args.images else
            {f"synthetic {s} px": synthetic_images(args.count, s) for s in (512, 768)})
    prompts = ["a photo of a cat on a sofa"]
    for label, images in sets.items():
        with torch.no_grad():
            plain, smooth = (hps_preprocess(images, 224, antialias=f) for f in (False, True))
            scores = {f: models[f](images, prompts * len(images)) for f in (False, True)}
        diff = (plain - smooth).abs()
        delta = scores[True] - scores[False]
        print(f"{label}: input |diff| max {float(diff.max()):.3f} mean {float(diff.mean()):.4f}; "
              f"score (antialias - not) mean {float(delta.mean()):+.5f}, max |.| "
              f"{float(delta.abs().max()):.5f}, score std across images "
              f"{float(scores[False].std()):.5f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
