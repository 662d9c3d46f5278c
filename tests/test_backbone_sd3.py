"""The stable-diffusion-3 backbone on a tiny SD3-architecture pipeline built offline (two CLIPs
plus T5, and with T5 dropped): its conditioning is diffusers' own, it meets the backbone
contract, the LCD loss of one step equals consistency distillation for flow teachers written out
here from the equations, lcd and rg-lcd (direct and LRM) train and resume bit for bit, and the
saved folder is a StableDiffusion3Pipeline that plain diffusers samples as rewardkit does."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Sequence

import pytest
import torch
from safetensors.torch import load_file

import rewardkit as rk
from rewardkit.backbones import Conditioning
from rewardkit.backbones.stable_diffusion_3 import StableDiffusion3Backbone
from rewardkit.errors import ConfigError
from rewardkit.rewards.base import RewardModel
from rewardkit.testing import check_backbone
from rewardkit.testing.backbone_contract import load_saved_pipeline
from rewardkit.testing.tiny_sd3 import build_tiny_sd3_pipeline
from rewardkit.testing.tiny_training import write_tiny_image_folder
from rewardkit.training.metrics import read_metrics

SMALL_LRM = dict(embed_dim=16, image_widths=[8, 16], text_width=16, text_heads=2)
PROMPTS = ["a photo of a red circle", "a blue square"]
TOKENS = 16  # T5 tokens per prompt (max_sequence_length), small to keep the tests fast
T = 1000


class Redness(RewardModel):
    name = "sd3-test-redness"
    differentiable = True

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        channels = images.mean((2, 3))
        return channels[:, 0] - 0.5 * (channels[:, 1] + channels[:, 2])


@pytest.fixture(scope="module", params=["t5", "no-t5"])
def teacher(request, tmp_path_factory) -> Path:
    return build_tiny_sd3_pipeline(tmp_path_factory.mktemp(request.param) / "sd3",
                                   t5=request.param == "t5")


@pytest.fixture(scope="module")
def backbone(teacher) -> StableDiffusion3Backbone:
    return rk.backbone("stable-diffusion-3", pretrained_model_name_or_path=str(teacher),
                       max_sequence_length=TOKENS)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_tiny_image_folder(tmp_path_factory.mktemp("data"), count=8, size=16)


def _pipeline(folder):
    return load_saved_pipeline(folder)  # text_encoder_3=None, tokenizer_3=None when T5 is dropped


def test_the_backbone_is_registered():
    assert "stable-diffusion-3" in [spec.name for spec in rk.components("backbone")]


def test_conditioning_and_prediction_are_diffusers_sd3(backbone, teacher):
    pipe = _pipeline(teacher)
    assert (pipe.text_encoder_3 is None) == (backbone.text_encoder_3 is None)
    cond = backbone.encode_prompts(PROMPTS)
    assert isinstance(cond, Conditioning) and backbone.text_embed_dim == 32
    assert cond.prompt_embeds.shape == (2, 77 + TOKENS, 32)
    assert cond.added["pooled_projections"].shape == (2, 32)
    embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
        PROMPTS, None, None, device="cpu", do_classifier_free_guidance=True,
        max_sequence_length=TOKENS)
    torch.testing.assert_close(cond.prompt_embeds, embeds, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(cond.added["pooled_projections"], pooled, rtol=1e-4, atol=1e-5)
    empty = backbone.empty_conditioning(2)  # SD3's negative prompt: "" encoded, not zeros
    torch.testing.assert_close(empty.prompt_embeds, negative, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(empty.added["pooled_projections"], negative_pooled, rtol=1e-4,
                               atol=1e-5)
    if backbone.text_encoder_3 is None:  # T5 dropped: its tokens are zeros, as diffusers makes them
        assert not cond.prompt_embeds[:, 77:].any()
    else:
        assert cond.prompt_embeds[:, 77:].abs().sum() > 0
    text = backbone.proxy_text(cond)  # the LRM reads the pooled projections as one more token
    assert text.shape == (2, 78 + TOKENS, 32) and torch.equal(text[:, -1], pooled)
    z = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([999.0, 250.5])
    with torch.no_grad():
        ours = backbone.predict(backbone.unet, z, t, cond)
        theirs = pipe.transformer(hidden_states=z, timestep=t, encoder_hidden_states=embeds,
                                  pooled_projections=pooled).sample
    torch.testing.assert_close(ours, theirs)


def test_latents_are_shifted_and_scaled(backbone):
    pixels = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    latents = backbone.encode_images(pixels, generator=torch.Generator().manual_seed(1))
    raw = backbone.vae.encode(pixels).latent_dist.sample(torch.Generator().manual_seed(1))
    vae = backbone.vae.config
    torch.testing.assert_close(latents, (raw - vae.shift_factor) * vae.scaling_factor)
    assert latents.shape == (1, 16, 8, 8) and backbone.latent_channels == 16


def test_sd3_meets_the_backbone_contract(backbone, tmp_path):
    check_backbone(backbone, tmp_path)


def test_a_guidance_embedding_is_refused_naming_the_key(teacher, data, tmp_path, backbone):
    with pytest.raises(ConfigError, match="unet_time_cond_proj_dim"):
        rk.recipe("lcd", _base(teacher, data, tmp_path, unet_time_cond_proj_dim=32))
    with pytest.raises(ConfigError, match="unet_time_cond_proj_dim"):
        backbone.build_student(time_cond_proj_dim=32)


def test_a_folder_without_the_transformer_is_refused(teacher, tmp_path):
    import shutil

    broken = tmp_path / "no-transformer"
    shutil.copytree(teacher, broken)
    shutil.rmtree(broken / "transformer")
    with pytest.raises(ConfigError, match="missing transformer"):
        StableDiffusion3Backbone(str(broken))


# ---------------------------------------------------------------- the LCD step, from the equations


def _shifted(u: torch.Tensor, shift: float) -> torch.Tensor:
    return shift * u / (1 + (shift - 1) * u)


def test_one_lcd_step_is_consistency_distillation_of_the_flow_teacher(backbone):
    """Consistency distillation of a rectified-flow teacher, written out from its equations:

    z_s = (1 - s) z0 + s eps,  v = eps - x0,  the grid s_j = shift u / (1 + (shift - 1) u),
    u = (j + 1) / T, steps k = T / N apart, clean end s = 0;
    student  f_theta = z - s v_theta(z, T s)                         (f(z, 0) = z)
    teacher  v_w = v_c + w (v_c - v_u),  z' = z + (s' - s) v_w       (Euler, CFG scale 1 + w)
    target   f_- = z' - s' v_-(z', T s')
    L = mean(sqrt((f_theta - f_-)^2 + c^2) - c)
    """
    from rewardkit.solvers import DDIMSolver
    from rewardkit.training.step import LCDHyper, lcd_forward

    torch.manual_seed(0)
    batch, points, shift = 6, 5, float(backbone.noise_scheduler.config.shift)
    student = backbone.build_student()
    target = copy.deepcopy(student)
    with torch.no_grad():  # a target that differs from the student, as after EMA steps
        for p in target.parameters():
            p.add_(0.01 * torch.randn_like(p))
    latents = torch.randn(batch, 16, 8, 8)
    captions = ["a red circle", "a blue square", "a cat"] * 2
    cond, uncond = backbone.encode_prompts(captions), backbone.empty_conditioning(batch)
    hyper = LCDHyper(w_min=2.0, w_max=6.0, time_cond_proj_dim=None, huber_c=0.001)
    out = lcd_forward(backbone=backbone, solver=DDIMSolver(backbone.schedule, points),
                      student=student, target=target, latents=latents, cond=cond, uncond=uncond,
                      captions=captions, hyper=hyper, generator=torch.Generator().manual_seed(7))

    generator = torch.Generator().manual_seed(7)  # the same draws, in the same order
    n = torch.randint(0, points, (batch,), generator=generator)
    w = (hyper.w_max - hyper.w_min) * torch.rand(batch, generator=generator) + hyper.w_min
    eps = torch.randn(latents.shape, generator=generator)
    k = T // points
    levels = _shifted(torch.arange(1, T + 1, dtype=torch.float64) / T, shift)
    s = levels[(n + 1) * k - 1]
    s_end = torch.where(n > 0, levels[(n * k - 1).clamp(min=0)], torch.zeros_like(s))
    t, t_end = (T * s).float(), (T * s_end).float()  # what the transformer is fed
    s, s_end = (x.float().view(-1, 1, 1, 1) for x in (s, s_end))
    w = w.view(-1, 1, 1, 1)

    def v(model, z, time, c):
        return model(hidden_states=z, timestep=time, encoder_hidden_states=c.prompt_embeds,
                     pooled_projections=c.added["pooled_projections"]).sample

    z = (1 - s) * latents + s * eps
    f_student = z - s * v(student, z, t, cond)
    with torch.no_grad():
        v_c, v_u = v(backbone.transformer, z, t, cond), v(backbone.transformer, z, t, uncond)
        z_end = z + (s_end - s) * (v_c + w * (v_c - v_u))
        f_target = z_end - s_end * v(target, z_end, t_end, cond)
    loss = (torch.sqrt((f_student - f_target) ** 2 + 0.001 ** 2) - 0.001).mean()

    assert torch.equal(out.timesteps, t) and torch.equal(out.target_timesteps, t_end)
    torch.testing.assert_close(out.student_x0, f_student, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.target_x0, f_target, rtol=0, atol=1e-5)
    assert abs(float(out.lcd_loss.detach()) - float(loss.detach())) < 1e-6
    assert float(loss.detach()) > 1e-3  # a real distance, not two zeros
    out.lcd_loss.backward()  # the loss reaches the student
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


# ---------------------------------------------------------------- training and the saved pipeline


def _base(teacher, data, out, **extra):
    return {**dict(pretrained_teacher_model=str(teacher), train_shards_path_or_url=str(data),
                   backbone="stable-diffusion-3", backbone_params={"max_sequence_length": TOKENS},
                   resolution=16, train_batch_size=2, max_train_steps=2, learning_rate=1e-3,
                   unet_time_cond_proj_dim=None, w_min=3.0, w_max=3.0, validation_steps=0,
                   checkpointing_steps=0, report_to="none", seed=0, output_dir=str(out)), **extra}


def _consistency_sampler(student, backbone, cond, steps, seed):
    """The multistep consistency sampler of a flow student, written out: z = eps; per step
    x0 = z - s v, then z = (1 - s') x0 + s' eps_hat (eps_hat = z + (1 - s) v, deterministic),
    on diffusers' SD3 schedule: u = linspace(1, shift(1/T), steps), s = shift(u), then s = 0."""
    shift = float(backbone.noise_scheduler.config.shift)
    s_min = _shifted(torch.tensor(1.0 / T, dtype=torch.float64), shift)
    levels = _shifted(torch.linspace(1.0, float(s_min), steps, dtype=torch.float64), shift)
    levels = torch.cat([levels, torch.zeros(1, dtype=torch.float64)]).float()
    z = torch.randn((len(cond), 16, 8, 8), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        for s, s_next in zip(levels[:-1], levels[1:]):
            v = student(hidden_states=z, timestep=(T * s).expand(len(cond)),
                        encoder_hidden_states=cond.prompt_embeds,
                        pooled_projections=cond.added["pooled_projections"]).sample
            x0, eps_hat = z - s * v, z + (1 - s) * v
            z = (1 - s_next) * x0 + s_next * eps_hat
    return z


@pytest.mark.parametrize("mode", ["lcd", "direct", "lrm"])
def test_lcd_and_rg_lcd_train_into_a_pipeline_plain_diffusers_samples(mode, teacher, data,
                                                                       tmp_path, backbone):
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    from rewardkit.sampling import sample_lcm_latents

    values = _base(teacher, data, tmp_path / mode)
    if mode == "lcd":
        recipe = rk.recipe("lcd", values)
    else:
        values.update(proxy_batch_size=2, vae_decode_batch_size=4)
        if mode == "lrm":  # with a held-out set (teacher samples) and a validation grid
            values.update(proxy="lrm", proxy_params=SMALL_LRM, proxy_eval_num_prompts=2,
                          validation_steps=2, validation_inference_steps=[1, 2])
        else:
            values.update(proxy="none")
        recipe = rk.recipe("rg-lcd", values, reward=Redness())
    out = recipe.run(progress=False)
    rows = [r for r in read_metrics(out / "metrics.jsonl") if "lcd_loss" in r]
    assert [r["step"] for r in rows] == [1, 2] and all(r["lcd_loss"] > 0 for r in rows)
    if mode == "lrm":  # the LRM trained online on 16-channel latents and SD3's text tokens
        assert all("proxy_loss" in r for r in rows)
        from rewardkit.proxies.preference_set import PreferenceSet
        from rewardkit.recipes.rg_lcd import HELDOUT_DIR

        pset = PreferenceSet.load(out / HELDOUT_DIR)
        assert pset.latents.shape[1:] == (16, 8, 8)
        assert pset.prompt_embeds.shape[1:] == (78 + TOKENS, 32)
        assert (out / "validation" / "step-2.png").is_file()
    pipe = _pipeline(out / "pipeline")
    assert isinstance(pipe, StableDiffusion3Pipeline)
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler)
    student = recipe.unwrapped_student.eval()

    # plain diffusers, 2 steps, no CFG (the guidance is baked in) == rewardkit's own sampler
    cond = backbone.encode_prompts(["a red circle"])
    ours = sample_lcm_latents(backbone, student, cond, steps=2, seed=0, guidance_scale=1.0,
                              time_cond_proj_dim=None)
    theirs = pipe("a red circle", num_inference_steps=2, guidance_scale=1.0, height=16, width=16,
                  max_sequence_length=TOKENS, output_type="latent",
                  generator=torch.Generator().manual_seed(0)).images
    assert (ours - theirs).abs().max() < 1e-4
    written = _consistency_sampler(student, backbone, cond, steps=2, seed=0)
    assert (ours - written).abs().max() < 1e-4
    images = pipe("a red circle", num_inference_steps=2, guidance_scale=1.0, height=16, width=16,
                  max_sequence_length=TOKENS, output_type="pt",
                  generator=torch.Generator().manual_seed(0)).images
    with torch.no_grad():
        assert (backbone.decode_latents(ours) - images).abs().max() < 1e-4


def test_lora_student_loads_onto_the_teacher_with_plain_load_lora_weights(teacher, data,
                                                                          tmp_path, backbone):
    out = rk.recipe("lcd", _base(teacher, data, tmp_path / "lora", use_lora=True, lora_rank=4,
                                 learning_rate=1e-2)).run(progress=False)
    folder = out / "pipeline"
    assert (folder / "pytorch_lora_weights.safetensors").is_file()
    merged, applied = _pipeline(folder), _pipeline(teacher)
    applied.load_lora_weights(str(folder))

    def sample(pipe):
        return pipe("a red circle", num_inference_steps=2, height=16, width=16,
                    guidance_scale=1.0, max_sequence_length=TOKENS, output_type="latent",
                    generator=torch.Generator().manual_seed(0)).images

    base = sample(_pipeline(teacher))
    assert (sample(applied) - sample(merged)).abs().max() < 1e-4
    assert (sample(merged) - base).abs().max() > 1e-3  # the LoRA did train
    reloaded = backbone.load_student(folder)  # rewardkit reads the LoRA student back
    assert getattr(reloaded, "peft_config", None)
    reloaded_merged = backbone.load_student(folder, lora=False)
    state, saved = reloaded_merged.state_dict(), merged.transformer.state_dict()
    assert all(torch.allclose(state[k], saved[k], atol=1e-6) for k in saved)


def test_sd3_training_resumes_bit_exactly_and_reads_the_student_back(teacher, data, tmp_path,
                                                                      backbone):
    from rewardkit.recipes.lcd import LCDRecipe

    class CrashAfterStep3(LCDRecipe):
        def after_step(self):
            if self.global_step + 1 == 3:
                raise KeyboardInterrupt("simulated interruption")
            return super().after_step()

    common = dict(max_train_steps=4, checkpointing_steps=2)
    straight = rk.recipe("lcd", _base(teacher, data, tmp_path / "a", **common)).run(progress=False)
    with pytest.raises(KeyboardInterrupt):
        CrashAfterStep3(rk.recipe("lcd", _base(teacher, data, tmp_path / "b", **common)).config
                        ).run(progress=False)
    resumed = rk.recipe("lcd", _base(teacher, data, tmp_path / "b", resume_from_checkpoint="latest",
                                     **common)).run(progress=False)
    for name in ("model.safetensors", "target.safetensors"):
        a = load_file(str(straight / "checkpoint-4" / name))
        b = load_file(str(resumed / "checkpoint-4" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    final = load_file(str(straight / "checkpoint-4" / "model.safetensors"))
    for path in (straight / "checkpoint-4", straight / "pipeline"):
        student = backbone.load_student(path)
        assert all(torch.equal(student.state_dict()[k], final[k]) for k in final), path
    target = load_file(str(straight / "pipeline" / "transformer_target"
                           / "diffusion_pytorch_model.safetensors"))
    own = load_file(str(straight / "checkpoint-4" / "target.safetensors"))
    assert all(torch.equal(target[k], own[k]) for k in own)
    with pytest.raises(ConfigError, match="neither an SD3 pipeline folder"):
        backbone.load_student(tmp_path)


def test_drop_t5_leaves_t5_out_of_a_folder_that_has_it(tmp_path):
    teacher = build_tiny_sd3_pipeline(tmp_path / "sd3", t5=True)
    backbone = StableDiffusion3Backbone(str(teacher), drop_t5=True, max_sequence_length=TOKENS)
    assert backbone.text_encoder_3 is None and backbone.tokenizer_3 is None
    cond = backbone.encode_prompts(PROMPTS)
    assert cond.prompt_embeds.shape == (2, 77 + TOKENS, 32) and not cond.prompt_embeds[:, 77:].any()
    folder = backbone.save_pipeline(backbone.build_student(), tmp_path / "out")
    assert not (folder / "text_encoder_3").exists()
    assert _pipeline(folder).text_encoder_3 is None


def test_a_half_precision_teacher_gives_a_full_precision_student(teacher):
    half = StableDiffusion3Backbone(str(teacher), dtype="bfloat16", max_sequence_length=TOKENS)
    assert half.transformer.dtype == torch.bfloat16
    student = half.build_student()
    full = StableDiffusion3Backbone(str(teacher), max_sequence_length=TOKENS).transformer
    assert all(p.dtype == torch.float32 for p in student.parameters())
    own = full.state_dict()
    assert all(torch.equal(v, own[k]) for k, v in student.state_dict().items())


def test_a_resolution_the_transformer_cannot_patch_is_refused(teacher, data, tmp_path):
    with pytest.raises(ConfigError, match="multiple of 4"):
        rk.recipe("lcd", _base(teacher, data, tmp_path, resolution=18))
