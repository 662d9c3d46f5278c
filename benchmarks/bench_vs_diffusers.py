"""rewardkit's training step against a transcription of diffusers' LCD step, in one process.

The peer is ``examples/consistency_distillation/train_lcm_distill_sd_wds.py`` of diffusers
(the script LCD users start from), transcribed here as :class:`DiffusersLCDStep`: the same
operations in the same order (VAE-encode the images and run the text encoder every step, the
teacher's conditional and unconditional passes as two calls, a per-parameter EMA loop, torch's
default AdamW, ``loss.item()`` for logging). ``--recipe rg-lcd`` adds the reference RG-LCD
reward term to it (decode ``f_theta``, score it with the RM, ``loss -= beta * mean(reward)``).

rewardkit runs its own recipe as a user would, reading its image folder through its own
(prefetching) loader, with ``--dtype bf16`` in mixed precision (frozen teacher, VAE and text
encoder in bf16, the student's fp32 master weights under autocast). Two like-for-like rows:

- ``encode_each_step``: both VAE-encode every batch (the peer gets the same pixels from memory);
- ``pre_encoded``: both train on the same stored latents (what ``rewardkit data encode`` writes;
  the peer is handed them in place of its encode);

and, on a line of its own, what pre-encoding saves each side (pre-encoded / encoding): an
option a user takes, not a property of the step. The four steps alternate, one each per round,
so all see the same machine load; medians over rounds. Then profiled rounds split each step
into model time (forwards of the text encoder, VAE encoder and decoder, the three UNets, the
RM's calls, and all of backward: :mod:`model_clock`) and the rest, the per-step framework
overhead, printed in ms for both sides (data, tokenising, solver arithmetic, clipping, the
optimiser, the EMA, checks, the host read). With ``--check`` both compute one step from the
same weights, latents and draws in fp32 and the losses are compared.

Usage::

    python benchmarks/bench_vs_diffusers.py                          # CPU, reduced SD 2.1
    python benchmarks/bench_vs_diffusers.py --recipe rg-lcd --widths 32,64 --vae-widths 32,64 \
        --latent 16                                                 # the tiny 32 px setting
    python benchmarks/bench_vs_diffusers.py --recipe rg-lcd --check
    python benchmarks/bench_vs_diffusers.py --device cuda --dtype bf16 --widths 320,640,1280,1280 \\
        --vae-widths 128,256,512,512 --head-dim 5,10,20,20 --cross-attention 1024 --latent 64 \\
        --batch 8                                                   # SD 2.1's UNet on a GPU
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_lcd import peak_memory_mb, synchronize  # noqa: E402

W_MIN, W_MAX, HUBER_C, EMA_DECAY, K_DDIM = 5.0, 15.0, 0.001, 0.95, 50


# ---------------------------------------------------------------- the peer, transcribed


def boundary_scalings(t: torch.Tensor, sigma_data: float = 0.5, scaling: float = 10.0):
    """c_skip, c_out of the consistency parametrisation at timesteps ``t``."""
    scaled = t * scaling
    return sigma_data**2 / (scaled**2 + sigma_data**2), scaled / (scaled**2 + sigma_data**2) ** 0.5


def w_embedding(w: torch.Tensor, dim: int) -> torch.Tensor:
    """The sinusoidal guidance-scale embedding of LCM (of ``w * 1000``)."""
    w = w * 1000.0
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
    angles = w.float()[:, None] * freqs[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


class DiffusersLCDStep:
    """diffusers' LCD training step (train_lcm_distill_sd_wds.py), transcribed."""

    def __init__(self, teacher: Path, device: torch.device, dtype: torch.dtype, lr: float,
                 batch: int, reward=None, beta: float = 1.0) -> None:
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        self.device, self.dtype, self.reward, self.beta = device, dtype, reward, beta
        self.vae = AutoencoderKL.from_pretrained(teacher, subfolder="vae").to(device, dtype).requires_grad_(False)
        self.tokenizer = CLIPTokenizer.from_pretrained(teacher, subfolder="tokenizer")
        self.text_encoder = CLIPTextModel.from_pretrained(teacher, subfolder="text_encoder").to(
            device, dtype).requires_grad_(False)
        self.teacher = UNet2DConditionModel.from_pretrained(teacher, subfolder="unet").to(
            device, dtype).requires_grad_(False)
        self.scheduler = DDPMScheduler.from_pretrained(teacher, subfolder="scheduler")
        config = dict(self.teacher.config)
        config["time_cond_proj_dim"] = 256
        self.unet = UNet2DConditionModel.from_config(config)
        self.unet.load_state_dict(self.teacher.state_dict(), strict=False)
        self.unet.to(device).train()
        self.target = copy.deepcopy(self.unet).requires_grad_(False)
        self.optimizer = torch.optim.AdamW(self.unet.parameters(), lr=lr, betas=(0.9, 0.999),
                                           weight_decay=1e-2, eps=1e-8)
        abar = self.scheduler.alphas_cumprod.to(device)
        self.alpha, self.sigma = abar.sqrt(), (1 - abar).sqrt()
        step = self.scheduler.config.num_train_timesteps // K_DDIM
        self.grid = (torch.arange(1, K_DDIM + 1) * step - 1).long().to(device)
        self.abar_grid = abar[self.grid]
        self.abar_prev = torch.cat([abar[:1], abar[self.grid[:-1]]])
        self.topk = step
        with torch.no_grad():
            tokens = self.tokenizer([""] * batch, padding="max_length", truncation=True,
                                    max_length=self.tokenizer.model_max_length, return_tensors="pt")
            self.uncond = self.text_encoder(tokens.input_ids.to(device))[0]

    def _x0_eps(self, out: torch.Tensor, t: torch.Tensor, z: torch.Tensor):
        a, s = self.alpha[t].view(-1, 1, 1, 1), self.sigma[t].view(-1, 1, 1, 1)
        if self.scheduler.config.prediction_type == "epsilon":
            return (z - s * out) / a, out
        return a * z - s * out, a * out + s * z  # v-prediction

    def step(self, pixel_values: torch.Tensor, captions: list[str], draws=None,
             latents: torch.Tensor | None = None) -> float:
        """One optimiser step; ``draws`` = (index, w, noise) to reproduce another step's."""
        device, dtype = self.device, self.dtype
        with torch.no_grad():
            tokens = self.tokenizer(captions, padding="max_length", truncation=True,
                                    max_length=self.tokenizer.model_max_length, return_tensors="pt")
            prompt_embeds = self.text_encoder(tokens.input_ids.to(device))[0]
            if latents is None:
                latents = self.vae.encode(pixel_values.to(device, dtype)).latent_dist.sample()
                latents = (latents * self.vae.config.scaling_factor).to(dtype)
        bsz = latents.shape[0]
        if draws is None:
            index = torch.randint(0, K_DDIM, (bsz,), device=device).long()
            w = (W_MAX - W_MIN) * torch.rand((bsz,)) + W_MIN
            noise = torch.randn_like(latents)
        else:
            index, w, noise = (d.to(device) if isinstance(d, torch.Tensor) else d for d in draws)
            w = w.cpu()
        start = self.grid[index]
        end = torch.where(start - self.topk < 0, torch.zeros_like(start), start - self.topk)
        c_skip_start, c_out_start = (x.view(-1, 1, 1, 1) for x in boundary_scalings(start))
        c_skip, c_out = (x.view(-1, 1, 1, 1) for x in boundary_scalings(end))
        noisy = self.scheduler.add_noise(latents.float(), noise.float(), start)
        embedding = w_embedding(w, 256).to(device, latents.dtype)
        w = w.reshape(bsz, 1, 1, 1).to(device, latents.dtype)

        # the script's student runs through accelerator.prepare: under autocast with mixed precision
        autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
        with autocast:
            noise_pred = self.unet(noisy, start, timestep_cond=embedding.float(),
                                   encoder_hidden_states=prompt_embeds.float()).sample
        noise_pred = noise_pred.float()
        x0, _ = self._x0_eps(noise_pred, start, noisy)
        model_pred = c_skip_start * noisy + c_out_start * x0

        with torch.no_grad(), autocast:
            cond = self.teacher(noisy.to(dtype), start, encoder_hidden_states=prompt_embeds.to(dtype)).sample
            cond_x0, cond_eps = self._x0_eps(cond.float(), start, noisy)
            uncond = self.teacher(noisy.to(dtype), start, encoder_hidden_states=self.uncond.to(dtype)).sample
            uncond_x0, uncond_eps = self._x0_eps(uncond.float(), start, noisy)
            pred_x0 = cond_x0 + w * (cond_x0 - uncond_x0)
            pred_eps = cond_eps + w * (cond_eps - uncond_eps)
            prev = self.abar_prev[index].view(-1, 1, 1, 1)
            x_prev = prev.sqrt() * pred_x0 + (1 - prev).sqrt() * pred_eps
        with torch.no_grad(), autocast:
            target_pred = self.target(x_prev.float(), end, timestep_cond=embedding.float(),
                                      encoder_hidden_states=prompt_embeds.float()).sample
        with torch.no_grad():
            tx0, _ = self._x0_eps(target_pred.float(), end, x_prev.float())
            target = c_skip * x_prev + c_out * tx0
        loss = torch.mean(torch.sqrt((model_pred.float() - target.float()) ** 2 + HUBER_C**2) - HUBER_C)
        if self.reward is not None:  # the reference RG-LCD term on the decoded f_theta
            images = self.vae.decode((model_pred / self.vae.config.scaling_factor).to(dtype)).sample
            images = (images.float() / 2 + 0.5).clamp(0, 1)
            loss = loss - self.beta * self.reward(images, captions).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.unet.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():  # update_ema: one parameter at a time
            for targ, src in zip(self.target.parameters(), self.unet.parameters()):
                targ.detach().mul_(EMA_DECAY).add_(src, alpha=1 - EMA_DECAY)
        return loss.detach().item()


# ---------------------------------------------------------------- rewardkit's side


def build(args, root: Path):
    from rewardkit.testing.tiny_sd import build_tiny_sd_pipeline
    from rewardkit.testing.tiny_training import write_tiny_image_folder

    widths = tuple(int(w) for w in args.widths.split(","))
    heads = [int(h) for h in args.head_dim.split(",")]
    heads = heads[0] if len(heads) == 1 else heads
    vae_widths = tuple(int(w) for w in args.vae_widths.split(","))
    teacher = build_tiny_sd_pipeline(
        root / "teacher", sample_size=args.latent, unet_block_out_channels=widths,
        layers_per_block=2, attention_head_dim=heads, cross_attention_dim=args.cross_attention,
        text_intermediate_size=4 * args.cross_attention, vae_block_out_channels=vae_widths)
    side = args.latent * 2 ** (len(vae_widths) - 1)
    data = write_tiny_image_folder(root / "data", count=args.batch, size=side)
    return teacher, data, side


def rewardkit_recipe(args, teacher, data, side, root, reward):
    """rewardkit's recipe as a user builds it, reading its image folder through its own (prefetching)
    loader; plus one batch of those images and its latents as ``rewardkit data encode`` stores
    them (encoded once)."""
    import rewardkit as rk

    values = dict(pretrained_teacher_model=str(teacher), train_shards_path_or_url=str(data),
                  output_dir=str(root / "rk"), resolution=side, train_batch_size=args.batch,
                  max_train_steps=10**6, learning_rate=1e-5, unet_time_cond_proj_dim=256,
                  mixed_precision="no" if args.dtype == "fp32" else args.dtype,
                  validation_steps=0, checkpointing_steps=0, report_to="none", seed=0,
                  ema_decay=EMA_DECAY, compile=args.compile, compile_backend=args.compile_backend)
    if args.recipe == "rg-lcd":
        values.update(proxy="none", reward_scale=1.0, vae_decode_batch_size=args.batch)
        recipe = rk.recipe("rg-lcd", values, reward=reward)
    else:
        recipe = rk.recipe("lcd", values)
    recipe.setup()
    batch = next(recipe.batches)
    with torch.no_grad():
        latents = recipe.backbone.encode_images(batch["pixel_values"].to(recipe.accelerator.device),
                                                generator=torch.Generator().manual_seed(0))
    return recipe, batch, latents.cpu()


def pre_encoded(batch, latents):
    """The endless batches of a pre-encoded run: these latents and captions."""
    return itertools.repeat({"latents": latents, "captions": batch["captions"]})


def tiny_reward(root: Path):
    from rewardkit.rewards.clip_score import CLIPScore
    from rewardkit.testing.tiny_clip import build_tiny_clip

    return CLIPScore(model=str(build_tiny_clip(root / "clip", image_size=32)))


def check_losses(args, teacher, data, side, root, reward) -> float:
    """Both steps from the same weights, latents and draws in fp32: |loss difference|."""
    from rewardkit.training.step import lcd_forward

    recipe, batch, latents = rewardkit_recipe(
        argparse.Namespace(**{**vars(args), "dtype": "fp32"}), teacher, data, side,
        root / "check", reward)
    recipe.batches.close()  # the check's batch is fixed: stop reading ahead
    recipe.batches = pre_encoded(batch, latents)
    peer = DiffusersLCDStep(teacher, recipe.accelerator.device, torch.float32, 1e-5, args.batch,
                            reward if args.recipe == "rg-lcd" else None)
    peer.unet.load_state_dict(recipe.unwrapped_student.state_dict())
    peer.target.load_state_dict(recipe.target.state_dict())
    fixed = next(recipe.batches)
    latents, cond, uncond = recipe.encode_batch(fixed)
    state = recipe.generator.get_state()
    step = lcd_forward(backbone=recipe.backbone, solver=recipe.solver, student=recipe.student,
                       target=recipe.target_network, latents=latents, cond=cond, uncond=uncond,
                       captions=fixed["captions"], hyper=recipe.hyper, generator=recipe.generator)
    ours = step.lcd_loss + (recipe.reward_loss(step) if args.recipe == "rg-lcd" else 0.0)
    generator = torch.Generator().manual_seed(0)
    generator.set_state(state)
    index = recipe.solver.sample_indices(args.batch, generator=generator)
    w = (W_MAX - W_MIN) * torch.rand(args.batch, generator=generator) + W_MIN
    noise = torch.randn(latents.shape, generator=generator)
    theirs = peer.step(None, fixed["captions"], (index, w, noise), latents=latents)
    return abs(float(ours) - theirs)


# ---------------------------------------------------------------- measuring


#: The rows: (name, does the step VAE-encode its batch).
ROWS = (("encode_each_step", True), ("pre_encoded", False))


def steps(recipe, peer, batch, latents, prefetched):
    """The four steps timed, by (row, side): rewardkit reads its images through its loader (or
    repeats the stored latents); the peer gets the same pixels (or latents) from memory."""
    stored = pre_encoded(batch, latents)

    def rewardkit(batches):
        def step():
            recipe.batches = batches
            recipe.train_step()
        return step

    pixels, captions = batch["pixel_values"], batch["captions"]
    return {
        ("encode_each_step", "rewardkit"): rewardkit(prefetched),
        ("encode_each_step", "diffusers"): lambda: peer.step(pixels, captions),
        ("pre_encoded", "rewardkit"): rewardkit(stored),
        ("pre_encoded", "diffusers"): lambda: peer.step(None, captions, latents=latents),
    }


def model_parts(recipe, peer, reward):
    """The modules whose forward is model time (text encoder, VAE encoder and decoder, the three
    UNets of each side) and the reward models (called, not hooked: they need not be modules)."""
    backbone = recipe.backbone
    modules = [backbone.text_encoder, backbone.vae.encoder, backbone.vae.decoder, backbone.unet,
               recipe.unwrapped_student, recipe.target_network,
               peer.text_encoder, peer.vae.encoder, peer.vae.decoder, peer.teacher, peer.unet,
               peer.target]
    return modules, [reward] if reward is not None else []


def measure(args, recipe, batch, latents, teacher, reward) -> dict:
    """Timed rounds (the four steps alternating, one each per round, so all see the same load),
    then profiled rounds (alternating too) that split each step into model time and the rest."""
    from model_clock import ModelClock

    device = recipe.accelerator.device
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    peer = DiffusersLCDStep(teacher, device, dtype, 1e-5, args.batch, reward)
    prefetched = recipe.batches  # the recipe's own loader, reading ahead in its thread
    run = steps(recipe, peer, batch, latents.to(device), prefetched)
    times = {key: [] for key in run}
    for round_ in range(args.warmup + args.rounds):
        for key, step in run.items():
            synchronize(device)
            began = time.perf_counter()
            step()
            synchronize(device)
            if round_ >= args.warmup:
                times[key].append(time.perf_counter() - began)
        print(f"round {round_ + 1}/{args.warmup + args.rounds} done", file=sys.stderr, flush=True)
    clock = ModelClock(device)
    profiled = {key: {"step": [], "models": []} for key in run}
    modules, rewards = model_parts(recipe, peer, reward)
    with clock.watching(modules, rewards):
        for _ in range(max(1, args.rounds // 2)):
            for key, step in run.items():
                clock.reset()
                synchronize(device)
                began = time.perf_counter()
                step()
                synchronize(device)
                profiled[key]["step"].append(time.perf_counter() - began)
                profiled[key]["models"].append(clock.seconds)
    prefetched.close()

    out: dict = {"rows": {}, "overhead_ms": {}, "model_s": {}, "rounds_s": {}}
    median = statistics.median
    for row, _ in ROWS:
        ours, theirs = (median(times[(row, side)]) for side in ("rewardkit", "diffusers"))
        out["rows"][row] = {"rewardkit_s": ours, "diffusers_s": theirs,
                            "ratio_rewardkit_over_diffusers": ours / theirs,
                            "rewardkit_images_per_s": args.batch / ours,
                            "diffusers_images_per_s": args.batch / theirs}
        for side in ("rewardkit", "diffusers"):
            parts = profiled[(row, side)]
            out["overhead_ms"].setdefault(side, {})[row] = 1e3 * median(
                [s - m for s, m in zip(parts["step"], parts["models"])])
            out["model_s"].setdefault(side, {})[row] = median(parts["models"])
            out["rounds_s"][f"{row}/{side}"] = times[(row, side)]
    out["pre_encoding_effect"] = {
        side: out["rows"]["pre_encoded"][f"{side}_s"] / out["rows"]["encode_each_step"][f"{side}_s"]
        for side in ("rewardkit", "diffusers")}
    out["peak_memory_mib_process"] = peak_memory_mb(device)
    return out


def report(result: dict) -> None:
    """The rows as a table, then the setting."""
    rows, overhead = result["rows"], result.get("overhead_ms", {})
    print(f"{result['recipe']}, {result['device']} {result['dtype']}, batch {result['batch']}, "
          f"{result['resolution']} px, {result['threads']} threads, median of {result['rounds']} "
          f"alternating rounds; load average {result['load_average']:.2f} -> "
          f"{result['load_average_after']:.2f}")
    print(f"{'row':44s} {'rewardkit s':>11s} {'peer s':>9s} {'ratio':>7s} "
          f"{'rk overhead ms':>15s} {'peer overhead ms':>17s}")
    labels = {"encode_each_step": "equal work: both VAE-encode every step",
              "pre_encoded": "equal work: both on pre-encoded latents"}
    for row, label in labels.items():
        r = rows[row]
        print(f"{label:44s} {r['rewardkit_s']:11.4f} {r['diffusers_s']:9.4f} "
              f"{r['ratio_rewardkit_over_diffusers']:6.3f}x "
              f"{overhead['rewardkit'][row]:15.1f} {overhead['diffusers'][row]:17.1f}")
    effect = result["pre_encoding_effect"]
    print(f"{'pre-encoded / encoding (an option, not a step)':44s} "
          f"{'':11s} {'':9s} rewardkit {effect['rewardkit']:.3f}x, peer {effect['diffusers']:.3f}x")
    if "loss_abs_difference_fp32" in result:
        print(f"|loss difference| in fp32, same weights and draws: "
              f"{result['loss_abs_difference_fp32']:.3g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", choices=("lcd", "rg-lcd"), default="lcd")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32",
                        help="frozen models' dtype (rewardkit: mixed_precision; the peer: weight_dtype)")
    parser.add_argument("--widths", default="32,64,128,128", help="UNet block widths (SD 2.1: 320,640,1280,1280)")
    parser.add_argument("--vae-widths", default="32,64,64,64", help="VAE widths (SD: 128,256,512,512)")
    parser.add_argument("--head-dim", default="8",
                        help="diffusers' attention_head_dim: an int or one per block (SD 2.1: 5,10,20,20)")
    parser.add_argument("--cross-attention", type=int, default=64, help="text width (SD 2.1: 1024)")
    parser.add_argument("--latent", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--check", action="store_true", help="also compare the losses in fp32")
    parser.add_argument("--compile", action="store_true",
                        help="rewardkit's UNets under torch.compile (its `compile` key; the peer "
                             "stays eager, as diffusers' script is); raise --warmup to cover compiling")
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        teacher, data, side = build(args, root)
        reward = tiny_reward(root) if args.recipe == "rg-lcd" else None
        result = {"recipe": args.recipe, "device": args.device, "dtype": args.dtype,
                  "compile": args.compile and args.compile_backend,
                  "widths": args.widths, "vae_widths": args.vae_widths, "resolution": side,
                  "latent": args.latent, "batch": args.batch, "threads": args.threads,
                  "rounds": args.rounds, "load_average": os.getloadavg()[0]}
        if args.check:
            result["loss_abs_difference_fp32"] = check_losses(args, teacher, data, side, root, reward)
        recipe, batch, latents = rewardkit_recipe(args, teacher, data, side, root, reward)
        result.update(measure(args, recipe, batch, latents, teacher, reward))
        result["load_average_after"] = os.getloadavg()[0]
        report(result)
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
