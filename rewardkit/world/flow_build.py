"""``rewardkit world build --teacher flow``: train the world's flow-matching teacher and write it
beside the world's other models.

The flow teacher (:mod:`rewardkit.world.flow_teacher`) reuses the VAE and text encoder of the
world's UNet teacher, so it is built *on* a world: ``--out`` (default: the package's assets
folder) must hold a built world's ``teacher/``, or ``--source`` names one. It writes
``teacher-flow/`` (a ``StableDiffusion3Pipeline`` folder) and ``build-flow.json`` (plan, steps,
seconds, loss curve, and the quality check: the judge reward of the teacher at
``eval_steps`` Euler steps with classifier-free guidance on validation prompts, beside the same
pipeline with its untrained transformer and the real renders). As in ``world build``, everything
is written to a hidden folder first and renamed into place at the end. From Python::

    from rewardkit.world.flow_build import build_flow_world
    report = build_flow_world("my-world", size="tiny")   # also my-world/build-flow.json
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from ..files import replace_path
from .assets import ASSETS, TEACHER
from .flow_teacher import FlowTeacherPlan, FlowTeacherSize, train_flow_teacher

FLOW_TEACHER = "teacher-flow"
FLOW_BUILD_FILE = "build-flow.json"
#: Guidance scale of the quality check (diffusers' convention, as the UNet world's).
GUIDANCE_SCALE = 7.5


@dataclass(frozen=True)
class FlowBuildPlan:
    """The flow teacher's training plan and its quality check."""

    teacher: FlowTeacherPlan = field(default_factory=FlowTeacherPlan)
    eval_steps: int = 50  # Euler steps of the quality check
    eval_prompts: int | None = 64  # validation captions sampled (None: all)


FLOW_PLANS: dict[str, FlowBuildPlan] = {
    # ~45 min on 2 CPU cores: 40 min of transformer training, the rest rendering and encoding
    # the pool and the quality check
    "full": FlowBuildPlan(),
    # a smoke build for tests: every stage runs for real, at toy sizes, in seconds
    "tiny": FlowBuildPlan(
        teacher=FlowTeacherPlan(size=FlowTeacherSize(num_layers=1, num_attention_heads=2,
                                                     attention_head_dim=8),
                                pool_images=64, steps=3, batch_size=8, seconds=30,
                                warmup_steps=1),
        eval_steps=2, eval_prompts=2),
}


def make_flow_plan(size: str = "full", minutes: float | None = None) -> FlowBuildPlan:
    """The plan of ``size`` ("tiny" or "full"); ``minutes`` overrides the transformer's time
    budget (its step cap stays)."""
    if size not in FLOW_PLANS:
        raise ConfigError(f"--size must be one of {', '.join(FLOW_PLANS)}, got '{size}'")
    plan = FLOW_PLANS[size]
    if minutes is None:
        return plan
    if not (minutes > 0 and minutes < float("inf")):
        raise ConfigError(f"--minutes must be a positive finite number, got {minutes}")
    return replace(plan, teacher=replace(plan.teacher, seconds=60.0 * minutes))


def _source(out: Path, source: str | Path | None) -> Path:
    if source is not None:
        return Path(source)
    for root in (out, ASSETS):
        if (root / TEACHER / "vae").is_dir():
            return root / TEACHER
    raise ConfigError(f"no world teacher in '{out}' or the shipped assets to take the VAE and "
                      "text encoder from; build the world first with `rewardkit world build`")


def _recorded(source: Path, out: Path) -> str:
    """``source`` as the report records it: relative to ``out`` when inside it, so a shipped
    report does not name the folder of the machine that built it."""
    try:
        return str(source.resolve().relative_to(out.resolve()))
    except ValueError:
        return str(source)


def build_flow_world(out_dir: str | Path | None = None, size: str = "full",
                     minutes: float | None = None, seed: int = 0, progress: bool = True,
                     source: str | Path | None = None) -> dict[str, Any]:
    """Train the flow teacher and write ``teacher-flow/`` and ``build-flow.json`` to ``out_dir``.

    Args:
        out_dir: output folder (default: the package's assets folder).
        size: ``"full"`` (~45 min on 2 CPU cores) or ``"tiny"`` (seconds).
        minutes: time budget of the transformer's training (default: the plan's 40).
        seed: seeds the weights and the training order.
        progress: print progress lines.
        source: the world UNet teacher folder whose VAE and text encoder are reused (default:
            ``out_dir/teacher``, else the shipped one).

    Returns the build report (the content of ``build-flow.json``).
    """
    from .build import _Bars, _folder_bytes, _quiet_libraries

    plan = make_flow_plan(size, minutes)
    out = Path(out_dir) if out_dir is not None else ASSETS
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out '{out}' is a file; choose a folder")
    if (out / FLOW_TEACHER).exists() and not (out / FLOW_BUILD_FILE).is_file():
        raise ConfigError(f"--out '{out}' holds {FLOW_TEACHER}, which no flow build wrote there "
                          f"(it has no {FLOW_BUILD_FILE}) and which the build would replace; "
                          "choose another --out")
    teacher_source = _source(out, source)
    out.mkdir(parents=True, exist_ok=True)
    work = out / f".build-flow-{uuid.uuid4().hex[:8]}"
    work.mkdir()
    bars = _Bars(progress)
    began = time.perf_counter()
    try:
        with _quiet_libraries(), bars.running():
            result = train_flow_teacher(work / FLOW_TEACHER, teacher_source, plan.teacher,
                                        seed=seed, progress=bars.stage("flow"),
                                        untrained_path=work / "untrained")
            bars.log(f"measuring quality: flow teacher at {plan.eval_steps} Euler steps + CFG "
                     f"{GUIDANCE_SCALE}")
            start = time.perf_counter()
            quality = _quality(plan, work, seed)
            quality_seconds = time.perf_counter() - start
        report = {
            "size": size, "seed": seed, "minutes": minutes, "source": _recorded(teacher_source, out),
            "seconds": {"transformer": round(result.stats.seconds, 1),
                        "quality": round(quality_seconds, 1),
                        "total": round(time.perf_counter() - began, 1)},
            "teacher": {**result.summary(), "path": FLOW_TEACHER,
                        "megabytes": round(_folder_bytes(work / FLOW_TEACHER) / 2**20, 2)},
            "quality": quality,
            "torch": torch.__version__,
        }
        (work / FLOW_BUILD_FILE).write_text(json.dumps(report, indent=2))
        for name in (FLOW_TEACHER, FLOW_BUILD_FILE):
            replace_path(work / name, out / name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report


def _quality(plan: FlowBuildPlan, work: Path, seed: int) -> dict[str, Any]:
    from .flow_eval import flow_backbone, judge_reward, teacher_images
    from .teacher import judge_renders, validation_prompts

    prompts = validation_prompts("validation", plan.eval_prompts)
    rewards = {}
    for name, folder in (("validation", FLOW_TEACHER), ("untrained_validation", "untrained")):
        images, _ = teacher_images(flow_backbone(work / folder), prompts, steps=plan.eval_steps,
                                   guidance_scale=GUIDANCE_SCALE, seed=seed)
        rewards[name] = {"judge_reward": judge_reward(images, prompts)}
    return {**rewards, "renders_validation": {"judge_reward": judge_renders(prompts, seed)},
            "steps": plan.eval_steps, "guidance_scale": GUIDANCE_SCALE, "prompts": len(prompts)}


def load_flow_report(directory: str | Path | None = None) -> dict[str, Any]:
    """The ``build-flow.json`` of a world with a flow teacher (default: the shipped assets)."""
    path = (Path(directory) if directory is not None else ASSETS) / FLOW_BUILD_FILE
    if not path.is_file():
        raise ConfigError(f"no {FLOW_BUILD_FILE} in '{path.parent}'; build the flow teacher with "
                          "`rewardkit world build --teacher flow`")
    return json.loads(path.read_text())


__all__ = ["FLOW_BUILD_FILE", "FLOW_PLANS", "FLOW_TEACHER", "FlowBuildPlan", "build_flow_world",
           "load_flow_report", "make_flow_plan"]
