"""The world's grammar, renderer and rule-based judge."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from rewardkit.errors import ConfigError
from rewardkit.world.grammar import (BACKGROUNDS, COLOURS, HELD_OUT, SHAPES, Scene, all_scenes,
                                     make_splits, parse_caption)
from rewardkit.world.judge import WEIGHTS, judge
from rewardkit.world.render import render
from rewardkit.world.source import WorldSource

SCENES = list(all_scenes())
# a spread of scenes: every shape, colour, background and count appears
SAMPLE = SCENES[::7]


def _blur(image: np.ndarray, rounds: int = 3) -> np.ndarray:
    pixels = image.astype(np.float64)
    for _ in range(rounds):
        pixels = (pixels + np.roll(pixels, 1, 0) + np.roll(pixels, -1, 0)
                  + np.roll(pixels, 1, 1) + np.roll(pixels, -1, 1)) / 5
    return np.round(pixels).astype(np.uint8)


def test_parse_round_trip_for_every_scene():
    assert len(SCENES) == len(set(SCENES)) > 200
    for scene in SCENES:
        assert parse_caption(scene.caption()) == scene
        assert parse_caption(scene.caption().upper() + "  ") == scene


@pytest.mark.parametrize("caption", [
    "a red circle on a blue background",               # no size
    "a large pink circle on a white background",       # unknown colour
    "a large red hexagon on a white background",       # unknown shape
    "a large blue circle on a blue background",        # shape colour == background
    "three large red circles on a white background",   # unknown count
    "",
])
def test_captions_outside_the_grammar_parse_to_none(caption):
    assert parse_caption(caption) is None


def test_held_out_pairs_never_reach_training():
    splits = make_splits(0)
    assert not any(s.held_out for s in splits.train + splits.validation)
    held_in_test = {(s.colour, s.shape) for s in splits.test if s.held_out}
    assert held_in_test == set(HELD_OUT)
    assert not set(splits.train) & set(splits.validation)
    assert not set(splits.train) & set(splits.test)
    assert set(splits.train) | set(splits.validation) | set(splits.test) == set(SCENES)
    assert make_splits(0) == splits and make_splits(1) != splits
    source = WorldSource("train", size=500)
    assert not any(source.scene(i).held_out for i in range(500))


def test_rendering_and_judging_are_deterministic():
    scene = SAMPLE[3]
    image = render(scene, seed=11)
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert np.array_equal(image, render(scene, seed=11))
    assert not np.array_equal(image, render(scene, seed=12))
    assert judge(image, scene.caption()) == judge(image.copy(), scene.caption())
    source = WorldSource("validation", size=4, seed=0)
    assert np.array_equal(source.load(2).image, WorldSource("validation", size=4, seed=0).load(2).image)
    with pytest.raises(ConfigError, match="split"):
        WorldSource("dev")


def test_rendered_images_score_high_for_their_captions():
    scores = [judge(render(scene, seed=i), scene.caption()).score for i, scene in enumerate(SAMPLE)]
    assert min(scores) > 0.6
    assert np.mean(scores) > 0.85
    verdict = judge(render(SAMPLE[0], seed=0), SAMPLE[0].caption())
    assert set(verdict.terms) == set(WEIGHTS)
    assert verdict.score == pytest.approx(sum(WEIGHTS[k] * v for k, v in verdict.terms.items()))


def test_judge_reads_chw_floats_like_hwc_bytes():
    scene = SAMPLE[5]
    image = render(scene, seed=5)
    as_float = image.transpose(2, 0, 1).astype(np.float32) / 255
    assert judge(as_float, scene.caption()).score == pytest.approx(judge(image, scene.caption()).score, abs=1e-3)


def _other(values, current):
    return next(v for v in values if v != current)


@pytest.mark.parametrize("attribute", ["colour", "shape", "background", "count"])
def test_a_wrong_caption_scores_lower(attribute):
    drops = []
    for i, scene in enumerate(SAMPLE):
        image = render(scene, seed=i)
        if attribute == "colour":
            wrong = dataclasses.replace(scene, colour=_other([c for c in COLOURS if c != scene.background], scene.colour))
        elif attribute == "shape":
            wrong = dataclasses.replace(scene, shape=_other(SHAPES, scene.shape))
        elif attribute == "background":
            wrong = dataclasses.replace(scene, background=_other([b for b in BACKGROUNDS if b != scene.colour], scene.background))
        else:
            wrong = dataclasses.replace(scene, count=3 - scene.count)
        drops.append(judge(image, scene.caption()).score - judge(image, wrong.caption()).score)
    assert np.mean(drops) > 0.12
    assert np.mean(np.array(drops) > 0) > 0.9


def test_noise_and_blur_score_lower_than_clean_renders():
    rng = np.random.default_rng(0)
    clean, noisy, blurred, pure_noise = [], [], [], []
    for i, scene in enumerate(SAMPLE):
        image, caption = render(scene, seed=i), scene.caption()
        clean.append(judge(image, caption).score)
        noisy.append(judge(np.clip(image + rng.normal(0, 60, image.shape), 0, 255).astype(np.uint8), caption).score)
        blurred.append(judge(_blur(image), caption).score)
        pure_noise.append(judge(rng.integers(0, 256, image.shape, dtype=np.uint8), caption).score)
    assert np.mean(noisy) < np.mean(clean) - 0.1
    assert np.mean(blurred) < np.mean(clean) - 0.05
    assert np.mean(pure_noise) < 0.5
    assert judge(render(SAMPLE[0], 0), "not a caption").score < 0.2
