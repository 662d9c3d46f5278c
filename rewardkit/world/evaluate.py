"""Evaluating a teacher or a distilled student on the embedded world.

This is ``rewardkit eval --prompts world --metrics world-judge,world-scorer,world-fd``
(:mod:`rewardkit.evaluation`) with the judge's terms added: one row of metrics per (model, step
count), all measured in this process on the same prompts and seeds::

    from rewardkit.world.evaluate import WorldEvaluator, add_speedups

    evaluator = WorldEvaluator(num_images=64)                  # test-split prompts + real renders
    rows = evaluator.evaluate(teacher_dir, kind="teacher", steps=50)
    rows += evaluator.evaluate("runs/rg-lcd/pipeline", kind="student", steps=(1, 2, 4))
    add_speedups(rows)                                         # speed-up over the teacher row

or, to compare speeds, both in one call, their sampling timed interleaved in rounds (what the
default run's report does)::

    rows = evaluator.evaluate_models([ModelSpec("teacher", teacher_dir, "teacher", [50]),
                                      ModelSpec("student", "runs/rg-lcd/pipeline")],
                                     timing_rounds=5)
    add_speedups(rows)                                         # median of per-round ratios

Metrics of a row (:class:`EvalRow`):

- ``judge_reward``: mean ``world-judge`` score of the images (rule-based, in [0, 1]), its
  standard error ``judge_reward_se``, and the mean of each judge term in ``judge_terms``;
- ``scorer_reward``: mean ``world-scorer`` score (the learned, differentiable RM);
- ``frechet_distance``: Frechet distance between the features (``WorldFeatureNet.features``) of
  the generated images and of real renders of the same prompts (the world's FID, ``world-fd``,
  computed by torchmetrics);
- ``ms_per_image``: wall-clock sampling time per image, after an untimed warm-up image, model
  loading excluded (:func:`rewardkit.sampling.run_pipeline`); with ``timing_rounds`` the median
  over rounds that time every row in turn (:mod:`rewardkit.evaluation.timing`), with the lowest
  and highest round in ``ms_per_image_min`` / ``ms_per_image_max``;
- ``unet_evaluations``: UNet evaluations **per image**, the conditional and unconditional passes
  of classifier-free guidance counted separately (the paper's count): ``steps`` for a
  w-conditioned student, ``2 * steps`` for a teacher with CFG. ``unet_calls`` is the number of
  forward calls per batch actually made (diffusers batches ``[uncond; cond]`` into one call, so a
  teacher makes ``steps`` calls of twice the batch). Both are counted with a forward hook, not
  assumed.

The assets (the scorer RM and the feature net) default to the shipped ones
(:mod:`rewardkit.world.assets`) and can be any folders written by
:func:`rewardkit.world.assets.save_net`, so tests pass tiny ones.
"""

from __future__ import annotations

import contextlib
import tempfile
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from ..evaluation.prompt_sets import PromptSet
from .assets import FEATURES, SCORER, asset_path
from .eval_sets import DEFAULT_NUM_IMAGES, evaluation_prompts, real_images
from .judge import WEIGHTS, judge

KINDS = ("student", "teacher")
#: Guidance scale of evaluation (diffusers' convention: a student embeds ``w = scale - 1``, a
#: teacher runs CFG with it), the same as the recipes' ``validation_guidance_scale`` default.
DEFAULT_GUIDANCE_SCALE = 7.5
DEFAULT_STUDENT_STEPS = (1, 2, 4)
DEFAULT_TEACHER_STEPS = 50


@dataclass
class EvalRow:
    """The metrics of one model sampled at one step count (see the module docstring)."""

    name: str
    kind: str
    steps: int
    guidance_scale: float
    judge_reward: float
    scorer_reward: float
    frechet_distance: float
    ms_per_image: float
    unet_evaluations: int
    unet_calls: int
    num_images: int
    speedup: float | None = None
    judge_reward_se: float = 0.0  # standard error of the mean judge reward
    judge_terms: dict[str, float] = field(default_factory=dict)
    # with an interleaved timing (evaluate_models(timing_rounds=N)): ms/image of each round,
    # its lowest and highest, and the id shared by the rows timed together (their rounds pair)
    ms_per_image_rounds: list[float] = field(default_factory=list)
    ms_per_image_min: float | None = None
    ms_per_image_max: float | None = None
    timing_group: str = ""
    speedup_min: float | None = None
    speedup_max: float | None = None
    images: list = field(default_factory=list, repr=False)  # PIL images, not serialised

    def as_dict(self) -> dict[str, Any]:
        """The row without its images (JSON-serialisable)."""
        data = asdict(self)
        data.pop("images")
        return data


METRICS = ("world-judge", "world-scorer", "world-fd")


class WorldEvaluator:
    """The world's evaluation: ``rewardkit eval`` (:class:`rewardkit.evaluation.Evaluation`) on
    the world's prompts with ``world-judge``, ``world-scorer`` and ``world-fd``, plus the mean
    of each judge term, as :class:`EvalRow` rows.

    Args:
        prompts: the evaluation prompts (default: :func:`evaluation_prompts` of ``split``).
        num_images: how many test prompts when ``prompts`` is not given.
        split: the world split the default prompts and real images come from.
        seed: the split's seed (fixes the real renders) and the first sampling seed (image ``i``
            is sampled with seed ``seed + i``).
        scorer_path: a saved ``WorldScorerNet`` folder (default: the shipped ``world-scorer`` asset).
        features_path: a saved ``WorldFeatureNet`` folder (default: the shipped ``features``).
        assets_root: where the default assets live (default: the package's assets folder).
        device: where the judges' networks and the sampling pipelines run.
    """

    def __init__(self, prompts: Sequence[str] | None = None, *, num_images: int = DEFAULT_NUM_IMAGES,
                 split: str = "test", seed: int = 0, scorer_path: str | Path | None = None,
                 features_path: str | Path | None = None, assets_root: str | Path | None = None,
                 device: str = "cpu") -> None:
        from .eval_sets import WorldFrechet
        from .rewards import WorldScorer

        root = Path(assets_root) if assets_root is not None else None
        self.prompts = list(prompts) if prompts is not None else evaluation_prompts(num_images, split, seed)
        if len(self.prompts) < 2:
            raise ConfigError(f"evaluation needs at least 2 prompts for a Frechet distance, got "
                              f"{len(self.prompts)}")
        self.split, self.seed, self.device = split, seed, device
        self.scorer_dir = Path(scorer_path) if scorer_path is not None else asset_path(SCORER, root)
        self.features_dir = (Path(features_path) if features_path is not None
                             else asset_path(FEATURES, root))
        self.scorer = WorldScorer(str(self.scorer_dir), device=device)
        self.frechet = WorldFrechet(str(self.features_dir))
        self._reals: dict[int, torch.Tensor] = {}

    def prompt_set(self) -> PromptSet:
        """The prompts, with their real renders as the Frechet reference."""
        return PromptSet("world", list(self.prompts), references=self.real_images,
                         source=f"world:{self.split} (seed {self.seed})")

    def real_images(self, side: int) -> torch.Tensor:
        """The real renders of the prompts at ``side`` pixels (cached)."""
        if side not in self._reals:
            self._reals[side] = real_images(self.prompts, side, self.split, self.seed)
        return self._reals[side]

    # ------------------------------------------------------------ scoring images

    @torch.no_grad()
    def score(self, images: torch.Tensor, prompts: Sequence[str] | None = None) -> dict[str, Any]:
        """Judge reward, its terms, scorer reward and Frechet distance of ``[N, 3, H, W]`` images.

        ``prompts`` default to the evaluator's; the Frechet distance is always against the real
        renders of the evaluator's prompts at the images' side.
        """
        prompts = list(prompts) if prompts is not None else self.prompts
        if len(prompts) != len(images):
            raise ConfigError(f"{len(images)} images but {len(prompts)} prompts")
        pixels = images.detach().float().clamp(0, 1).cpu()
        verdicts = [judge(image.numpy(), prompt) for image, prompt in zip(pixels, prompts)]
        judged = np.array([v.score for v in verdicts])
        terms = mean_terms(verdicts)
        spread = float(judged.std(ddof=1) / np.sqrt(len(judged))) if len(judged) > 1 else 0.0
        scored = self.scorer.score(pixels.to(self.device), prompts).float().cpu()
        side = int(pixels.shape[-1])
        return {
            "judge_reward": float(judged.mean()),
            "judge_reward_se": spread,
            "judge_terms": terms,
            "scorer_reward": float(scored.mean()),
            "frechet_distance": self.frechet.compute(pixels, self.real_images(side))["world-fd"],
        }

    # ------------------------------------------------------------ sampling models

    def evaluate(self, model_dir: str | Path, kind: str = "student",
                 steps: int | Sequence[int] | None = None, *, name: str | None = None,
                 guidance_scale: float = DEFAULT_GUIDANCE_SCALE, batch_size: int = 16,
                 keep_images: bool = False, output_dir: str | Path | None = None,
                 resume: bool = False) -> list[EvalRow]:
        """Sample ``model_dir`` on the prompts at each step count and score it: one row each.

        ``kind="student"`` samples with ``LCMScheduler`` (default steps 1, 2, 4);
        ``kind="teacher"`` with DDIM and classifier-free guidance (default 50 steps). The
        samples and ``rewardkit eval``'s report go to ``output_dir`` (default: a temporary
        folder); ``resume`` keeps samples already there.
        """
        return self.evaluate_models([model_spec(model_dir, kind, steps, name, guidance_scale)],
                                    batch_size=batch_size, keep_images=keep_images,
                                    output_dir=output_dir, resume=resume)

    def evaluate_models(self, models: Sequence[Any], *, batch_size: int = 16,
                        timing_rounds: int = 0, timing_threads: int = 0,
                        keep_images: bool = False,
                        output_dir: str | Path | None = None,
                        resume: bool = False) -> list[EvalRow]:
        """Sample and score several models (:class:`rewardkit.evaluation.ModelSpec`) in one
        evaluation: a row per model and step count, in order.

        With ``timing_rounds`` > 0 their sampling speed is then timed interleaved
        (:mod:`rewardkit.evaluation.timing`): ``ms_per_image`` is the median over the rounds
        and :func:`add_speedups` pairs the rows' rounds. The quality figures are those of the
        sampled images either way. ``timing_threads``: torch's CPU threads during the rounds
        (0: the process's).
        """
        from ..evaluation.runner import Evaluation, load_png_folder

        group = uuid.uuid4().hex[:12] if timing_rounds else ""
        with contextlib.ExitStack() as stack:
            folder = (Path(output_dir) if output_dir is not None
                      else Path(stack.enter_context(tempfile.TemporaryDirectory())))
            evaluation = Evaluation(
                self.prompt_set(), METRICS, folder, seed=self.seed, batch_size=batch_size,
                device=self.device, resume=resume, timing_rounds=timing_rounds,
                timing_threads=timing_threads,
                metric_params={"world-scorer": {"path": str(self.scorer_dir), "device": self.device},
                               "world-fd": {"features_path": str(self.features_dir)}})
            results = evaluation.run(list(models), progress=False)
            by_label = {model.label: model for model in models}
            rows = []
            for row in results["rows"]:
                model = by_label[row["model"]]
                images = load_png_folder(evaluation.folder(model, row["steps"]), len(self.prompts))
                rows.append(EvalRow(
                    name=model.label, kind=model.kind, steps=row["steps"],
                    guidance_scale=model.guidance_scale,
                    judge_reward=row["world-judge"], scorer_reward=row["world-scorer"],
                    frechet_distance=row["world-fd"], ms_per_image=row["ms_per_image"],
                    unet_evaluations=row["unet_evaluations"], unet_calls=row["unet_calls"],
                    num_images=row["num_images"], judge_reward_se=row["world-judge_se"],
                    judge_terms=judge_terms(images, self.prompts),
                    images=_pil_images(images) if keep_images else [],
                    ms_per_image_rounds=row.get("ms_per_image_rounds", []),
                    ms_per_image_min=row.get("ms_per_image_min"),
                    ms_per_image_max=row.get("ms_per_image_max"), timing_group=group))
        return rows


def model_spec(model_dir: str | Path, kind: str = "student",
               steps: int | Sequence[int] | None = None, name: str | None = None,
               guidance_scale: float = DEFAULT_GUIDANCE_SCALE) -> Any:
    """The :class:`rewardkit.evaluation.ModelSpec` of a world evaluation row set: ``kind``
    ``"student"`` (default steps 1, 2, 4) or ``"teacher"`` (default 50 steps)."""
    from ..evaluation.runner import ModelSpec

    if kind not in KINDS:
        raise ConfigError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if steps is None:
        steps = DEFAULT_STUDENT_STEPS if kind == "student" else DEFAULT_TEACHER_STEPS
    step_counts = [int(steps)] if isinstance(steps, int) else [int(s) for s in steps]
    return ModelSpec(name or kind, str(model_dir), kind, step_counts, guidance_scale)


def judge_terms(images: torch.Tensor, prompts: Sequence[str]) -> dict[str, float]:
    """The mean of each judge term over ``[N, 3, H, W]`` images in [0, 1]."""
    pixels = images.detach().float().clamp(0, 1).cpu().numpy()
    return mean_terms([judge(image, prompt) for image, prompt in zip(pixels, prompts)])


def mean_terms(verdicts: Sequence[Any]) -> dict[str, float]:
    """The mean of each judge term over the judge's verdicts."""
    return {name: float(np.mean([v.terms[name] for v in verdicts])) for name in WEIGHTS}


def _pil_images(images: torch.Tensor) -> list:
    from PIL import Image

    arrays = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(array) for array in arrays]


def add_speedups(rows: list[EvalRow], reference: EvalRow | None = None) -> list[EvalRow]:
    """Set each row's ``speedup`` = reference ms/image / its ms/image (in place; returns ``rows``).

    The reference defaults to the first teacher row; without one, speed-ups stay ``None``. Rows
    timed together with the reference (:meth:`WorldEvaluator.evaluate_models` with
    ``timing_rounds``) get the median of the per-round ratios instead, with the lowest and
    highest in ``speedup_min`` / ``speedup_max``: each ratio compares two rows timed moments
    apart, so load on the machine cannot invent a speed-up.
    """
    from ..evaluation.timing import round_ratios, summarise

    reference = reference or next((row for row in rows if row.kind == "teacher"), None)
    if reference is None:
        return rows
    for row in rows:
        paired = (reference.timing_group and row.timing_group == reference.timing_group
                  and len(row.ms_per_image_rounds) == len(reference.ms_per_image_rounds) > 0)
        if paired:
            summary = summarise(round_ratios(reference.ms_per_image_rounds, row.ms_per_image_rounds))
            row.speedup, row.speedup_min, row.speedup_max = (summary["median"], summary["min"],
                                                             summary["max"])
        else:
            row.speedup = reference.ms_per_image / row.ms_per_image if row.ms_per_image > 0 else None
            row.speedup_min = row.speedup_max = None
    return rows


def evaluate(model_dir: str | Path, kind: str = "student", steps: int | Sequence[int] | None = None,
             *, prompts: Sequence[str] | None = None, num_images: int = DEFAULT_NUM_IMAGES,
             seed: int = 0, guidance_scale: float = DEFAULT_GUIDANCE_SCALE, batch_size: int = 16,
             device: str = "cpu", scorer_path: str | Path | None = None,
             features_path: str | Path | None = None, assets_root: str | Path | None = None,
             name: str | None = None, evaluator: WorldEvaluator | None = None) -> list[EvalRow]:
    """One-call evaluation of a student or teacher folder (see :class:`WorldEvaluator`).

    Pass an ``evaluator`` to reuse its prompts, nets and cached real features across models.
    """
    evaluator = evaluator or WorldEvaluator(
        prompts, num_images=num_images, seed=seed, scorer_path=scorer_path,
        features_path=features_path, assets_root=assets_root, device=device)
    return evaluator.evaluate(model_dir, kind, steps, name=name, guidance_scale=guidance_scale,
                              batch_size=batch_size)
