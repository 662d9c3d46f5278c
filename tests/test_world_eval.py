"""World evaluation: metric rows of tiny teachers/students, real renders, the Frechet distance."""

from __future__ import annotations

from pathlib import Path

import statistics

import numpy as np
import pytest
import torch

from rewardkit.backbones.stable_diffusion import StableDiffusionBackbone
from rewardkit.errors import ConfigError
from rewardkit.sampling import pil_to_tensor
from rewardkit.testing.tiny_sd import build_tiny_sd_pipeline
from rewardkit.world.assets import save_net
from rewardkit.world.eval_sets import evaluation_prompts, real_images
from rewardkit.world.evaluate import WorldEvaluator, add_speedups, evaluate, model_spec
from rewardkit.world.judge import WEIGHTS
from rewardkit.world.nets import WorldFeatureNet, WorldScorerNet
from rewardkit.world.report import format_table, table_note
from rewardkit.world.source import WorldSource


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """A tiny (untrained) teacher, its saved student, and tiny random scorer/feature nets."""
    root = tmp_path_factory.mktemp("world")
    teacher = build_tiny_sd_pipeline(root / "teacher")  # 16 px images
    backbone = StableDiffusionBackbone(str(teacher))
    student = backbone.save_pipeline(backbone.build_student(), root / "student")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        scorer = save_net(WorldScorerNet(width=8, attribute_dim=4), root / "scorer")
        features = save_net(WorldFeatureNet(width=8), root / "features")
    return {"teacher": teacher, "student": student, "scorer": scorer, "features": features}


@pytest.fixture(scope="module")
def evaluator(world) -> WorldEvaluator:
    return WorldEvaluator(num_images=6, scorer_path=world["scorer"], features_path=world["features"])


def test_rows_count_unet_evaluations_per_image_and_time_sampling(world, evaluator):
    rows = evaluator.evaluate(world["teacher"], "teacher", steps=3, batch_size=4)
    rows += evaluator.evaluate(world["student"], "student", steps=(1, 2), batch_size=4,
                               name="lcd")
    add_speedups(rows)
    teacher, one, two = rows
    # CFG: cond + uncond per step, batched into one forward call of twice the batch
    assert (teacher.unet_evaluations, teacher.unet_calls) == (6, 3)
    assert (one.unet_evaluations, one.unet_calls) == (1, 1)
    assert (two.unet_evaluations, two.unet_calls) == (2, 2)
    assert [r.name for r in rows] == ["teacher", "lcd", "lcd"] and teacher.kind == "teacher"
    for row in rows:
        assert row.num_images == 6 and row.ms_per_image > 0
        assert 0.0 <= row.judge_reward <= 1.0 and np.isfinite(row.scorer_reward)
        assert row.frechet_distance >= 0.0
        assert set(row.judge_terms) == set(WEIGHTS)
        assert "images" not in row.as_dict()
    assert teacher.speedup == pytest.approx(1.0)
    assert one.speedup == pytest.approx(teacher.ms_per_image / one.ms_per_image)


def test_rows_timed_interleaved_keep_their_quality_figures_and_pair_their_rounds(world):
    """evaluate_models(timing_rounds=N): the speed from N interleaved rounds (median, spread,
    speed-up as the median of per-round ratios); the quality figures as without it."""
    evaluator = WorldEvaluator(num_images=4, scorer_path=world["scorer"],
                               features_path=world["features"])
    models = [model_spec(world["teacher"], "teacher", 2, "teacher"),
              model_spec(world["student"], "student", (1, 2))]
    plain = add_speedups(evaluator.evaluate_models(models, batch_size=4))
    timed = add_speedups(evaluator.evaluate_models(models, batch_size=4, timing_rounds=3))
    for before, after in zip(plain, timed):
        assert (after.judge_reward, after.scorer_reward, after.frechet_distance) == (
            before.judge_reward, before.scorer_reward, before.frechet_distance)
        assert not before.ms_per_image_rounds and before.speedup_min is None
        assert len(after.ms_per_image_rounds) == 3
        assert after.ms_per_image == pytest.approx(statistics.median(after.ms_per_image_rounds))
        assert (after.ms_per_image_min, after.ms_per_image_max) == (
            min(after.ms_per_image_rounds), max(after.ms_per_image_rounds))
        ratios = [t / r for t, r in zip(timed[0].ms_per_image_rounds, after.ms_per_image_rounds)]
        assert after.speedup == pytest.approx(statistics.median(ratios))
        assert after.speedup_min == pytest.approx(min(ratios))
    assert timed[0].speedup == pytest.approx(1.0)
    line = format_table(timed).splitlines()[3]
    assert f"| {timed[1].ms_per_image:.1f} ({timed[1].ms_per_image_min:.1f}-" in line
    assert f"| {timed[1].speedup:.1f}x ({timed[1].speedup_min:.1f}-{timed[1].speedup_max:.1f}x) |" in line
    assert "median of 3 rounds" in table_note(timed) and "median" not in table_note(plain)


def test_the_timing_rounds_run_on_the_cpu_threads_asked_for(world, tmp_path, monkeypatch):
    """timing_threads reaches the rounds, and results.json records it (the default run's report
    times with one thread: rewardkit.world.default_run.REPORT_TIMING_THREADS)."""
    import json

    import torch

    evaluator = WorldEvaluator(num_images=2, scorer_path=world["scorer"],
                               features_path=world["features"])
    models = [model_spec(world["teacher"], "teacher", 2, "teacher"),
              model_spec(world["student"], "student", (1,))]
    import rewardkit.sampling

    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    seen = []  # the threads each sampling call ran on
    sample = rewardkit.sampling.run_pipeline

    def recording(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return sample(*args, **kwargs)

    monkeypatch.setattr(rewardkit.sampling, "run_pipeline", recording)
    evaluator.evaluate_models(models, batch_size=2, timing_rounds=1, timing_threads=wanted,
                              output_dir=tmp_path / "eval")
    timing = json.loads((tmp_path / "eval" / "results.json").read_text())["timing"]
    assert timing["cpu_threads"] == wanted and torch.get_num_threads() == before
    assert wanted in seen  # the timed rounds ran on the threads asked for


def test_scores_match_the_judge_and_scorer_on_real_renders(world, evaluator):
    from rewardkit.world.rewards import WorldJudge, WorldScorer

    reals = real_images(evaluator.prompts, side=16)
    scores = evaluator.score(reals)
    judge = WorldJudge()(reals, evaluator.prompts).mean().item()
    scored = WorldScorer(str(world["scorer"]))(reals, evaluator.prompts).mean().item()
    assert scores["judge_reward"] == pytest.approx(judge, abs=1e-6)
    assert scores["scorer_reward"] == pytest.approx(scored, abs=1e-5)
    assert scores["frechet_distance"] == pytest.approx(0.0, abs=1e-6)  # the very same images
    with pytest.raises(ConfigError, match="6 images but 2 prompts"):
        evaluator.score(reals, evaluator.prompts[:2])


def test_one_call_evaluate_keeps_its_seeds(world):
    kwargs = dict(num_images=4, scorer_path=world["scorer"], features_path=world["features"],
                  batch_size=2)
    first = evaluate(world["student"], "student", steps=1, **kwargs)[0]
    again = evaluate(world["student"], "student", steps=1, **kwargs)[0]
    assert first.judge_reward == pytest.approx(again.judge_reward, abs=1e-3)
    assert first.frechet_distance == pytest.approx(again.frechet_distance, rel=1e-3, abs=1e-6)


def test_bad_arguments_name_the_culprit(world, evaluator):
    with pytest.raises(ConfigError, match="kind"):
        evaluator.evaluate(world["student"], "pupil")
    with pytest.raises(ConfigError, match="at least 2 prompts"):
        WorldEvaluator(["a red circle on a white background"], scorer_path=world["scorer"],
                       features_path=world["features"])
    with pytest.raises(ConfigError, match="world build"):
        WorldEvaluator(num_images=2, assets_root=world["teacher"].parent / "nowhere")
    with pytest.raises(ConfigError, match="'a photo of a cat'"):
        real_images(["a photo of a cat", "a red circle on a white background"], side=16)


def test_real_images_are_the_test_split_samples():
    prompts = evaluation_prompts(5)
    source = WorldSource("test", size=5, side=16)
    assert prompts == [source.load(i).caption for i in range(5)]
    reals = real_images(prompts, side=16)
    assert reals.shape == (5, 3, 16, 16)
    assert torch.equal(reals, pil_to_tensor([source.load(i).image for i in range(5)]))
    other = real_images(prompts[::-1], side=16)  # not the split's order: rendered by seed
    assert other.shape == (5, 3, 16, 16) and 0.0 <= float(other.min()) <= float(other.max()) <= 1.0


def test_frechet_features_separate_renders_from_noise(world):
    from rewardkit.world.eval_sets import WorldFrechet

    evaluator = WorldEvaluator(num_images=96, scorer_path=world["scorer"],
                               features_path=world["features"])
    metric = WorldFrechet(str(world["features"]))
    real = evaluator.real_images(16)
    # the same prompts rendered again with other placements and colour jitter
    other = real_images(evaluator.prompts[::-1], side=16)
    noise = torch.rand(96, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    near = metric.compute(other, real)["world-fd"]
    far = metric.compute(noise, real)["world-fd"]
    assert 0.0 <= near < far / 10


def _with_moments(rng: np.random.Generator, n: int, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """``n`` samples whose sample mean and covariance are exactly ``mean`` and ``cov``."""
    x = rng.normal(size=(n, len(mean)))
    x -= x.mean(0)
    whiten = np.linalg.inv(np.linalg.cholesky(np.cov(x, rowvar=False)))
    return x @ whiten.T @ np.linalg.cholesky(cov).T + mean


def _as_images(features: np.ndarray) -> torch.Tensor:
    """Features carried as ``[N, 3, 1, 1]`` "images", read back by an identity feature net."""
    return torch.from_numpy(features).reshape(len(features), 3, 1, 1)


def _fd(a: np.ndarray, b: np.ndarray) -> float:
    """rewardkit's FD plumbing (torchmetrics, FeatureModule) on given features."""
    from rewardkit.evaluation.metrics import FeatureModule, frechet_distance

    identity = FeatureModule(lambda images: images.flatten(1).double(), num_features=3)
    return frechet_distance(identity, _as_images(a), _as_images(b))


def test_frechet_distance_matches_the_closed_form_of_two_gaussians():
    """The FD plumbing (torchmetrics through FeatureModule) on features with known moments."""
    from torchmetrics.image.fid import _compute_fid

    rng = np.random.default_rng(0)
    mu_a, mu_b = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    var_a, var_b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    a = _with_moments(rng, 500, mu_a, np.diag(var_a))
    b = _with_moments(rng, 700, mu_b, np.diag(var_b))
    # diagonal (commuting) covariances: |mu_a - mu_b|^2 + sum (sqrt(var_a) - sqrt(var_b))^2
    expected = ((mu_a - mu_b) ** 2).sum() + ((np.sqrt(var_a) - np.sqrt(var_b)) ** 2).sum()
    assert _fd(a, b) == pytest.approx(expected, rel=1e-6)
    assert _fd(b, a) == pytest.approx(expected, rel=1e-6)
    assert _fd(a, a) == pytest.approx(0.0, abs=1e-6)
    # the library's own function on the same statistics gives the same number
    library = float(_compute_fid(torch.from_numpy(b.mean(0)), torch.from_numpy(np.cov(b, rowvar=False)),
                                 torch.from_numpy(a.mean(0)), torch.from_numpy(np.cov(a, rowvar=False))))
    assert _fd(a, b) == pytest.approx(library, rel=1e-9)
    # a full covariance against itself shifted: only the means differ
    cov = np.array([[2.0, 0.8, 0.1], [0.8, 1.0, -0.3], [0.1, -0.3, 0.5]])
    c = _with_moments(rng, 400, np.zeros(3), cov)
    assert _fd(c, c + np.array([3.0, 0.0, -4.0])) == pytest.approx(25.0, rel=1e-6)


def test_reference_features_are_computed_once_per_reference_set_and_give_the_same_distance():
    """Many rows against one reference set: the reference half is filled once, and each row's
    distance equals a fresh computation; another reference tensor is filled afresh."""
    from rewardkit.evaluation.metrics import FeatureModule, ReferenceFeatures, frechet_distance

    seen: list[int] = []

    def features(images: torch.Tensor) -> torch.Tensor:
        seen.append(len(images))
        return images.flatten(1).double()

    identity = FeatureModule(features, num_features=3)
    rng = np.random.default_rng(1)
    reference = _as_images(rng.normal(0, 1, (300, 3)))
    rows = [_as_images(rng.normal(shift, 1, (200, 3))) for shift in (0.0, 0.5, 2.0)]
    cache = ReferenceFeatures()
    cached = [frechet_distance(identity, row, reference, cache=cache) for row in rows]
    assert sum(seen) == 300 + 3 * 200  # the reference was embedded once, each row once
    assert cached == pytest.approx([_fd(row.reshape(-1, 3).numpy(), reference.reshape(-1, 3).numpy())
                                    for row in rows], rel=1e-9)
    assert cached[0] < cached[1] < cached[2]
    seen.clear()
    other = _as_images(rng.normal(2.0, 1, (300, 3)))
    assert frechet_distance(identity, rows[2], other, cache=cache) < cached[2]
    assert sum(seen) == 300 + 200  # a new reference set is embedded, not the old one reused
