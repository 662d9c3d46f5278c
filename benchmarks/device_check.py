"""One command that measures rewardkit on a GPU at the paper's scale, stage by stage.

Models are SD 2.1 (768 px, v-prediction), SDXL (1024 px) and a CLIP ViT-H/14 reward model (the
size of HPSv2's) at full size with random weights built from their configs
(:mod:`rewardkit.testing.architectures`), loaded through the same ``from_pretrained`` path real
checkpoints take. Everything runs in bf16 mixed precision (fp32 master weights). Stages, in order:

- ``env``: GPU, versions, the bf16 matrix-product rate and copy bandwidth actually reached;
- ``build-sd21``: the SD 2.1 pipeline and the ViT-H/14 CLIP, saved as safetensors;
- ``sd21-lcd``: rewardkit's ``lcd`` step against a transcription of diffusers' LCD step
  (``benchmarks/bench_vs_diffusers.py``), both on the same pre-encoded latents, alternating,
  medians; peak memory of each side on its own; FLOPs per step (torch's FlopCounterMode) and model
  FLOP utilisation; host syncs per step (``torch.cuda.set_sync_debug_mode``);
- ``sd21-rg-lcd-direct``: ``rg-lcd`` with the RM optimised directly (``proxy=none``) at batches
  2-16, VAE decoder checkpointing off and on;
- ``sd21-max-batch``: the largest ``lcd`` batch that fits (doubling, then bisecting), with and
  without gradient checkpointing of the student;
- ``sd21-rg-lcd-lrm``: ``rg-lcd`` with the latent proxy RM (expert decode + score + proxy update);
- ``rm-dtype``: the ViT-H/14 RM's forward and backward in fp32 (TF32 off, rewardkit's default
  until now, and on) and in bf16;
- ``build-sdxl``, ``sdxl-lcd`` (step, memory, FLOPs, syncs, largest batch with checkpointing),
  ``sdxl-lora`` (checkpointed, rank 64).

Each stage runs in its own process (a crash or an out-of-memory state cannot spoil the next) with
its own time limit, and the results file is rewritten after every stage, so a run stopped by a
time limit keeps what it measured. Usage::

    python benchmarks/device_check.py --out device_check.json          # on a GPU: ~8 minutes
    python benchmarks/device_check.py --scale tiny --device cpu        # CPU smoke test

On a machine with torch but without diffusers and the other pure-Python dependencies, carry
their wheels (``diffusers``, ``webdataset``, ``braceexpand``, ``importlib_metadata``) and put this
checkout on ``PYTHONPATH``; the README shows the command.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

#: Stage name -> (time limit in seconds at full scale, function name).
STAGES: dict[str, tuple[int, str]] = {
    "env": (40, "stage_env"),
    "build-sd21": (90, "stage_build_sd21"),
    "sd21-lcd": (100, "stage_sd21_lcd"),
    "sd21-rg-lcd-direct": (90, "stage_sd21_rg_lcd_direct"),
    "sd21-max-batch": (100, "stage_sd21_max_batch"),
    "sd21-rg-lcd-lrm": (60, "stage_sd21_rg_lcd_lrm"),
    "rm-dtype": (40, "stage_rm_dtype"),
    "build-sdxl": (90, "stage_build_sdxl"),
    "sdxl-lcd": (120, "stage_sdxl_lcd"),
    "sdxl-lora": (60, "stage_sdxl_lora"),
}
#: Dense bf16 peak of the H100 / H200 SXM by the vendor's datasheet (MFU's denominator).
H100_BF16_PEAK_FLOPS = 989.4e12


# ---------------------------------------------------------------- measuring helpers


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def allocated(device: torch.device) -> int:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else 0


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak(device: torch.device) -> int:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0


def gib(n: float) -> float:
    return round(n / 2**30, 3)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    sync(device)
    began = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - began


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn`` (matrix products and convolutions, forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def count_syncs(fn: Callable[[], Any], device: torch.device) -> dict[str, Any]:
    """Host synchronisations CUDA reports during one call of ``fn`` (``set_sync_debug_mode``),
    with the places they come from; on a CPU, rewardkit's own counter of value reads."""
    if device.type != "cuda":
        from rewardkit.testing.host_syncs import count_host_syncs

        with count_host_syncs() as syncs:
            fn()
        return {"count": syncs.count, "where": [w for _, w in syncs.calls][:20],
                "method": "rewardkit.testing.host_syncs (CPU: value reads)"}
    places: dict[str, int] = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    count = 0
    for warning in caught:
        if "synchroniz" not in str(warning.message):
            continue
        count += 1
        where = f"{Path(warning.filename).name}:{warning.lineno}"
        places[where] = places.get(where, 0) + 1
    top = sorted(places.items(), key=lambda kv: -kv[1])[:20]
    return {"count": count, "where": dict(top), "method": "torch.cuda.set_sync_debug_mode"}


def model_flop_utilisation(flops: int, seconds: float, ceiling: float | None) -> dict[str, Any]:
    out = {"tflop_per_step": round(flops / 1e12, 3),
           "achieved_tflops": round(flops / seconds / 1e12, 1) if seconds else None,
           "mfu_vs_datasheet_989": round(flops / seconds / H100_BF16_PEAK_FLOPS, 4)
           if seconds else None}
    if ceiling:
        out["mfu_vs_measured_matmul"] = round(flops / seconds / ceiling, 4)
    return out


# ---------------------------------------------------------------- context of one stage


class Stage:
    """What a stage needs: arguments, device, the models folder, and a result it fills in
    (written to disk after every :meth:`record`, so a killed stage keeps what it measured)."""

    def __init__(self, args: argparse.Namespace, result_file: Path) -> None:
        self.args = args
        self.full = args.scale == "full"
        self.device = torch.device(args.device)
        self.models = Path(args.models)
        self.result_file = result_file
        self.result: dict[str, Any] = {}

    def record(self, **values: Any) -> None:
        self.result.update(values)
        self.result_file.write_text(json.dumps(self.result, indent=1, default=str))

    def path(self, name: str) -> Path:
        return self.models / name

    def side(self, arch: str) -> int:
        from rewardkit.testing.architectures import architecture_configs

        return architecture_configs(arch, self.args.scale)["unet"]["sample_size"] * 8

    def ceiling(self) -> float | None:
        env = self.args.env_result or {}
        rate = env.get("matmul_bf16_tflops")
        return rate * 1e12 if rate else None

    def recipe(self, name: str, arch: str, batch: int, **values: Any):
        """A rewardkit recipe on architecture ``arch`` fed pre-encoded latents of ``batch``
        images (encoded once, as ``rewardkit data encode`` stores them)."""
        import rewardkit as rk
        from rewardkit.testing.tiny_training import write_tiny_image_folder

        side = self.side(arch)
        data = write_tiny_image_folder(self.models / f"data-{arch}", count=batch, size=side)
        base = dict(pretrained_teacher_model=str(self.path(arch)), train_shards_path_or_url=str(data),
                    output_dir=str(self.models / f"run-{name}-{arch}-{time.time_ns()}"),
                    resolution=side, train_batch_size=batch, max_train_steps=10**6,
                    learning_rate=1e-6, mixed_precision="bf16" if self.device.type == "cuda" else "no",
                    validation_steps=0, checkpointing_steps=0, report_to="none", seed=0,
                    backbone="stable-diffusion-xl" if arch == "sdxl" else "stable-diffusion")
        base.update(values)
        recipe = rk.recipe(name, base)
        recipe.setup()
        batch_data = next(recipe.batches)
        with torch.no_grad():
            latents = recipe.backbone.encode_images(batch_data["pixel_values"].to(self.device),
                                                    generator=torch.Generator().manual_seed(0))
        recipe.fixed = {"latents": latents.float().cpu(), "captions": list(batch_data["captions"])}
        feed(recipe, batch)
        return recipe


def feed(recipe: Any, batch: int) -> None:
    """Make every following step of ``recipe`` see ``batch`` samples of its fixed latents."""
    latents, captions = recipe.fixed["latents"], recipe.fixed["captions"]
    repeats = -(-batch // latents.shape[0])
    batch_data = {"latents": latents.repeat(repeats, 1, 1, 1)[:batch],
                  "captions": (captions * repeats)[:batch]}
    recipe.batches = itertools.repeat(batch_data)


def step_measure(stage: Stage, recipe: Any, steps: int, warmup: int = 1) -> dict[str, Any]:
    """Median step time and peak memory of ``recipe.train_step`` (after ``warmup`` steps)."""
    device = stage.device
    for _ in range(warmup):
        recipe.train_step()
    resident = allocated(device)
    reset_peak(device)
    times = [timed(recipe.train_step, device) for _ in range(steps)]
    return {"s_per_step": round(statistics.median(times), 4), "rounds_s": [round(t, 4) for t in times],
            "resident_gib": gib(resident), "peak_gib": gib(peak(device))}


def try_step(stage: Stage, recipe: Any, steps: int = 1) -> dict[str, Any]:
    """``step_measure`` that reports an out-of-memory instead of raising it."""
    try:
        return step_measure(stage, recipe, steps, warmup=1)
    except Exception as exc:  # noqa: BLE001 - an OOM is a result here
        if not is_oom(exc):
            raise
        recipe.optimizer.zero_grad(set_to_none=True)
        free_memory(stage.device)
        return {"oom": True}


def max_batch(stage: Stage, recipe: Any, start: int, cap: int, budget_s: float) -> dict[str, Any]:
    """The largest batch whose step fits: doubling from ``start``, then bisecting (to 1/8)."""
    began = time.perf_counter()
    trials: dict[int, Any] = {}

    def fits(b: int) -> bool:
        feed(recipe, b)
        trials[b] = try_step(stage, recipe, steps=1)
        stage.record(**{stage.current_key: {"trials": trials}})
        return not trials[b].get("oom")

    ok, bad, b = 0, None, start
    while b <= cap and time.perf_counter() - began < budget_s:
        if fits(b):
            ok, b = b, b * 2
        else:
            bad = b
            break
    while bad is not None and bad - ok > max(1, ok // 8) and time.perf_counter() - began < budget_s:
        mid = (ok + bad) // 2
        if fits(mid):
            ok = mid
        else:
            bad = mid
    return {"largest_batch": ok, "first_oom": bad, "capped_at": cap if bad is None else None,
            "trials": trials}


# ---------------------------------------------------------------- stages


def stage_env(stage: Stage) -> None:
    import accelerate
    import diffusers
    import transformers

    device = stage.device
    info: dict[str, Any] = {"torch": torch.__version__, "diffusers": diffusers.__version__,
                            "transformers": transformers.__version__,
                            "accelerate": accelerate.__version__, "python": platform.python_version(),
                            "device": str(device), "scale": stage.args.scale}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=gib(props.total_memory),
                    multiprocessors=props.multi_processor_count, cuda=torch.version.cuda)
    stage.record(**info)
    n = 8192 if device.type == "cuda" else 512
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    reps = 10
    seconds = timed(lambda: [a @ b for _ in range(reps)], device) / reps
    stage.record(matmul_bf16_tflops=round(2 * n**3 / seconds / 1e12, 1), matmul_n=n)
    if device.type == "cuda":
        x = torch.empty(2**30 // 2, dtype=torch.bfloat16, device=device)
        y = torch.empty_like(x)
        y.copy_(x)
        seconds = timed(lambda: [y.copy_(x) for _ in range(reps)], device) / reps
        stage.record(copy_tb_per_s=round(2 * x.numel() * 2 / seconds / 1e12, 2))


def _build(stage: Stage, arch: str) -> None:
    from rewardkit.testing.architectures import build_architecture, parameter_counts

    began = time.perf_counter()
    build_architecture(arch, stage.path(arch), scale=stage.args.scale, device=stage.device)
    stage.record(**{f"{arch}_parameters": parameter_counts(arch, stage.args.scale),
                    f"{arch}_build_s": round(time.perf_counter() - began, 1)})


def stage_build_sd21(stage: Stage) -> None:
    _build(stage, "sd21")
    _build(stage, "clip-vit-h")


def stage_build_sdxl(stage: Stage) -> None:
    _build(stage, "sdxl")


def _lcd_stage(stage: Stage, arch: str, batch: int, peer: bool) -> None:
    """rewardkit's lcd step (and, for SD, diffusers' step beside it): time, memory, FLOPs, syncs."""
    device = stage.device
    stage.current_key = "max_batch_checkpointed"
    recipe = stage.recipe("lcd", arch, batch)
    rk_alone = step_measure(stage, recipe, steps=3 if stage.full else 2, warmup=2)
    stage.record(batch=batch, resolution=stage.side(arch), rewardkit_alone=rk_alone)
    flops = count_flops(recipe.train_step)
    stage.record(rewardkit_mfu=model_flop_utilisation(flops, rk_alone["s_per_step"], stage.ceiling()))
    stage.record(rewardkit_host_syncs=count_syncs(recipe.train_step, device))
    if peer:
        from bench_vs_diffusers import DiffusersLCDStep

        steady = allocated(device)
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        theirs = DiffusersLCDStep(stage.path(arch), device, dtype, 1e-6, batch)
        latents, captions = recipe.fixed["latents"].to(device), recipe.fixed["captions"]

        def peer_step() -> None:
            theirs.step(None, captions, latents=latents)

        for _ in range(2):
            peer_step()
        peer_resident = allocated(device) - steady
        reset_peak(device)
        peer_step()
        peer_peak = peak(device) - steady
        stage.record(diffusers_alone={"resident_gib": gib(peer_resident), "peak_gib": gib(peer_peak)})
        stage.record(diffusers_host_syncs=count_syncs(peer_step, device))
        rounds = {"rewardkit": [], "diffusers": []}
        for _ in range(5 if stage.full else 2):  # alternating: both see the same machine state
            rounds["rewardkit"].append(timed(recipe.train_step, device))
            rounds["diffusers"].append(timed(peer_step, device))
        ours, their = (statistics.median(rounds[k]) for k in ("rewardkit", "diffusers"))
        stage.record(alternating={"rewardkit_s": round(ours, 4), "diffusers_s": round(their, 4),
                                  "ratio_rewardkit_over_diffusers": round(ours / their, 3),
                                  "rewardkit_images_per_s": round(batch / ours, 2),
                                  "diffusers_images_per_s": round(batch / their, 2),
                                  "rounds": {k: [round(t, 4) for t in v] for k, v in rounds.items()}})
        del theirs
        free_memory(device)
    return recipe


def stage_sd21_lcd(stage: Stage) -> None:
    _lcd_stage(stage, "sd21", 8 if stage.full else 2, peer=True)


def stage_sd21_max_batch(stage: Stage) -> None:
    recipe = stage.recipe("lcd", "sd21", 8 if stage.full else 2)
    budget = STAGES["sd21-max-batch"][0] * 0.4
    for checkpointing in (False, True):
        student = recipe.unwrapped_student
        if checkpointing:
            student.enable_gradient_checkpointing()
        else:
            student.disable_gradient_checkpointing()
        key = f"max_batch_{'checkpointed' if checkpointing else 'plain'}"
        stage.current_key = key
        free_memory(stage.device)
        found = max_batch(stage, recipe, start=8 if stage.full else 1,
                          cap=256 if stage.full else 4, budget_s=budget)
        stage.record(**{key: found})


def stage_sd21_rg_lcd_direct(stage: Stage) -> None:
    batches = (2, 4, 8, 16) if stage.full else (1, 2)
    recipe = stage.recipe("rg-lcd", "sd21", batches[0], proxy="none", reward="clip-score",
                          reward_params={"model": str(stage.path("clip-vit-h"))},
                          vae_decode_batch_size=max(batches))
    stage.record(reward_dtype=str(getattr(recipe.reward_model, "dtype", None)))
    rows = {}
    for checkpointing in (False, True):
        if checkpointing:
            recipe.backbone.vae.enable_gradient_checkpointing()
        else:
            recipe.backbone.vae.disable_gradient_checkpointing()
        for batch in batches:
            feed(recipe, batch)
            free_memory(stage.device)
            rows[f"batch{batch}_decoder_ckpt_{'on' if checkpointing else 'off'}"] = try_step(
                stage, recipe, steps=2 if stage.full else 1)
            stage.record(rows=rows)


def stage_sd21_rg_lcd_lrm(stage: Stage) -> None:
    batch = 8 if stage.full else 2
    recipe = stage.recipe("rg-lcd", "sd21", batch, reward="clip-score",
                          reward_params={"model": str(stage.path("clip-vit-h"))},
                          proxy_eval_num_prompts=0, proxy_batch_size=batch,
                          vae_decode_batch_size=batch)
    stage.record(batch=batch, reward_dtype=str(getattr(recipe.reward_model, "dtype", None)),
                 lrm_parameters=sum(p.numel() for p in recipe.proxy_model.parameters()))
    measured = step_measure(stage, recipe, steps=3 if stage.full else 1, warmup=2)
    stage.record(step=measured)
    stage.record(host_syncs=count_syncs(recipe.train_step, stage.device))


def stage_rm_dtype(stage: Stage) -> None:
    import rewardkit as rk

    device = stage.device
    batch = 16 if stage.full else 2
    side = stage.side("sd21")
    prompts = ["a photo of a red circle"] * batch
    reference = None
    for variant in ("float32", "float32-tf32", "bfloat16"):
        dtype = variant.split("-")[0]
        torch.backends.cuda.matmul.allow_tf32 = variant.endswith("tf32")
        torch.backends.cudnn.allow_tf32 = variant.endswith("tf32")
        rm = rk.reward_model("clip-score", model=str(stage.path("clip-vit-h")), dtype=dtype)
        rm.to(device)
        images = torch.rand(batch, 3, side, side, device=device,
                            generator=torch.Generator(device).manual_seed(0))
        with torch.no_grad():
            scores = rm(images, prompts).float()
        forward = [timed(lambda: rm(images, prompts), device) for _ in range(3)]
        pixels = images.clone().requires_grad_(True)
        reset_peak(device)

        def backward() -> None:
            rm(pixels, prompts).float().sum().backward()

        both = [timed(backward, device) for _ in range(3)]
        row = {"forward_s": round(statistics.median(forward), 4),
               "forward_backward_s": round(statistics.median(both), 4),
               "peak_gib": gib(peak(device))}
        if reference is None:
            reference = scores
        else:
            row["max_abs_score_difference_vs_fp32"] = float((scores - reference).abs().max())
        stage.record(batch=batch, resolution=side, **{variant: row})
        del rm, pixels
        free_memory(device)


def stage_sdxl_lcd(stage: Stage) -> None:
    recipe = _lcd_stage(stage, "sdxl", 2, peer=False)
    recipe.unwrapped_student.enable_gradient_checkpointing()
    stage.current_key = "max_batch_checkpointed"
    free_memory(stage.device)
    stage.record(max_batch_checkpointed=max_batch(
        stage, recipe, start=8 if stage.full else 1, cap=128 if stage.full else 4,
        budget_s=STAGES["sdxl-lcd"][0] * 0.35))


def stage_sdxl_lora(stage: Stage) -> None:
    batch = 4 if stage.full else 2
    recipe = stage.recipe("lcd", "sdxl", batch, use_lora=True, gradient_checkpointing=True)
    stage.record(batch=batch, lora_rank=recipe.config.lora_rank,
                 step=step_measure(stage, recipe, steps=3 if stage.full else 1, warmup=2))


# ---------------------------------------------------------------- running the stages


def run_stage(args: argparse.Namespace) -> None:
    """Run one stage in this process (``--stage``), writing its result to ``--result-file``."""
    stage = Stage(args, Path(args.result_file))
    stage.current_key = "trials"
    began = time.perf_counter()
    try:
        globals()[STAGES[args.stage][1]](stage)
        stage.record(ok=True)
    except Exception as exc:  # noqa: BLE001 - the error is the stage's result
        stage.record(ok=False, error=f"{type(exc).__name__}: {str(exc)[:500]}",
                     traceback=traceback.format_exc()[-2000:])
    stage.record(seconds=round(time.perf_counter() - began, 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=("full", "tiny"), default="full")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path("device_check.json"))
    parser.add_argument("--models", type=Path, default=None,
                        help="where the random-weight models are written (default: a temporary "
                             "folder, in /dev/shm when there is one)")
    parser.add_argument("--stages", default=",".join(STAGES),
                        help=f"comma-separated subset of: {', '.join(STAGES)}")
    parser.add_argument("--budget", type=float, default=470.0,
                        help="seconds for all stages; a stage that cannot start in time is skipped")
    parser.add_argument("--in-process", action="store_true",
                        help="run the stages in this process (no isolation or time limits)")
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    parser.add_argument("--result-file", help=argparse.SUPPRESS)
    parser.add_argument("--env-json", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.env_result = json.loads(args.env_json) if args.env_json else None
    if args.stage:
        return run_stage(args)
    names = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in names if s not in STAGES]
    if unknown:
        parser.error(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    shm = Path("/dev/shm")
    with contextlib.ExitStack() as stack:
        if args.models is None:
            base = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
            args.models = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=base)))
        results: dict[str, Any] = {"command": " ".join(sys.argv), "stages": {}}
        deadline = time.monotonic() + args.budget
        for name in names:
            left = deadline - time.monotonic()
            limit = STAGES[name][0] if args.scale == "full" else 600
            if left < min(limit, 20):
                results["stages"][name] = {"ok": False, "error": "skipped: out of time"}
                continue
            print(f"[device_check] {name} (limit {min(limit, left):.0f} s)", flush=True)
            results["stages"][name] = one_stage(args, name, min(limit, left))
            if name == "env":
                args.env_result = results["stages"]["env"]
            args.out.write_text(json.dumps(results, indent=1, default=str))
            print(f"[device_check] {name}: {summary(results['stages'][name])}", flush=True)
    args.out.write_text(json.dumps(results, indent=1, default=str))
    print(f"[device_check] wrote {args.out}")


def one_stage(args: argparse.Namespace, name: str, limit: float) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        result_file = Path(handle.name)
    try:
        if args.in_process:
            stage_args = argparse.Namespace(**{**vars(args), "stage": name,
                                               "result_file": str(result_file)})
            run_stage(stage_args)
        else:
            command = [sys.executable, __file__, "--stage", name, "--result-file", str(result_file),
                       "--scale", args.scale, "--device", args.device, "--models", str(args.models),
                       "--env-json", json.dumps(args.env_result or {})]
            try:
                subprocess.run(command, timeout=limit, check=False)
            except subprocess.TimeoutExpired:
                partial = _read(result_file)
                partial.update(ok=False, error=f"stopped at its {limit:.0f} s limit")
                return partial
        return _read(result_file) or {"ok": False, "error": "the stage wrote no result"}
    finally:
        result_file.unlink(missing_ok=True)


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def summary(result: dict[str, Any]) -> str:
    if not result.get("ok"):
        return f"FAILED: {result.get('error')}"
    keys = [k for k in result if k not in ("ok", "traceback")]
    text = json.dumps({k: result[k] for k in keys}, default=str)
    return text if len(text) < 600 else text[:600] + " ..."


if __name__ == "__main__":
    main()
