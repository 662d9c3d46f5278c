"""Training the world's learned networks: the scorer RM (imitates the judge) and the feature net.

The scorer learns the judge's score on rendered images and on spoiled versions of them (wrong
captions, noise, blur, smears), so it is good on the data manifold and, like HPSv2 or
ImageReward, exploitable off it: that is what direct reward optimisation will find.
"""

from __future__ import annotations

import random
from typing import Any, Callable, TypeVar

import numpy as np
import torch
from torch import nn

from .grammar import BACKGROUNDS, COLOURS, SHAPES, SIZES, Scene
from .judge import judge
from .nets import WorldFeatureNet, WorldScorerNet
from .scene_codes import ATTRIBUTES, encode_captions
from .source import WorldSource

Progress = Callable[[int, int, float], None]
N = TypeVar("N", bound=nn.Module)


def _spoil_caption(scene: Scene, rng: random.Random) -> str:
    """The caption with one or two attributes changed (still a valid caption)."""
    fields = {"count": scene.count, "size": scene.size, "colour": scene.colour,
              "shape": scene.shape, "background": scene.background}
    for name in rng.sample(list(fields), rng.choice((1, 2))):
        choices = {"count": (1, 2), "size": SIZES, "colour": tuple(COLOURS), "shape": SHAPES,
                   "background": tuple(BACKGROUNDS)}[name]
        fields[name] = rng.choice([c for c in choices if c != fields[name]])
    if fields["colour"] == fields["background"]:
        fields["background"] = next(b for b in BACKGROUNDS if b != fields["colour"])
    return Scene(**fields).caption()


def spoil_image(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``image`` (HWC uint8) with one random flaw: noise, blur, a high-frequency pattern or a colour cast."""
    kind = rng.integers(0, 4)
    pixels = image.astype(np.float64)
    if kind == 0:  # sensor noise
        pixels = pixels + rng.normal(0, rng.uniform(5, 80), pixels.shape)
    elif kind == 1:  # blur
        for _ in range(int(rng.integers(1, 4))):
            pixels = (pixels + np.roll(pixels, 1, 0) + np.roll(pixels, -1, 0)
                      + np.roll(pixels, 1, 1) + np.roll(pixels, -1, 1)) / 5
    elif kind == 2:  # high-frequency pattern (what an over-optimised generator draws)
        pattern = rng.normal(0, 1, (image.shape[0], image.shape[1], 1)) * rng.uniform(10, 60)
        pixels = pixels + pattern * np.array(rng.uniform(-1, 1, 3))
    else:  # colour cast
        pixels = pixels + rng.uniform(-60, 60, 3)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def scorer_training_set(count: int, side: int = 32, seed: int = 0) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """``count`` (image, caption, judge score) triples: half clean, half spoiled."""
    source = WorldSource("train", size=count, side=side, seed=seed)
    rng, np_rng = random.Random(seed), np.random.default_rng(seed)
    images, captions, scores = [], [], []
    for index in range(count):
        sample = source.load(index)
        image, caption = sample.image, sample.caption
        roll = rng.random()
        if roll < 0.3:
            caption = _spoil_caption(source.scene(index), rng)
        elif roll < 0.6:
            image = spoil_image(image, np_rng)
        images.append(image)
        captions.append(caption)
        scores.append(judge(image, caption).score)
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    return pixels, captions, torch.tensor(scores)


def _total_steps(count: int, epochs: int, batch_size: int) -> int:
    return epochs * ((count + batch_size - 1) // batch_size)


def _fit(net: N, batch_loss: Callable[[torch.Tensor], torch.Tensor], optimiser: torch.optim.Optimizer,
         count: int, epochs: int, batch_size: int, schedule: Any = None,
         progress: Progress | None = None) -> N:
    """Minibatch training over ``count`` samples for ``epochs`` reshuffled epochs; returns ``net``
    frozen. ``batch_loss`` maps a batch of sample indices to the loss."""
    steps, step = _total_steps(count, epochs, batch_size), 0
    for _ in range(epochs):
        order = torch.randperm(count)
        for start in range(0, count, batch_size):
            loss = batch_loss(order[start:start + batch_size])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            if schedule is not None:
                schedule.step()
            step += 1
            if progress:
                progress(step, steps, float(loss.detach()))
    return net.eval().requires_grad_(False)


def train_scorer(count: int = 12_000, epochs: int = 8, side: int = 32, seed: int = 0,
                batch_size: int = 128, lr: float = 2e-3, progress: Progress | None = None) -> WorldScorerNet:
    """Train :class:`WorldScorerNet` to regress the judge's score (MSE)."""
    torch.manual_seed(seed)
    pixels, captions, scores = scorer_training_set(count, side, seed)
    codes = encode_captions(captions)
    net = WorldScorerNet()
    optimiser = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=lr, total_steps=_total_steps(count, epochs, batch_size))

    def batch_loss(batch: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(net(pixels[batch], codes[batch]), scores[batch])

    return _fit(net, batch_loss, optimiser, count, epochs, batch_size, schedule, progress)


def train_features(count: int = 8_000, epochs: int = 4, side: int = 32, seed: int = 1,
                   batch_size: int = 128, lr: float = 2e-3, progress: Progress | None = None) -> WorldFeatureNet:
    """Train :class:`WorldFeatureNet` to classify every caption attribute (cross-entropy)."""
    torch.manual_seed(seed)
    source = WorldSource("train", size=count, side=side, seed=seed)
    np_rng = np.random.default_rng(seed)
    images, captions = [], []
    for index in range(count):
        sample = source.load(index)
        image = sample.image if np_rng.random() < 0.7 else spoil_image(sample.image, np_rng)
        images.append(image)
        captions.append(sample.caption)
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    targets = encode_captions(captions) - 1  # heads exclude the "?" index
    net = WorldFeatureNet()
    optimiser = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)

    def batch_loss(batch: torch.Tensor) -> torch.Tensor:
        logits = net(pixels[batch])
        return sum(nn.functional.cross_entropy(l, targets[batch, i]) for i, l in enumerate(logits))

    return _fit(net, batch_loss, optimiser, count, epochs, batch_size, None, progress)


def attribute_accuracy(net: WorldFeatureNet, pixels: torch.Tensor, captions: list[str]) -> dict[str, float]:
    """Per-attribute accuracy of the feature net (a sanity check of the Frechet features)."""
    targets = encode_captions(captions) - 1
    with torch.no_grad():
        logits = net(pixels)
    return {name: float((l.argmax(1) == targets[:, i]).float().mean())
            for i, (name, l) in enumerate(zip(ATTRIBUTES, logits))}
