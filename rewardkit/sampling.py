"""Sample a saved student (LCM, 1-8 steps) or a teacher (DDIM + classifier-free guidance), and
sample a student UNet in process on its backbone (:func:`sample_lcm`, :func:`sample_lcm_latents`:
training's validation grids and the LRM's preference sets use them).

From Python::

    from rewardkit.sampling import sample_student, sample_teacher

    result = sample_student("runs/rg-lcd/final", ["a photo of a cat"], steps=4, guidance_scale=7.5)
    result.images[0].save("cat.png"); print(result.ms_per_image, result.unet_evaluations)

From the terminal::

    rewardkit sample runs/rg-lcd/final "a photo of a cat" --steps 2 --guidance 7.5 --seed 0 -o cat.png
    rewardkit sample runs/rg-lcd/final --prompt-file prompts.txt -o grid.png --grid
    rewardkit sample stabilityai/stable-diffusion-2-1 "a photo of a cat" --teacher -o teacher.png

Any diffusers Stable Diffusion folder works as a student (it is loaded with
``DiffusionPipeline.from_pretrained`` and given an ``LCMScheduler`` built from its own scheduler
config); no rewardkit code is needed to *use* a saved student, only to time and batch it here.
For a w-conditioned student, diffusers embeds ``w = guidance_scale - 1`` and runs one UNet call
per step (no separate unconditional pass); a teacher runs two (batched) when guidance > 1.

To sample a *live* student during training, with gradients through chosen steps (reward
fine-tuning through the sampler), use :func:`sample_consistency` (from
:mod:`rewardkit.sampling_grad`, re-exported here).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, Optional, Sequence

import torch
import typer

from .consistency import guidance_scale_embedding
from .errors import ConfigError
from .sampling_chain import chain_step, initial_noise_sigma, set_chain_timesteps
from .sampling_grad import resolve_grad_steps, sample_consistency  # noqa: F401 - re-exported


@dataclass
class SampleResult:
    """Images plus how long they took."""

    images: list = field(default_factory=list)  # list[PIL.Image.Image]
    seconds: float = 0.0
    unet_evaluations: int = 0  # UNet forward calls (a CFG call on [uncond; cond] counts once)
    steps: int = 0
    guidance_scale: float = 0.0

    @property
    def ms_per_image(self) -> float:
        """Wall-clock milliseconds per image (model loading excluded)."""
        return 1000.0 * self.seconds / max(len(self.images), 1)

    def summary(self) -> str:
        """One line: images, steps, UNet calls and time per image."""
        return (f"{len(self.images)} image(s), {self.steps} step(s), {self.unet_evaluations} UNet "
                f"call(s), {self.ms_per_image:.1f} ms/image")


def pil_to_tensor(images: Sequence[Any]) -> torch.Tensor:
    """``[N, 3, H, W]`` float tensor in [0, 1] from PIL images (or HWC uint8 arrays)."""
    import numpy as np

    arrays = [np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
              for image in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0


def resolve_device(device: str | None) -> torch.device:
    """``"auto"``/``None`` -> CUDA when available, else CPU; anything else as given."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"--device: {exc}") from None
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            raise ConfigError(f"--device {device}: this machine has no CUDA device (or torch was "
                              "built without CUDA); use --device cpu or auto")
        if resolved.index is not None and resolved.index >= count:
            raise ConfigError(f"--device {device}: this machine has {count} CUDA device(s), "
                              f"cuda:0 to cuda:{count - 1}")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {device}: MPS is not available here; use --device cpu or "
                          "auto")
    return resolved


def bakes_guidance(model_dir: str | Path) -> bool:
    """Whether a student folder has its guidance baked in: a flow-matching (SD3) student, whose
    transformer has no guidance input, so it was distilled at one guided scale and samples
    without classifier-free guidance (``guidance_scale = 1``). A UNet student (LCM) embeds the
    scale instead. Read from the folder's scheduler config without loading anything; a hub id
    or unreadable config: ``False`` (:func:`load_pipeline` decides from the loaded scheduler,
    hub ids included)."""
    import json

    config = (Path(os.path.expanduser(str(model_dir))) / "scheduler" / "scheduler_config.json")
    try:
        name = json.loads(config.read_text()).get("_class_name", "")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(name, str) and name.startswith("FlowMatch")


def _absent_parts(model_dir: str | Path) -> dict[str, None]:
    """The parts a local pipeline folder saved as absent (``[null, null]`` in
    ``model_index.json``, e.g. an SD3 pipeline without T5), which diffusers loads only when told
    they are None."""
    import json

    index = Path(os.path.expanduser(str(model_dir))) / "model_index.json"
    try:
        parts = json.loads(index.read_text())
    except (OSError, ValueError):
        return {}
    return {name: None for name, value in parts.items()
            if isinstance(value, list) and value and all(v is None for v in value)}


def load_pipeline(model_dir: str | Path, scheduler: str = "lcm", device: str | None = "auto",
                  dtype: str = "float32") -> Any:
    """Load a diffusers pipeline folder (or hub id) with an ``LCMScheduler`` (``"lcm"``, a
    student) or ``DDIMScheduler`` (``"ddim"``, a teacher). A flow-matching pipeline (SD3) keeps
    its own ``FlowMatch*`` scheduler either way: it is what its student was distilled for and
    what its teacher's Euler sampling is. The call settings the folder's ``sampling.json``
    records (:mod:`rewardkit.call_defaults`; a hub id's is fetched once the model loaded) are kept
    as ``pipe.rewardkit_call_kwargs`` and passed by :func:`run_pipeline`; a student whose
    guidance is baked in (its scheduler is a ``FlowMatch*`` one: an SD3 student) gets
    ``pipe.rewardkit_baked_guidance = True``, which :func:`run_pipeline` samples without
    classifier-free guidance."""
    from diffusers import DDIMScheduler, DiffusionPipeline, LCMScheduler

    from .call_defaults import hub_call_defaults, read_call_defaults

    from .models import (check_pipeline_location, check_student_folder, naming_load_errors,
                         pipeline_dtype_kwarg, resolve_dtype, saved_parts)

    check_pipeline_location(str(model_dir), key="model_dir", parts=saved_parts(str(model_dir)))
    if scheduler == "lcm":
        check_student_folder(str(model_dir))
    call_kwargs = read_call_defaults(model_dir)  # before loading: a broken file is named first
    target = resolve_device(device)  # before loading: a device that is not there is named
    with naming_load_errors(f"model_dir '{model_dir}'"):
        pipe = DiffusionPipeline.from_pretrained(str(model_dir), **_absent_parts(model_dir),
                                                 **pipeline_dtype_kwarg(resolve_dtype(dtype)))
    if not type(pipe.scheduler).__name__.startswith("FlowMatch"):
        scheduler_class = {"lcm": LCMScheduler, "ddim": DDIMScheduler}[scheduler]
        pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config)
    if hasattr(pipe, "safety_checker") and getattr(pipe, "safety_checker", None) is not None:
        pipe.safety_checker = None  # a research tool compares raw samples
    pipe.set_progress_bar_config(disable=True)
    pipe = pipe.to(target)
    if not Path(os.path.expanduser(str(model_dir))).is_dir():  # a hub id: now that it loaded
        call_kwargs = hub_call_defaults(str(model_dir))
    pipe.rewardkit_call_kwargs = call_kwargs
    # the loaded scheduler decides, so a student given by hub id is covered too
    flow = type(pipe.scheduler).__name__.startswith("FlowMatch")
    pipe.rewardkit_baked_guidance = scheduler == "lcm" and flow
    return pipe


def _count_unet_calls(unet: torch.nn.Module) -> tuple[list[int], Any]:
    counter = [0]

    def hook(*_: Any) -> None:
        counter[0] += 1

    return counter, unet.register_forward_hook(hook)


def run_pipeline(pipe: Any, prompts: Sequence[str], steps: int, guidance_scale: float, seed: int = 0,
                 batch_size: int = 8, height: int | None = None, width: int | None = None,
                 on_batch: Callable[[int], None] | None = None,
                 seeds: Sequence[int] | None = None) -> SampleResult:
    """Sample ``prompts`` with a loaded pipeline in batches; image ``i`` uses seed ``seed + i``
    (or ``seeds[i]`` when given).

    Per-image seeds make an image independent of the batch size and of its neighbours. A
    student whose guidance is baked in (``pipe.rewardkit_baked_guidance``, an SD3 student)
    samples with ``guidance_scale = 1`` whatever ``guidance_scale`` says: guiding it again would
    double the cost and guide twice. The result records the scale used.
    """
    if steps < 1:
        raise ConfigError(f"steps must be at least 1, got {steps}")
    if not math.isfinite(guidance_scale):
        raise ConfigError(f"the guidance scale (--guidance) must be a finite number, got "
                          f"{guidance_scale}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    prompts = list(prompts)
    if not prompts:
        raise ConfigError("no prompts to sample")
    if seeds is None:
        seeds = [seed + i for i in range(len(prompts))]
    if len(seeds) != len(prompts):
        raise ConfigError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    factor = int(getattr(pipe, "vae_scale_factor", 1) or 1)
    for name, side in (("height", height), ("width", width)):
        if side is not None and (side < factor or side % factor):
            raise ConfigError(f"--{name} must be a positive multiple of {factor} (the VAE's "
                              f"downscale factor), got {side}; try {max(factor, side // factor * factor)}")
    device = pipe.device
    # the denoiser: a UNet, or an SD3 pipeline's MMDiT transformer
    counter, handle = _count_unet_calls(getattr(pipe, "unet", None) or pipe.transformer)
    call_kwargs = dict(getattr(pipe, "rewardkit_call_kwargs", None) or {})
    if getattr(pipe, "rewardkit_baked_guidance", False):
        guidance_scale = 1.0
    result = SampleResult(steps=steps, guidance_scale=guidance_scale)
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            generators = [torch.Generator(device=device.type).manual_seed(int(s))
                          for s in seeds[start:start + len(chunk)]]
            began = time.perf_counter()
            with torch.inference_mode():
                output = pipe(chunk, num_inference_steps=steps, guidance_scale=guidance_scale,
                              generator=generators, height=height, width=width, output_type="pil",
                              **call_kwargs)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            result.seconds += time.perf_counter() - began
            result.images.extend(output.images)
            if on_batch is not None:
                on_batch(len(chunk))
    finally:
        handle.remove()
    result.unet_evaluations = counter[0]
    return result


def sample_student(model_dir: str | Path, prompts: Sequence[str] | str, steps: int = 4,
                   guidance_scale: float = 7.5, seed: int = 0, *, device: str | None = "auto",
                   dtype: str = "float32", batch_size: int = 8, height: int | None = None,
                   width: int | None = None, on_batch: Callable[[int], None] | None = None) -> SampleResult:
    """Sample a saved student with ``LCMScheduler`` in ``steps`` steps (1, 2, 4, ...)."""
    pipe = load_pipeline(model_dir, "lcm", device, dtype)
    prompts = [prompts] if isinstance(prompts, str) else prompts
    return run_pipeline(pipe, prompts, steps, guidance_scale, seed, batch_size, height, width, on_batch)


def sample_teacher(model_dir: str | Path, prompts: Sequence[str] | str, steps: int = 50,
                   guidance_scale: float = 7.5, seed: int = 0, *, device: str | None = "auto",
                   dtype: str = "float32", batch_size: int = 8, height: int | None = None,
                   width: int | None = None, on_batch: Callable[[int], None] | None = None) -> SampleResult:
    """Sample a teacher with ``DDIMScheduler`` and classifier-free guidance (default 50 steps)."""
    pipe = load_pipeline(model_dir, "ddim", device, dtype)
    prompts = [prompts] if isinstance(prompts, str) else prompts
    return run_pipeline(pipe, prompts, steps, guidance_scale, seed, batch_size, height, width, on_batch)


def make_grid(images: Sequence[Any], columns: int | None = None) -> Any:
    """Paste same-sized PIL images into one grid image (``columns`` defaults to ~square)."""
    from PIL import Image

    if not images:
        raise ConfigError("no images to put in a grid")
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    w, h = images[0].size
    grid = Image.new("RGB", (columns * w, rows * h))
    for i, image in enumerate(images):
        grid.paste(image, ((i % columns) * w, (i // columns) * h))
    return grid


def read_prompt_file(path: str | Path) -> list[str]:
    """Non-empty lines of a text file, stripped."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--prompt-file: '{path}' does not exist")
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    prompts = [p for p in prompts if p]
    if not prompts:
        raise ConfigError(f"--prompt-file: '{path}' holds no prompts")
    return prompts


#: The PNG text chunk ``rewardkit sample`` marks its images with: it replaces only those.
SAMPLE_MARK = ("rewardkit", "sample")


def output_paths(output: Path, count: int, grid: bool) -> list[Path]:
    """Where :func:`save_images` writes ``count`` images: ``output``, or with several and no
    grid ``output_000.png`` ..."""
    if count == 1 or grid:
        return [output]
    suffix = output.suffix or ".png"
    return [output.with_name(f"{output.stem}_{i:03d}{suffix}") for i in range(count)]


def check_outputs(paths: Sequence[Path], overwrite: bool = False) -> None:
    """Refuse, before sampling, to replace a file ``rewardkit sample`` did not write (a PNG
    without its mark, any other file, a folder), unless ``overwrite``."""
    from PIL import Image

    for path in paths:
        if path.is_dir():
            raise ConfigError(f"--output '{path}' is a folder; give a file name like "
                              f"{path / 'sample.png'}")
        if not path.exists() or overwrite:
            continue
        try:
            with Image.open(path) as image:
                ours = image.format == "PNG" and image.info.get(SAMPLE_MARK[0]) == SAMPLE_MARK[1]
        except (OSError, ValueError):
            ours = False
        if not ours:
            raise ConfigError(f"--output '{path}' exists and is not a PNG rewardkit sample "
                              "wrote; choose another --output, or pass --overwrite to replace it")


def save_images(images: Sequence[Any], output: Path, grid: bool) -> list[Path]:
    """One image -> ``output``; several -> a grid at ``output`` or ``output_000.png`` ... files
    (PNGs carry :data:`SAMPLE_MARK`)."""
    from PIL import PngImagePlugin

    paths = output_paths(output, len(images), grid)
    if len(paths) == 1 and len(images) > 1:
        images = [make_grid(images)]
    mark = PngImagePlugin.PngInfo()
    mark.add_text(*SAMPLE_MARK)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        for image, path in zip(images, paths):
            if path.suffix.lower() in ("", ".png"):
                image.save(path, format="PNG", pnginfo=mark)
            else:
                image.save(path)
    except (OSError, ValueError) as error:  # a folder that is a file, an unknown extension
        raise ConfigError(f"--output '{output}' cannot be written ({error}); choose another "
                          "--output (.png, .jpg, ...)") from None
    return paths


# ---------------------------------------------------------------- in-process: a student on its backbone
# (training's validation grids, the LRM's preference sets): no saved pipeline, no diffusers
# pipeline object; ``backbone`` is a rewardkit.backbones.Backbone, ``cond`` its Conditioning.


def latent_shape(backbone: Any, latent_size: int | Sequence[int] | None = None) -> tuple[int, int]:
    """``(h, w)`` of latents to sample: ``latent_size`` (one side, or ``(h, w)``), else the
    teacher's native ``backbone.sample_size``. Callers that sample for a run pass the training
    latents' size: a model trained at another resolution than the teacher's native one must be
    sampled (and its samples compared with ground truths) at that resolution."""
    if latent_size is None:
        return int(backbone.sample_size), int(backbone.sample_size)
    if isinstance(latent_size, int):
        return latent_size, latent_size
    height, width = (int(side) for side in latent_size)
    return height, width


@torch.no_grad()
def sample_lcm(backbone: Any, unet: torch.nn.Module, cond: Any, *, steps: int,
               seed: int, guidance_scale: float, time_cond_proj_dim: int | None,
               original_inference_steps: int = 50, timestep_scaling: float = 10.0,
               latent_size: int | Sequence[int] | None = None) -> torch.Tensor:
    """Images in ``[0, 1]`` from ``unet`` with an ``LCMScheduler`` of ``steps`` steps.

    ``cond``: the prompts' conditioning (``backbone.encode_prompts``). The guidance embedding is
    of ``w = guidance_scale - 1``, as diffusers' pipelines do. ``latent_size``: see
    :func:`latent_shape` (default: the teacher's native size).
    """
    denoised = sample_lcm_latents(
        backbone, unet, cond, steps=steps, seed=seed, guidance_scale=guidance_scale,
        time_cond_proj_dim=time_cond_proj_dim, original_inference_steps=original_inference_steps,
        timestep_scaling=timestep_scaling, latent_size=latent_size)
    return backbone.decode_latents(denoised).float().cpu()


@torch.no_grad()
def sample_lcm_latents(backbone: Any, unet: torch.nn.Module, cond: Any, *, steps: int,
                       seed: int, guidance_scale: float, time_cond_proj_dim: int | None,
                       original_inference_steps: int = 50, timestep_scaling: float = 10.0,
                       latent_size: int | Sequence[int] | None = None) -> torch.Tensor:
    """The scaled latents :func:`sample_lcm` decodes (in ``unet``'s dtype, on its device): the
    chain of ``backbone.lcm_scheduler()`` (``LCMScheduler``, or a flow teacher's
    ``FlowMatchEulerDiscreteScheduler``), as the saved student's diffusers pipeline runs it."""
    scheduler = backbone.lcm_scheduler(original_inference_steps, timestep_scaling)
    device = cond.prompt_embeds.device
    set_chain_timesteps(scheduler, steps, device, original_inference_steps)
    batch = len(cond)
    height, width = latent_shape(backbone, latent_size)
    generator = torch.Generator().manual_seed(seed)
    dtype = next(unet.parameters()).dtype
    latents = torch.randn((batch, backbone.latent_channels, height, width), generator=generator)
    latents = (latents * initial_noise_sigma(scheduler)).to(device=device, dtype=dtype)
    w_embedding = None
    if time_cond_proj_dim:
        w = torch.full((batch,), guidance_scale - 1.0)
        w_embedding = guidance_scale_embedding(w, time_cond_proj_dim).to(device=device, dtype=dtype)
    for t in scheduler.timesteps:
        out = backbone.predict(unet, latents, t.expand(batch).to(device), cond.to(dtype=dtype),
                               w_embedding)
        # LCMScheduler re-noises with torch.randn(generator=...) on the generator's device; its
        # last step returns its x0 prediction, a flow scheduler's its last Euler step to s = 0
        latents, _ = chain_step(scheduler, backbone.schedule, out, t, latents, generator)
        latents = latents.to(dtype)
    return latents


def sample_command(
    model_dir: Annotated[str, typer.Argument(help="Saved student folder (or teacher with --teacher): "
                                             "a diffusers pipeline folder or hub id.")],
    prompt: Annotated[Optional[str], typer.Argument(help="The prompt (or use --prompt-file).")] = None,
    steps: Annotated[Optional[int], typer.Option(
        "--steps", "-n", help="Sampling steps (default: 4 for a student, 50 with --teacher).")] = None,
    guidance: Annotated[float, typer.Option("--guidance", "-g", help="Guidance scale.")] = 7.5,
    seed: Annotated[int, typer.Option(help="Seed of the first image (image i uses seed+i).")] = 0,
    output: Annotated[Path, typer.Option("--output", "-o", help="Output PNG (several prompts: "
                                         "OUTPUT_000.png, ... or a --grid).")] = Path("sample.png"),
    prompt_file: Annotated[Optional[Path], typer.Option(
        "--prompt-file", "-f", help="Text file with one prompt per line.")] = None,
    teacher: Annotated[bool, typer.Option(
        "--teacher", help="Sample MODEL_DIR as a teacher: DDIM + classifier-free guidance.")] = False,
    grid: Annotated[bool, typer.Option("--grid", help="Write one grid image for several prompts.")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Prompts per batch.")] = 8,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1, ...")] = "auto",
    dtype: Annotated[str, typer.Option(help="float32, float16 or bfloat16.")] = "float32",
    height: Annotated[Optional[int], typer.Option(help="Image height (default: the model's).")] = None,
    width: Annotated[Optional[int], typer.Option(help="Image width (default: the model's).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace OUTPUT files that "
                         "rewardkit sample did not write (its own it replaces anyway).")] = False,
) -> None:
    """Sample a saved student (LCMScheduler) or, with --teacher, a teacher (DDIM + CFG)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if (prompt is None) == (prompt_file is None):
        raise ConfigError("give exactly one of PROMPT or --prompt-file")
    prompts = read_prompt_file(prompt_file) if prompt_file is not None else [prompt]
    check_outputs(output_paths(Path(output), len(prompts), grid), overwrite)
    steps = steps if steps is not None else (50 if teacher else 4)
    sampler = sample_teacher if teacher else sample_student
    console = Console(stderr=True)
    with Progress(TextColumn("[bold]sampling[/]"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as progress:
        task = progress.add_task("sampling", total=len(prompts))
        result = sampler(model_dir, prompts, steps=steps, guidance_scale=guidance, seed=seed,
                         device=device, dtype=dtype, batch_size=batch_size, height=height,
                         width=width, on_batch=lambda n: progress.advance(task, n))
    paths = save_images(result.images, Path(output), grid)
    where = str(paths[0]) if len(paths) == 1 else f"{paths[0]} ... {paths[-1]}"
    console.print(f"[green]wrote[/] {where}: {result.summary()}", highlight=False)

