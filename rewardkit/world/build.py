"""``rewardkit world build``: train every model of the embedded world and write them as assets.

Stages, in order (each with a rich progress bar and its own budget):

1. ``vae``: the teacher's AutoencoderKL (:func:`rewardkit.world.teacher.train_vae`);
2. ``unet``: the teacher's UNet (:func:`rewardkit.world.teacher.train_unet`);
3. ``world-scorer``: the learned RM (:func:`rewardkit.world.train_judges.train_scorer`);
4. ``features``: the Frechet feature net (:func:`rewardkit.world.train_judges.train_features`);
5. ``lrm``: the pretrained latent proxy RM (LRM) that the default ``rg-lcd`` run starts from
   (``lrm-pretrain`` on world data with ``world-judge``: :mod:`rewardkit.world.lrm`);
6. ``quality``: the teacher's judge reward at 50 DDIM steps + CFG on the validation prompts
   (next to the same pipeline with an untrained UNet, and real renders), the feature net's
   per-attribute accuracy, and the scorer's correlation with the judge on unseen samples.

The output folder gets ``teacher/`` (a diffusers pipeline), ``world-scorer/``, ``features/``,
``lrm/`` and
``build.json`` (sizes, steps, seconds, seed, quality numbers). Everything is first written to a
hidden temporary folder inside the output folder and renamed into place at the end, so an
interrupted build never leaves half-written assets. From Python::

    from rewardkit.world.build import build_world
    report = build_world("my-world", size="tiny")     # dict, also written to my-world/build.json
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from ..errors import ConfigError
from ..files import replace_path
from .assets import ASSETS, FEATURES, LRM, SCORER, TEACHER, save_net
from .lrm import pretrain_world_lrm
from .teacher import TeacherPlan, TeacherSize, judge_renders, judge_teacher, train_teacher, validation_prompts

BUILD_FILE = "build.json"
#: Guidance scale of the quality check (the evaluation's default, diffusers' convention).
GUIDANCE_SCALE = 7.5
#: Share of ``--minutes`` given to the VAE; the UNet gets the rest.
VAE_SHARE = 1 / 5


@dataclass(frozen=True)
class BuildPlan:
    """Sizes, steps and budgets of one world build."""

    teacher: TeacherPlan = field(default_factory=TeacherPlan)
    scorer_count: int = 8_000
    scorer_epochs: int = 10
    scorer_lr: float = 3e-3
    features_count: int = 8_000
    features_epochs: int = 8
    lrm_contrastive_steps: int = 300  # the pretrained world LRM (lrm-pretrain)
    lrm_preference_prompts: int = 512
    lrm_preference_steps: int = 400
    lrm_eval_prompts: int = 64
    eval_steps: int = 50  # DDIM steps of the teacher quality check
    eval_prompts: int | None = None  # validation captions sampled (None: all of them)
    eval_images_per_prompt: int = 2
    quality_count: int = 1_000  # unseen samples for the scorer correlation and feature accuracy


PLANS: dict[str, BuildPlan] = {
    "full": BuildPlan(),
    # a smoke build for tests: every stage runs for real, at toy sizes, in seconds
    "tiny": BuildPlan(
        teacher=TeacherPlan(
            size=TeacherSize(vae_block_out_channels=(8, 8, 16), unet_block_out_channels=(16, 32),
                             cross_attention_dim=32, text_layers=1, text_heads=2,
                             text_intermediate_size=32, norm_num_groups=8),
            pool_images=64, vae_steps=3, vae_batch_size=8, vae_seconds=30, unet_steps=3,
            unet_batch_size=8, unet_seconds=30, warmup_steps=1),
        scorer_count=64, scorer_epochs=1, features_count=64, features_epochs=1, eval_steps=2,
        eval_prompts=2, eval_images_per_prompt=1, quality_count=32, lrm_contrastive_steps=2,
        lrm_preference_prompts=4, lrm_preference_steps=2, lrm_eval_prompts=4),
}


def make_plan(size: str = "full", minutes: float | None = None) -> BuildPlan:
    """The plan of ``size`` ("tiny" or "full"); ``minutes`` overrides the teacher's time budget.

    ``minutes`` is the time for the VAE and the UNet together (the long stages; the UNet gets
    4/5 of it); their step counts stay as caps.
    """
    if size not in PLANS:
        raise ConfigError(f"--size must be one of {', '.join(PLANS)}, got '{size}'")
    plan = PLANS[size]
    if minutes is None:
        return plan
    if not (minutes > 0 and minutes < float("inf")):  # NaN and inf too
        raise ConfigError(f"--minutes must be a positive finite number, got {minutes}")
    seconds = 60.0 * minutes
    teacher = replace(plan.teacher, vae_seconds=seconds * VAE_SHARE,
                      unet_seconds=seconds * (1 - VAE_SHARE))
    return replace(plan, teacher=teacher)


class _Bars:
    """One rich progress bar per stage; plain lines every ~30 s when the output is not a terminal
    (``nohup rewardkit world build > log``); nothing when disabled (tests and scripts)."""

    def __init__(self, enabled: bool) -> None:
        from rich.console import Console

        self.progress = None
        self.console = Console() if enabled else None
        if self.console is not None and self.console.is_terminal:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self.progress = Progress(TextColumn("{task.description:<12}"), BarColumn(),
                                     MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.4f}"),
                                     TimeElapsedColumn(), TimeRemainingColumn(), console=self.console)

    @contextmanager
    def running(self) -> Iterator["_Bars"]:
        if self.progress is None:
            yield self
            return
        with self.progress:
            yield self

    def stage(self, name: str):
        """A ``progress(done, total, loss)`` callback for a new stage (``None`` when disabled)."""
        if self.progress is not None:
            task = self.progress.add_task(name, total=None, loss=float("nan"))

            def update(done: int, total: int, loss: float) -> None:
                self.progress.update(task, completed=done, total=total, loss=loss)

            return update
        if self.console is None:
            return None
        began, last = time.perf_counter(), [0.0]

        def log(done: int, total: int, loss: float) -> None:
            now = time.perf_counter()
            if now - last[0] >= 30 or done >= total:
                last[0] = now
                self.console.print(f"{name}: step {done}/{total}, loss {loss:.4f}, "
                                   f"{now - began:.0f} s", highlight=False)

        return log

    def log(self, message: str) -> None:
        if self.console is not None:
            self.console.print(message, highlight=False)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.asarray(a, float), np.asarray(b, float))[0, 1])


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _scorer_quality(net, count: int, seed: int) -> dict[str, float]:
    from .scene_codes import encode_captions
    from .train_judges import scorer_training_set

    pixels, captions, scores = scorer_training_set(count, seed=seed)
    with torch.no_grad():
        predicted = net(pixels, encode_captions(captions)).numpy()
    return {"correlation_with_judge": _pearson(predicted, scores.numpy()),
            "mean_abs_error": float(np.abs(predicted - scores.numpy()).mean()), "samples": count}


def _features_quality(net, count: int) -> dict[str, Any]:
    from .source import WorldSource
    from .train_judges import attribute_accuracy

    source = WorldSource("validation", size=count, seed=0)
    samples = [source.load(i) for i in range(count)]
    pixels = torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2).float() / 255
    return {"attribute_accuracy": attribute_accuracy(net, pixels, [s.caption for s in samples]),
            "samples": count}


def build_world(out_dir: str | Path | None = None, size: str = "full", minutes: float | None = None,
                seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Train the world's teacher, scorer RM and feature net; write them and ``build.json`` to ``out_dir``.

    Args:
        out_dir: output folder (default: the package's assets folder, what ships).
        size: ``"full"`` (the shipped world, ~35 min on 2 busy CPU cores) or ``"tiny"`` (seconds).
        minutes: time budget of the teacher's VAE + UNet training (default: the plan's).
        seed: seeds weight initialisation and training order (the world's splits are fixed).
        progress: show rich progress bars.

    Returns the build report (the content of ``build.json``).
    """
    plan = make_plan(size, minutes)
    out = Path(out_dir) if out_dir is not None else ASSETS
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out '{out}' is a file; choose a folder")
    if not (out / BUILD_FILE).is_file():  # not a world built before: its files are someone else's
        clashing = [name for name in (TEACHER, SCORER, FEATURES, LRM) if (out / name).exists()]
        if clashing:
            raise ConfigError(f"--out '{out}' holds {', '.join(clashing)}, which no world build "
                              f"wrote there (it has no {BUILD_FILE}) and which the build would "
                              "replace; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    work = out / f".build-{uuid.uuid4().hex[:8]}"
    work.mkdir()
    bars = _Bars(progress)
    with _quiet_libraries():
        return _build(plan, out, work, bars, size, minutes, seed)


@contextmanager
def _quiet_libraries() -> Iterator[None]:
    """Silence diffusers/transformers info logs and their per-load progress bars during a build."""
    import diffusers
    import transformers

    levels = (diffusers.logging.get_verbosity(), transformers.logging.get_verbosity())
    diffusers.logging.set_verbosity_error()
    transformers.logging.set_verbosity_error()
    diffusers.logging.disable_progress_bar()
    transformers.logging.disable_progress_bar()
    try:
        yield
    finally:
        diffusers.logging.set_verbosity(levels[0])
        transformers.logging.set_verbosity(levels[1])
        diffusers.logging.enable_progress_bar()
        transformers.logging.enable_progress_bar()


def _build(plan: BuildPlan, out: Path, work: Path, bars: _Bars, size: str, minutes: float | None,
           seed: int) -> dict[str, Any]:
    from .train_judges import train_features, train_scorer

    seconds: dict[str, float] = {}
    began = time.perf_counter()
    try:
        with bars.running():
            teacher = train_teacher(work / TEACHER, plan.teacher, seed=seed,
                                    vae_progress=bars.stage("vae"), unet_progress=bars.stage("unet"),
                                    untrained_path=work / "untrained-teacher")
            seconds["vae"], seconds["unet"] = teacher.vae.seconds, teacher.unet.seconds

            start = time.perf_counter()
            scorer = train_scorer(count=plan.scorer_count, epochs=plan.scorer_epochs,
                                  lr=plan.scorer_lr, seed=seed, progress=bars.stage("world-scorer"))
            save_net(scorer, work / SCORER)
            seconds["world-scorer"] = time.perf_counter() - start

            start = time.perf_counter()
            features = train_features(count=plan.features_count, epochs=plan.features_epochs,
                                      seed=seed + 1, progress=bars.stage("features"))
            save_net(features, work / FEATURES)
            seconds["features"] = time.perf_counter() - start

            start = time.perf_counter()
            bars.log("pretraining the world LRM (lrm-pretrain: contrastive, then world-judge "
                     "preferences)")
            lrm = pretrain_world_lrm(
                work / TEACHER, work / LRM, work / "lrm-pretrain",
                contrastive_steps=plan.lrm_contrastive_steps,
                preference_prompts=plan.lrm_preference_prompts,
                preference_steps=plan.lrm_preference_steps, eval_prompts=plan.lrm_eval_prompts,
                seed=seed)
            seconds["lrm"] = time.perf_counter() - start

            start = time.perf_counter()
            bars.log(f"measuring quality: teacher at {plan.eval_steps} DDIM steps + CFG "
                     f"{GUIDANCE_SCALE}, scorer correlation, feature accuracy")
            quality = _quality(plan, work, scorer, features, seed)
            seconds["quality"] = time.perf_counter() - start
        shutil.rmtree(work / "untrained-teacher", ignore_errors=True)

        report = {
            "size": size, "seed": seed, "minutes": minutes,
            "seconds": {**{k: round(v, 1) for k, v in seconds.items()},
                        "total": round(time.perf_counter() - began, 1)},
            "teacher": {**teacher.summary(), "path": TEACHER,
                        "megabytes": round(_folder_bytes(work / TEACHER) / 2**20, 2)},
            "world-scorer": {"count": plan.scorer_count, "epochs": plan.scorer_epochs,
                             "lr": plan.scorer_lr,
                             "megabytes": round(_folder_bytes(work / SCORER) / 2**20, 2)},
            "features": {"count": plan.features_count, "epochs": plan.features_epochs,
                         "megabytes": round(_folder_bytes(work / FEATURES) / 2**20, 2)},
            "lrm": {**lrm, "megabytes": round(_folder_bytes(work / LRM) / 2**20, 2)},
            "quality": quality,
            "torch": torch.__version__,
        }
        (work / BUILD_FILE).write_text(json.dumps(report, indent=2))
        for name in (TEACHER, SCORER, FEATURES, LRM, BUILD_FILE):
            replace_path(work / name, out / name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report


def _quality(plan: BuildPlan, work: Path, scorer, features, seed: int) -> dict[str, Any]:
    prompts = validation_prompts("validation", plan.eval_prompts) * plan.eval_images_per_prompt
    test_prompts = validation_prompts("test", plan.eval_prompts)
    checks = {"steps": plan.eval_steps, "guidance_scale": GUIDANCE_SCALE}
    teacher = {
        "validation": judge_teacher(work / TEACHER, prompts, plan.eval_steps, GUIDANCE_SCALE, seed),
        "test": judge_teacher(work / TEACHER, test_prompts, plan.eval_steps, GUIDANCE_SCALE, seed),
        "untrained_unet_validation": judge_teacher(work / "untrained-teacher", prompts,
                                                   plan.eval_steps, GUIDANCE_SCALE, seed),
        "renders_validation": {"judge_reward": judge_renders(prompts, seed)},
        **checks,
    }
    return {"teacher": teacher,
            "world-scorer": _scorer_quality(scorer, plan.quality_count, seed=seed + 1000),
            "features": _features_quality(features, plan.quality_count)}


def load_build_report(directory: str | Path | None = None) -> dict[str, Any]:
    """The ``build.json`` of a built world (default: the shipped assets)."""
    path = (Path(directory) if directory is not None else ASSETS) / BUILD_FILE
    if not path.is_file():
        raise ConfigError(f"no {BUILD_FILE} in '{path.parent}'; build the world with `rewardkit world build`")
    return json.loads(path.read_text())
