"""The memory plan of an ``lcd`` / ``rg-lcd`` run, per GPU, before anything loads.

What is resident for the whole run (each from a parameter count on the meta device, times the
bytes per parameter the code keeps): the student's weights, gradients and optimiser states, the
EMA target, the frozen teacher UNet, VAE and text encoder(s), the reward model, the proxy and its
optimiser. What one step adds, phase by phase (each from an activation profile,
:mod:`rewardkit.plan.profiles`, evaluated at this batch and resolution):

- ``encode``: the VAE encoder on the batch (no gradient);
- ``student step``: the student's forward (its activations kept for backward), the teacher's and
  the EMA target's forwards (no gradient) on top, the reward path on top (direct: the VAE decoder
  and the RM with their graphs; LRM: the frozen proxy with its graph), then the backward;
- ``optimiser step``: the optimiser's workspace (and, on one process, the gradients);
- ``proxy update`` (LRM): decoding and scoring ``vae_decode_batch_size`` candidates at a time,
  then one proxy update on ``3 * proxy_batch_size`` candidates.

The total is the resident bytes plus the largest phase. Gradients are resident under data
parallelism (DDP's buckets, DeepSpeed's partitions); one process creates them in the backward
and frees them after the optimiser step, which the student's profile follows point by point.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from .config_models import (Models, count_parameters, imagereward_count, not_planned,
                            proxy_counts, resolve_models, student_counts, weight_dtype)
from .modules import ModelSpec
from .runs import (Precision, proxy_run, reward_run, unet_run, vae_decode_run, vae_encode_run,
                   vae_factor)
from .table import Profiles

GiB = 2 ** 30
#: DDP is built with ``gradient_as_bucket_view=True`` (rewardkit.training.runtime), so its
#: gradients are views into its all-reduce buckets: no second copy. Without it: 4 bytes/param.
DDP_GRADIENT_AS_BUCKET_VIEW = True
#: DeepSpeed's default ``reduce_bucket_size`` (elements): ZeRO-2 reduces gradients through it.
ZERO_REDUCE_BUCKET = 500_000_000
#: Room the plan leaves beyond the tensors on a CUDA device: the context and library workspaces
#: (1 GiB) and the caching allocator's fragmentation (5% of the tensors).
CUDA_RESERVE_BYTES = 1 * GiB
CUDA_FRAGMENTATION = 0.05

_SIZES = {torch.float32: 4, torch.bfloat16: 2, torch.float16: 2}
_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclass
class Line:
    """One figure of the plan: what, how many bytes, and how it was counted."""

    name: str
    bytes: float
    note: str = ""


@dataclass
class Launch:
    """How the run is launched: processes, ZeRO stage (None: no DeepSpeed), device type."""

    num_processes: int = 1
    zero_stage: int | None = None
    device: str = "cuda"

    @property
    def deepspeed(self) -> bool:
        return self.zero_stage is not None

    def describe(self) -> str:
        engine = (f"DeepSpeed ZeRO-{self.zero_stage}" if self.deepspeed else
                  "DDP" if self.num_processes > 1 else "one process")
        return f"{self.num_processes} x {self.device}, {engine}"


@dataclass
class MemoryPlan:
    """The plan: resident lines, the step's phases, per-sample activations, the total."""

    recipe: str
    config: Any
    launch: Launch
    resident: list[Line] = field(default_factory=list)
    phases: dict[str, list[Line]] = field(default_factory=dict)
    per_sample: list[Line] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: Alternatives and their figures (:func:`rewardkit.plan.suggest.suggestions` fills it).
    suggestions: list[Any] = field(default_factory=list)

    @property
    def resident_bytes(self) -> float:
        return sum(line.bytes for line in self.resident)

    def phase_bytes(self, name: str) -> float:
        """The most a phase adds at once (its lines are alternatives: the largest counts)."""
        return max((line.bytes for line in self.phases[name]), default=0.0)

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=self.phase_bytes) if self.phases else ""

    @property
    def total(self) -> float:
        """Bytes of tensors at the step's peak, per GPU."""
        return self.resident_bytes + (self.phase_bytes(self.peak_phase) if self.phases else 0.0)

    def needed(self) -> float:
        """:attr:`total` plus the room a CUDA device needs beyond tensors (none on a CPU)."""
        if self.launch.device != "cuda":
            return self.total
        return self.total * (1 + CUDA_FRAGMENTATION) + CUDA_RESERVE_BYTES

    def fits(self, gpu_memory: float) -> bool:
        return self.needed() <= gpu_memory

    def as_dict(self) -> dict[str, Any]:
        """JSON-able figures (bytes)."""
        def lines(items: list[Line]) -> list[dict[str, Any]]:
            return [dataclasses.asdict(line) for line in items]

        return {"recipe": self.recipe, "launch": dataclasses.asdict(self.launch),
                "resident": lines(self.resident),
                "phases": {k: lines(v) for k, v in self.phases.items()},
                "per_sample": lines(self.per_sample), "peak_phase": self.peak_phase,
                "total": self.total, "needed": self.needed(), "notes": self.notes,
                "suggestions": [dataclasses.asdict(s) for s in self.suggestions]}


# ---------------------------------------------------------------- the models of a config


def plan_config(config: Any, launch: Launch | None = None,
                profiles: Profiles | None = None) -> MemoryPlan:
    """The memory plan of ``config`` (an ``lcd`` or ``rg-lcd`` config) under ``launch``."""
    from ..recipes.lcd_config import LCDConfig

    if not isinstance(config, LCDConfig):
        raise not_planned(f"a {type(config).__name__}")
    launch = launch or Launch()
    if launch.num_processes < 1:
        raise ConfigError(f"num_processes must be at least 1, got {launch.num_processes}")
    if launch.zero_stage not in (None, 0, 1, 2):
        raise ConfigError(f"zero_stage must be 0, 1 or 2 (ZeRO-3 is refused by the run), got "
                          f"{launch.zero_stage}")
    profiles = profiles or Profiles()
    direct = getattr(config, "proxy", None) == "none" and bool(getattr(config, "reward", None))
    recipe = "lcd" if not getattr(config, "reward", None) else (
        "rg-lcd direct" if direct else "rg-lcd LRM")
    plan = MemoryPlan(recipe=recipe, config=config, launch=launch)
    models = resolve_models(config, plan.notes)
    _resident(plan, config, launch, models)
    _phases(plan, config, launch, models, profiles, direct)
    return plan


def _precisions(config: Any, launch: Launch) -> tuple[Precision, Precision, Precision]:
    """``(student, teacher, target)`` precisions: the student's fp32 weights under autocast
    (bf16 weights under DeepSpeed with mixed precision), the frozen teacher in the weight dtype,
    the fp32 EMA target under the same autocast."""
    weight = weight_dtype(config.mixed_precision)
    autocast = weight if weight != torch.float32 else None
    student = Precision(torch.float32, autocast)
    if launch.deepspeed and autocast is not None:
        student = Precision(weight, autocast)
    return student, Precision(weight, autocast), Precision(torch.float32, autocast)


def _lora(config: Any) -> tuple | None:
    if not config.use_lora:
        return None
    targets = tuple(config.lora_target_modules) if config.lora_target_modules else None
    return (config.lora_rank, config.lora_alpha, targets)


def _vae_dtype(config: Any) -> torch.dtype:
    weight = weight_dtype(config.mixed_precision)
    separate = config.pretrained_vae_model_name_or_path or config.backbone_params.get(
        "pretrained_vae_model_name_or_path")
    if (config.backbone == "stable-diffusion-xl" and weight == torch.float16 and not separate):
        return torch.float32  # SDXL's own VAE overflows in fp16; the backbone keeps it fp32
    return weight


def _resident(plan: MemoryPlan, config: Any, launch: Launch, models: Models) -> None:
    n = launch.num_processes
    shard_states = n if launch.deepspeed and launch.zero_stage >= 1 else 1
    shard_grads = n if launch.deepspeed and launch.zero_stage >= 2 else 1
    weight = weight_dtype(config.mixed_precision)
    unet = models.teacher["unet"]
    total, trained, states_8bit = student_counts(unet, config.unet_time_cond_proj_dim, _lora(config))
    frozen = total - trained
    engine_half = launch.deepspeed and weight != torch.float32
    width = 2 if engine_half else 4
    dtype_name = _NAMES[weight] if engine_half else "fp32"
    add = plan.resident.append
    if config.use_lora:
        add(Line("student UNet base weights (frozen)", width * frozen,
                 f"{frozen / 1e6:.0f} M x {dtype_name}: the student is a full fp32 copy of the "
                 "teacher UNet with adapters on it, beside the teacher"))
        add(Line("student trained weights (LoRA + guidance embedding)", width * trained,
                 f"{trained / 1e6:.1f} M x {dtype_name}"))
    else:
        add(Line("student UNet weights (trained)", width * trained,
                 f"{trained / 1e6:.0f} M x {dtype_name}"
                 + (" (DeepSpeed's copy)" if engine_half else "")))
    if engine_half:
        add(Line("fp32 master weights", 4 * trained / shard_states,
                 f"DeepSpeed's, 1/{shard_states} per GPU" if shard_states > 1 else "DeepSpeed's"))
    grad_width = 2 if engine_half else 4
    grads = grad_width * trained / shard_grads
    if n > 1 or launch.deepspeed:
        note = (f"{_NAMES[weight] if engine_half else 'fp32'}, 1/{shard_grads} per GPU"
                if shard_grads > 1 else "fp32, in DDP's all-reduce buckets" if not launch.deepspeed
                else "")
        add(Line("gradients", grads, note))
        if launch.deepspeed:
            add(Line("ZeRO reduce bucket", grad_width * min(ZERO_REDUCE_BUCKET, trained),
                     "DeepSpeed's default reduce_bucket_size"))
        elif not DDP_GRADIENT_AS_BUCKET_VIEW:  # pragma: no cover - the code sets it
            add(Line("DDP gradient bucket copy", 4 * trained))
        else:
            plan.notes.append("DDP keeps no second gradient copy: it is built with "
                              "gradient_as_bucket_view=True (else +4 bytes per trained parameter)")
    if config.use_8bit_adam:
        add(Line("optimiser states (8-bit AdamW)", states_8bit / shard_states,
                 "2 bytes per parameter (fp32 for tensors under 4096 elements)"
                 + (f", 1/{shard_states} per GPU" if shard_states > 1 else "")))
        plan.notes.append("use_8bit_adam needs bitsandbytes on the GPU machine (without it the "
                          "run falls back to AdamW: 8 bytes per parameter)")
    else:
        add(Line("optimiser states (AdamW)", 8 * trained / shard_states,
                 "fp32 exp_avg + exp_avg_sq" + (f", 1/{shard_states} per GPU"
                                                if shard_states > 1 else "")))
    if not config.use_lora:
        add(Line("EMA target UNet (fp32)", 4 * total, "the consistency target, a full copy"))
    teacher_count = count_parameters(unet)
    add(Line(f"teacher UNet ({_NAMES[weight]}, frozen)", _SIZES[weight] * teacher_count,
             f"{teacher_count / 1e6:.0f} M"))
    vae_dtype = _vae_dtype(config)
    vae_count = count_parameters(models.vae)
    add(Line(f"VAE ({_NAMES[vae_dtype]})", _SIZES[vae_dtype] * vae_count,
             f"{vae_count / 1e6:.0f} M"))
    for part, spec in models.teacher.items():
        if part.startswith("text_encoder"):
            count = count_parameters(spec)
            add(Line(f"{part.replace('_', ' ')} ({_NAMES[weight]})", _SIZES[weight] * count,
                     f"{count / 1e6:.0f} M"))
    if models.reward is not None:
        count = (count_parameters(models.reward) if models.reward.kind != "imagereward"
                 else imagereward_count())
        add(Line(f"reward model '{config.reward}' ({_NAMES[models.reward_dtype]})",
                 _SIZES[models.reward_dtype] * count, f"{count / 1e6:.0f} M"))
    if models.proxy is not None:
        count, trainable = proxy_counts(models.proxy)
        add(Line("proxy (LRM, fp32) and its AdamW", 4 * count + 8 * trainable,
                 f"{count / 1e6:.1f} M, {trainable / 1e6:.2f} M trained"))


def _phases(plan: MemoryPlan, config: Any, launch: Launch, models: Models,
            profiles: Profiles, direct: bool) -> None:
    unet = models.teacher["unet"]
    batch = config.train_batch_size
    factor = vae_factor(models.vae)
    side = config.resolution // factor
    student_precision, teacher_precision, target_precision = _precisions(config, launch)
    lora, dim, ckpt = _lora(config), config.unet_time_cond_proj_dim, config.gradient_checkpointing
    vae_dtype = _vae_dtype(config)
    single = launch.num_processes == 1 and not launch.deepspeed
    total, trained, _ = student_counts(unet, dim, lora)

    def unet_profile(precision: Precision, trained_: bool, checkpointing: bool = False,
                     adapters: tuple | None = None, w: int | None = dim):
        key = (f"unet;{precision.key()};trained={trained_};ckpt={checkpointing};"
               f"w={w};lora={adapters}")
        return profiles.get(unet, key, lambda: unet_run(
            unet, precision, trained=trained_, checkpointing=checkpointing,
            time_cond_proj_dim=w, lora=adapters))

    student = unet_profile(student_precision, True, ckpt, lora)
    teacher = unet_profile(teacher_precision, False, w=None)
    # the EMA target (full fine-tuning) or, with LoRA, the online student under no_grad
    target = (unet_profile(target_precision, False) if not lora
              else unet_profile(student_precision, False, adapters=lora))
    kept = student.kept_bytes(batch, side)
    teacher_batch = 2 * batch if config.batched_teacher_call else batch

    encode = profiles.get(models.vae, f"vae-encode;{_NAMES[vae_dtype]}",
                          lambda: vae_encode_run(models.vae, vae_dtype))
    plan.phases["encode"] = [Line("VAE encoder (no grad)", encode.peak_bytes(batch, side))]

    step = [
        Line("student forward + backward", student.peak_bytes(batch, side, gradients=single),
             ("gradient checkpointing" if ckpt else "no gradient checkpointing")
             + ("; gradients created in backward" if single else "")),
        Line("teacher forward (no grad)", kept + teacher.peak_bytes(teacher_batch, side),
             f"batch {teacher_batch}, on top of the student's kept activations"),
        Line("EMA target forward (no grad)", kept + target.peak_bytes(batch, side),
             "on top of the student's kept activations"),
    ]
    name = "student" + (" (LoRA)" if lora else "")
    plan.per_sample.append(_per_sample(f"{name} UNet, kept for backward", student, side,
                                       "gradient checkpointing" if ckpt else "no checkpointing"))
    other = unet_profile(student_precision, True, not ckpt, lora)
    plan.per_sample.append(_per_sample(f"{name} UNet, kept for backward", other, side,
                                       "with gradient checkpointing" if not ckpt
                                       else "without gradient checkpointing", alternative=True))
    if models.reward is not None and direct:
        vae_ckpt = config.vae_gradient_checkpointing
        decoder = _decoder(profiles, models.vae, vae_dtype, vae_ckpt)
        reward = _reward_profile(plan, profiles, models, factor, graph=True)
        step.append(Line("VAE decoder with its graph", kept + decoder.peak_bytes(batch, side),
                         "decoder checkpointing" if vae_ckpt else "no decoder checkpointing"))
        step.append(Line("reward model forward + backward",
                         kept + decoder.kept_bytes(batch, side) + reward.peak_bytes(batch, side),
                         "on top of the student's and the decoder's kept activations"))
        plan.per_sample.append(_per_sample("VAE decoder, kept for backward", decoder, side,
                                           "checkpointing" if vae_ckpt else "no checkpointing"))
        plan.per_sample.append(_per_sample(
            "VAE decoder, kept for backward", _decoder(profiles, models.vae, vae_dtype, not vae_ckpt),
            side, "with vae_gradient_checkpointing" if not vae_ckpt else
            "without vae_gradient_checkpointing", alternative=True))
        plan.per_sample.append(_per_sample("reward model forward + backward", reward, side,
                                           "", peak=True))
    if models.proxy is not None and not direct:
        proxy = profiles.get(models.proxy, f"proxy;tokens={models.proxy_tokens};update=False",
                             lambda: proxy_run(models.proxy, models.proxy_tokens, update=False))
        step.append(Line("proxy (LRM) with its graph", kept + proxy.peak_bytes(batch, side)))
        plan.per_sample.append(_per_sample("proxy (LRM), kept for backward", proxy, side, ""))
    plan.phases["student step"] = step

    width = 2 if (launch.deepspeed and student_precision.params != torch.float32) else 4
    if config.use_8bit_adam:
        workspace = 0.0  # bitsandbytes updates in place
    elif launch.deepspeed:
        shards = launch.num_processes if launch.zero_stage >= 1 else 1
        workspace = 8 * trained / shards  # fp32 gradient partition + AdamW's foreach temporary
    elif launch.device == "cuda":
        workspace = 0.0  # fused AdamW
    else:
        workspace = 4 * trained  # foreach AdamW's sqrt(exp_avg_sq) temporary
    optimiser = [Line("optimiser step workspace", workspace,
                      "fused AdamW" if workspace == 0 and launch.device == "cuda" else "")]
    if single:
        optimiser.append(Line("optimiser step workspace and gradients", workspace + width * trained,
                              "one process: the gradients live until the step"))
    plan.phases["optimiser step"] = optimiser

    if models.proxy is not None and not direct and models.reward is not None:
        chunk = min(config.vae_decode_batch_size, 3 * min(config.proxy_batch_size, batch))
        decode = _decoder(profiles, models.vae, vae_dtype, False, graph=False)
        scoring = _reward_profile(plan, profiles, models, factor, graph=False)
        update = profiles.get(models.proxy, f"proxy;tokens={models.proxy_tokens};update=True",
                              lambda: proxy_run(models.proxy, models.proxy_tokens, update=True))
        candidates = 3 * min(config.proxy_batch_size, batch)
        plan.phases["proxy update"] = [
            Line("decoding candidates (no grad)", decode.peak_bytes(chunk, side),
                 f"vae_decode_batch_size {chunk}"),
            Line("expert RM scoring them (no grad)",
                 decode.kept_bytes(chunk, side) + scoring.peak_bytes(chunk, side)),
            Line("proxy update", update.peak_bytes(candidates, side, gradients=True),
                 f"{candidates} candidates"),
        ]


class _NoProfile:
    """An activation profile that could not be measured: counted as nothing."""

    def kept_bytes(self, batch: int, side: int) -> float:
        return 0.0

    def peak_bytes(self, batch: int, side: int, gradients: bool = False) -> float:
        return 0.0


def _reward_profile(plan: MemoryPlan, profiles: Profiles, models: Models, factor: int,
                    graph: bool) -> Any:
    """The RM's profile; nothing (with a note) when it is not in the table and its plugin, which
    the measurement builds it from, is not installed here."""
    key = f"reward;{_NAMES[models.reward_dtype]};graph={graph};factor={factor}"
    try:
        return profiles.get(models.reward, key, lambda: reward_run(
            models.reward, models.reward_dtype, graph=graph, factor=factor))
    except ImportError as error:
        plan.notes.append(f"the reward model's activations are not counted: measuring them needs "
                          f"its plugin ({error})")
        return _NoProfile()


def _decoder(profiles: Profiles, vae: ModelSpec, dtype: torch.dtype, checkpointing: bool,
             graph: bool = True):
    key = f"vae-decode;{_NAMES[dtype]};graph={graph};ckpt={checkpointing and graph}"
    return profiles.get(vae, key, lambda: vae_decode_run(vae, dtype, graph=graph,
                                                         checkpointing=checkpointing))


def _per_sample(name: str, profile: Any, side: int, note: str, alternative: bool = False,
                peak: bool = False) -> Line:
    """Bytes per sample at latent side ``side`` (kept for backward, or the run's peak)."""
    if peak:
        value = profile.peak_bytes(2, side) - profile.peak_bytes(1, side)
    else:
        value = profile.kept_bytes(2, side) - profile.kept_bytes(1, side)
    return Line(name + (" (alternative)" if alternative else ""), value, note)


# ---------------------------------------------------------------- from a file


def load_for_plan(recipe: str, path: str | Path | None, overrides: dict[str, Any]) -> Any:
    """The recipe's config from a file and overrides: unknown keys and wrong types refused, but
    not validated (that needs installed plugins and reachable data; the plan reads model configs
    only)."""
    from ..api import _required_given
    from ..config import apply_aliases, check_keys, load_config, normalise_key
    from ..plugins import get_host
    from ..recipes.lcd_config import LCDConfig

    spec = get_host().get("recipe", recipe)
    config_class = getattr(spec.factory, "Config", None)
    # refused before the embedded defaults: draft's and grpo's first train a student to tune
    if config_class is None or not issubclass(config_class, LCDConfig):
        raise not_planned(f"the '{recipe}' recipe")
    overrides = apply_aliases(config_class, {normalise_key(k): v for k, v in overrides.items()})
    check_keys(config_class, overrides)
    if path is None and not _required_given(config_class, overrides):
        embedded = getattr(spec.factory, "embedded_defaults", None)  # as rewardkit.api.recipe
        overrides = {**(embedded(dict(overrides)) if embedded is not None else {}), **overrides}
    return load_config(config_class, path, overrides, validate=False)


def plan_file(path: str | Path, recipe: str | None = None, *, num_processes: int = 1,
              zero_stage: int | None = None, profiles: Profiles | None = None,
              overrides: dict[str, Any] | None = None) -> MemoryPlan:
    """Plan the config file ``path`` (recipe: ``rg-lcd`` when the file names a reward, else
    ``lcd``) on ``num_processes`` GPUs."""
    from ..config import load_config
    from ..recipes.rg_lcd_config import RGLCDConfig

    if recipe is None:
        probe = load_config(RGLCDConfig, path, dict(overrides or {}), validate=False)
        recipe = "rg-lcd" if probe.reward else "lcd"
    config = load_for_plan(recipe, path, dict(overrides or {}))
    launch = Launch(num_processes=num_processes, zero_stage=zero_stage)
    return plan_config(config, launch, profiles or Profiles())


__all__ = ["GiB", "Launch", "Line", "MemoryPlan", "load_for_plan", "plan_config", "plan_file"]
