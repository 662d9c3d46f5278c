"""What would make a plan fit: each option on its own, the fewest of them together, and the
largest batch that fits (with gradient accumulation keeping the effective batch).

The options are the config keys and launch settings that cut memory: ``gradient_checkpointing``
(the student), ``vae_gradient_checkpointing`` (the decoder, direct mode), ``use_8bit_adam``,
``use_lora``, DeepSpeed ZeRO-2 (optimiser states and gradients sharded over the processes; on one
process it shards nothing, so the plan shows it over 8) and a smaller ``train_batch_size``. Each
is planned in full, so its figure is the plan's, not a rule of thumb. Together they are tried in
the order above: those that change nothing the run computes first, LoRA (a different student)
last.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable

from .plan import Launch, MemoryPlan, plan_config
from .table import Profiles

#: Processes the ZeRO-2 suggestion assumes when the plan is for one.
ZERO_PROCESSES = 8


@dataclass
class Suggestion:
    """An alternative: its command-line changes and the plan's figure for it."""

    label: str
    flags: str
    total: float
    needed: float
    fits: bool


Option = tuple[str, Callable[[Any, Launch], bool], Callable[[Any, Launch], tuple[dict, Launch]]]


def _options(direct: bool) -> list[Option]:
    def set_keys(**values: Any) -> Callable[[Any, Launch], tuple[dict, Launch]]:
        return lambda config, launch: (values, launch)

    def zero(config: Any, launch: Launch) -> tuple[dict, Launch]:
        processes = launch.num_processes if launch.num_processes > 1 else ZERO_PROCESSES
        return {}, dataclasses.replace(launch, num_processes=processes, zero_stage=2)

    options: list[Option] = [
        ("student gradient checkpointing", lambda c, _: not c.gradient_checkpointing,
         set_keys(gradient_checkpointing=True)),
    ]
    if direct:
        options.append(("decoder gradient checkpointing",
                        lambda c, _: not c.vae_gradient_checkpointing,
                        set_keys(vae_gradient_checkpointing=True)))
    options += [
        ("8-bit Adam", lambda c, _: not c.use_8bit_adam and not c.use_lora,
         set_keys(use_8bit_adam=True)),
        ("DeepSpeed ZeRO-2", lambda c, launch: not (launch.deepspeed and launch.zero_stage >= 2),
         zero),
        ("LoRA", lambda c, _: not c.use_lora, set_keys(use_lora=True)),
    ]
    return options


def _flags(changes: dict[str, Any], launch: Launch, base: Launch) -> str:
    parts = [f"--{key} {str(value).lower() if isinstance(value, bool) else value}"
             for key, value in changes.items()]
    if launch.zero_stage != base.zero_stage or launch.num_processes != base.num_processes:
        parts.append(f"accelerate launch --use_deepspeed --zero_stage {launch.zero_stage} "
                     f"--num_processes {launch.num_processes}")
    return " ".join(parts)


def _plan(plan: MemoryPlan, changes: dict[str, Any], launch: Launch,
          profiles: Profiles) -> MemoryPlan:
    config = dataclasses.replace(plan.config, **changes)
    return plan_config(config, launch, profiles)


def largest_batch(plan: MemoryPlan, changes: dict[str, Any], launch: Launch, gpu_memory: float,
                  profiles: Profiles) -> int:
    """The largest ``train_batch_size`` (at most the config's) whose plan fits; 0 if none."""
    low, high = 0, plan.config.train_batch_size
    while low < high:
        middle = (low + high + 1) // 2
        trial = _plan(plan, {**changes, "train_batch_size": middle}, launch, profiles)
        if trial.fits(gpu_memory):
            low = middle
        else:
            high = middle - 1
    return low


def _with_batch(plan: MemoryPlan, changes: dict[str, Any], launch: Launch, gpu_memory: float,
                profiles: Profiles) -> dict[str, Any] | None:
    batch = largest_batch(plan, changes, launch, gpu_memory, profiles)
    if batch == 0:
        return None
    size = plan.config.train_batch_size
    if batch >= size:
        return dict(changes)
    steps = plan.config.gradient_accumulation_steps * math.ceil(size / batch)
    return {**changes, "train_batch_size": batch, "gradient_accumulation_steps": steps}


def suggestions(plan: MemoryPlan, gpu_memory: float, profiles: Profiles) -> list[Suggestion]:
    """Fill ``plan.suggestions``: every option alone; then, if the plan does not fit, the
    largest batch that fits as it is, and the options together in the order of
    :func:`_options` (checkpointing first, LoRA, which changes what is trained, last) until the
    plan fits, with the largest batch that fits if they all do not."""
    direct = plan.recipe == "rg-lcd direct"
    base, found = plan.launch, []
    options = [o for o in _options(direct) if o[1](plan.config, base)]
    for label, _, apply in options:
        changes, launch = apply(plan.config, base)
        trial = _plan(plan, changes, launch, profiles)
        found.append(Suggestion(label, _flags(changes, launch, base), trial.total,
                                trial.needed(), trial.fits(gpu_memory)))
    if not plan.fits(gpu_memory):
        batch = _with_batch(plan, {}, base, gpu_memory, profiles)
        if batch:
            trial = _plan(plan, batch, base, profiles)
            found.append(Suggestion("smaller batch", _flags(batch, base, base), trial.total,
                                    trial.needed(), True))
        chosen, changes, launch, current = [], {}, base, plan
        for label, _, apply in options:
            if current.fits(gpu_memory):
                break
            extra, launch = apply(dataclasses.replace(plan.config, **changes), launch)
            changes.update(extra)
            chosen.append(label)
            current = _plan(plan, changes, launch, profiles)
        if current.fits(gpu_memory) and len(chosen) > 1:
            found.append(Suggestion(" + ".join(chosen), _flags(changes, launch, base),
                                    current.total, current.needed(), True))
        elif not current.fits(gpu_memory):
            batch = _with_batch(plan, changes, launch, gpu_memory, profiles)
            if batch:
                trial = _plan(plan, batch, launch, profiles)
                found.append(Suggestion(" + ".join(chosen + ["smaller batch"]),
                                        _flags(batch, launch, base), trial.total,
                                        trial.needed(), True))
    plan.suggestions = found
    return found


__all__ = ["Suggestion", "largest_batch", "suggestions"]
