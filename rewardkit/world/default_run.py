"""What ``rewardkit run rg-lcd`` does with no arguments: RG-LCD on the embedded world, then a report.

Two functions for the recipe (or the CLI) to call when no teacher is given::

    from rewardkit.world.default_run import default_rg_lcd_overrides, finalize_world_run

    overrides = default_rg_lcd_overrides()            # shipped teacher, world data, world-judge + lrm
    output_dir = rk.recipe("rg-lcd", **overrides).run()
    finalize_world_run(output_dir)                    # evaluate teacher + student, write report.md

The training data is named by the string ``"world:train"`` (config values are strings); the
recipe turns it into a :class:`~rewardkit.world.source.WorldSource` with
:func:`~rewardkit.world.source.world_source_from_spec` (``"world:SPLIT?size=N&side=S&seed=K"``).
``rg-lcd`` applies :func:`default_rg_lcd_overrides` itself when it is run with no config and no
teacher (``RGLCDRecipe.embedded_defaults``), and calls :func:`finalize_world_run` at the end.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError
from .assets import LRM, TEACHER, asset_path
from ..evaluation.timing import DEFAULT_TIMING_ROUNDS
from .evaluate import (DEFAULT_GUIDANCE_SCALE, DEFAULT_NUM_IMAGES, WorldEvaluator, add_speedups,
                       model_spec)
from .lrm import WORLD_LRM_PARAMS, proxy_params_for_world
from .source import WorldSource

DEFAULT_OUTPUT_DIR = "rg-lcd-world"
#: CPU threads of the report's timing rounds: one, so another process on the cores slows the
#: teacher and the student alike (see rewardkit.evaluation.timing).
REPORT_TIMING_THREADS = 1
#: Optimiser steps of the default run: 8-9 minutes on 2 CPU cores with the shipped teacher
#: (training plus the final evaluation; ``/usr/bin/time rewardkit run rg-lcd``).
DEFAULT_MAX_TRAIN_STEPS = 600
#: Validation prompts of the default run (the first captions of the world's validation split).
NUM_VALIDATION_PROMPTS = 6
def validation_captions(count: int = NUM_VALIDATION_PROMPTS, seed: int = 0) -> list[str]:
    """The first ``count`` captions of the world's validation split."""
    return WorldSource("validation", size=count, seed=seed).captions()[:count]


def default_rg_lcd_overrides(assets_root: str | Path | None = None,
                             output_dir: str = DEFAULT_OUTPUT_DIR,
                             max_train_steps: int = DEFAULT_MAX_TRAIN_STEPS) -> dict[str, Any]:
    """Config overrides of ``rg-lcd`` for the embedded world (LRM learning from ``world-judge``).

    ``assets_root`` points at another built world (default: the shipped assets). Every value is
    an ordinary :class:`~rewardkit.recipes.rg_lcd_config.RGLCDConfig` key, so a user can override any of
    them on the command line.
    """
    root = Path(assets_root) if assets_root is not None else None
    return {
        "pretrained_teacher_model": str(asset_path(TEACHER, root)),
        "train_shards_path_or_url": "world:train",
        "output_dir": output_dir,
        "reward": "world-judge",
        "proxy": "lrm",
        # the LRM starts from the shipped pretrained one (lrm-pretrain on world data, see
        # rewardkit.world.lrm); every layer keeps learning online
        "pretrained_proxy": str(asset_path(LRM, root)),
        "proxy_params": {"trainable": WORLD_LRM_PARAMS["trainable"]},
        "proxy_eval_shards_path_or_url": "world:validation",
        "proxy_eval_num_prompts": 64,
        "resolution": 32,
        "train_batch_size": 32,
        "max_train_steps": max_train_steps,
        "learning_rate": 1e-4,
        "lr_scheduler": "constant_with_warmup",
        "lr_warmup_steps": 20,
        # a narrower w range than SD's [5, 15]: a small student learns it faster; it holds the
        # evaluation guidance (7.5 embeds w = 6.5)
        "w_min": 4.0,
        "w_max": 9.0,
        "reward_scale": 1.0,
        "proxy_batch_size": 8,
        # the online LRM schedule that keeps it agreeing with the judge (docs/lrm-online.md):
        # rehearse the pretraining pairs, two updates per step (the second from a replay
        # buffer), hard pairwise labels, a learning rate that does not erase the pretraining
        "proxy_rehearsal_set": str(asset_path(LRM, root) / "preference_set"),
        "proxy_updates_per_step": 2,
        "proxy_replay_size": 256,
        "proxy_loss_type": "cross_entropy",
        "proxy_lr": 1e-4,
        "vae_decode_batch_size": 24,
        "checkpointing_steps": 200,
        "checkpoints_total_limit": 1,
        "validation_steps": 100,
        "validation_prompts": validation_captions(),
        "validation_seeds": [0],
        "validation_guidance_scale": DEFAULT_GUIDANCE_SCALE,
        # the reward-hacking guard: the run learns world-judge (through the LRM), so the learned
        # scorer is its gold panel; plus the Frechet distance to the teacher's samples
        "gold_panel": ["world-scorer"],
        "guard_fd_metric": "world-fd",
        "guard_prompts": validation_captions(),
        "guard_seeds": [0, 1, 2, 3],
        "seed": 0,
        "report_to": "none",
    }


#: The paper's online schedule, for an LRM that starts from scratch: one update per student step
#: on the fresh candidates, no replay, the distillation loss, ``proxy_lr`` 1e-3. The default run's
#: own schedule (``proxy_lr`` 1e-4, replay, two updates per step) is tuned for the pretrained LRM
#: and its rehearsal pairs; given a from-scratch LRM learning ``world-scorer`` at beta 20 it
#: collapsed in every seed (``benchmarks/lrm_evidence.py``), where this one held.
SCRATCH_LRM_SCHEDULE: dict[str, Any] = {"proxy_lr": 1e-3, "proxy_updates_per_step": 1,
                                        "proxy_replay_size": 0, "proxy_loss_type": "distillation"}

#: Keys of the default run that only mean something with a proxy RM.
PROXY_ONLY_KEYS = ("proxy_params", "pretrained_proxy", "proxy_rehearsal_set",
                   "proxy_eval_shards_path_or_url", "proxy_eval_num_prompts")


def fit_world_defaults(defaults: dict[str, Any], chosen: dict[str, Any]) -> dict[str, Any]:
    """The default run's values, fitted to what the user ``chosen``: without a proxy
    (``proxy="none"``) the proxy-only keys are dropped; with another proxy than ``lrm`` the
    shipped LRM (``lrm/``) is not loaded and the proxy is sized for the world; with
    an expert other than ``world-judge`` the LRM starts from scratch and rehearses nothing (the
    shipped LRM and its rehearsal pairs were made with the judge, and would leak it
    into a run meant to learn another RM), so it learns on the paper's online schedule
    (:data:`SCRATCH_LRM_SCHEDULE`); at another ``resolution`` than the world's the shipped
    rehearsal pairs are dropped (their latents have the world resolution's size, and rg-lcd
    refuses a rehearsal set of other-sized latents), while the shipped LRM, which reads latents
    of any size, still loads. The reward-hacking guard's gold panel is the world RM the run
    does not train on. The user's ``chosen`` values are applied over these."""
    fitted = dict(defaults)
    proxy = chosen.get("proxy", fitted.get("proxy"))
    reward = chosen.get("reward", fitted.get("reward"))
    # the guard's gold panel is the world RM the run does not train on
    fitted["gold_panel"] = [name for name in ("world-judge", "world-scorer") if name != reward]
    if proxy == "none":
        for key in PROXY_ONLY_KEYS:
            fitted.pop(key, None)
        return fitted
    if proxy != "lrm" or reward != "world-judge":
        fitted.pop("pretrained_proxy", None)
        fitted["proxy_params"] = proxy_params_for_world(proxy)
    if reward != "world-judge":
        fitted.pop("proxy_rehearsal_set", None)
        fitted.update(SCRATCH_LRM_SCHEDULE)
    if chosen.get("resolution", fitted["resolution"]) != fitted["resolution"]:
        fitted.pop("proxy_rehearsal_set", None)
    return fitted


def _run_config(output_dir: Path) -> dict[str, Any]:
    path = output_dir / "config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def finalize_world_run(output_dir: str | Path, *, teacher: str | Path | None = None,
                       student: str | Path | None = None, assets_root: str | Path | None = None,
                       scorer_path: str | Path | None = None, features_path: str | Path | None = None,
                       prompts: Sequence[str] | None = None, num_images: int = DEFAULT_NUM_IMAGES,
                       validation_prompts: Sequence[str] | None = None,
                       student_steps: Sequence[int] = (1, 2, 4), teacher_steps: int = 50,
                       guidance_scale: float | None = None, batch_size: int = 16,
                       device: str = "cpu", command: str | None = None,
                       timing_rounds: int = DEFAULT_TIMING_ROUNDS,
                       timing_threads: int = REPORT_TIMING_THREADS) -> Path:
    """Evaluate the teacher and the run's student, write the run's report; returns ``report.md``.

    Defaults come from the run folder: the student is ``output_dir/pipeline``, the teacher is the
    config's ``pretrained_teacher_model``, the grid's prompts are its ``validation_prompts`` and
    the guidance scale its ``validation_guidance_scale``. The table is measured on ``num_images``
    test-split prompts (or ``prompts``); ``report.md``, ``eval.json``, ``comparison.png`` and
    ``training_curves.png`` land in ``output_dir`` (see :mod:`rewardkit.world.report`).

    The images (and so every quality figure) come from one sampling pass per model; sampling
    speed is then timed in ``timing_rounds`` rounds that time the teacher and the student rows
    in turn on the same batch (:mod:`rewardkit.evaluation.timing`): ms/image is the median
    over the rounds and the speed-up the median of the per-round ratios, each with its lowest
    and highest round, so load on the machine slows both sides of a ratio alike. The rounds run
    on ``timing_threads`` CPU threads (one by default: a speed-up timed with one thread per
    core moves with other processes' load, see :mod:`rewardkit.evaluation.timing`), so the
    report's ms/image is one thread's.
    """
    from .report import comparison_columns, write_report

    output_dir = Path(output_dir)
    config = _run_config(output_dir)
    root = Path(assets_root) if assets_root is not None else None
    teacher = teacher or config.get("pretrained_teacher_model") or asset_path(TEACHER, root)
    student = Path(student) if student is not None else output_dir / "pipeline"
    if not student.is_dir():
        raise ConfigError(f"no student pipeline at '{student}' to evaluate")
    scale = guidance_scale if guidance_scale is not None else float(
        config.get("validation_guidance_scale", DEFAULT_GUIDANCE_SCALE))
    grid_prompts = list(validation_prompts or config.get("validation_prompts") or validation_captions())

    evaluator = WorldEvaluator(prompts, num_images=num_images, scorer_path=scorer_path,
                               features_path=features_path, assets_root=root, device=device)
    models = [model_spec(teacher, "teacher", teacher_steps, "teacher", scale),
              model_spec(student, "student", tuple(student_steps), "student", scale)]
    rows = evaluator.evaluate_models(models, batch_size=batch_size, timing_rounds=timing_rounds,
                                    timing_threads=timing_threads)
    add_speedups(rows)
    columns = comparison_columns(teacher, student, grid_prompts, teacher_steps=teacher_steps,
                                 student_steps=student_steps, guidance_scale=scale, device=device)
    return write_report(output_dir, rows, columns=columns, grid_prompts=grid_prompts,
                        command=command, config=config or None,
                        notes=(f"Sampling speed timed on {timing_threads} CPU thread"
                               f"{'s' if timing_threads > 1 else ''} (the quality figures come "
                               "from the sampling pass)." if timing_threads and timing_rounds
                               else None),
                        title=f"Run report: {output_dir.name}")
