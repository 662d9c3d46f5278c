"""The stable-diffusion backbone on tiny SD pipelines built offline (epsilon and v-prediction)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rewardkit.backbones.stable_diffusion import (
    DEFAULT_LORA_TARGETS,
    GUIDANCE_EMBEDDING_FILE,
    LORA_WEIGHTS_FILE,
    TARGET_UNET_DIR,
    W_EMBEDDED_LORA_DIR,
    StableDiffusionBackbone,
    load_student_lora,
)
from rewardkit.backbones import Conditioning
from rewardkit.errors import ConfigError
from rewardkit.models import check_pipeline_location
from rewardkit.testing.tiny_sd import build_tiny_sd_pipeline

PREDICTION_TYPES = ("epsilon", "v_prediction")


@pytest.fixture(scope="module", params=PREDICTION_TYPES)
def teacher_dir(request, tmp_path_factory) -> Path:
    return build_tiny_sd_pipeline(tmp_path_factory.mktemp(request.param) / "sd",
                                  prediction_type=request.param)


@pytest.fixture(scope="module")
def backbone(teacher_dir) -> StableDiffusionBackbone:
    return StableDiffusionBackbone(str(teacher_dir))


def _inputs(backbone, batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, backbone.latent_channels, backbone.sample_size, backbone.sample_size,
                          generator=g)
    timesteps = torch.tensor([999, 259, 19, 500][:batch])
    return latents, timesteps, backbone.encode_prompts(["a red circle", "a photo of a dog"][:batch])


def _randomise_lora(unet, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=g) * 0.05)


# ---------------------------------------------------------------- loading


def test_tiny_pipeline_loads_through_backbone_and_diffusers(teacher_dir, backbone):
    from diffusers import DiffusionPipeline

    expected = teacher_dir.parent.name.rstrip("0123456789")  # mktemp adds a counter
    assert backbone.prediction_type == expected
    assert backbone.noise_scheduler.config.num_train_timesteps == 1000
    assert backbone.alphas_cumprod.shape == (1000,)
    assert (backbone.latent_channels, backbone.text_embed_dim, backbone.sample_size) == (4, 32, 8)
    assert backbone.vae_scaling_factor == pytest.approx(0.18215)
    pipe = DiffusionPipeline.from_pretrained(teacher_dir)
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert pipe.scheduler.config.prediction_type == expected
    index = json.loads((teacher_dir / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]


def test_tiny_pipeline_is_seeded_and_sizes_are_configurable(tmp_path):
    a = build_tiny_sd_pipeline(tmp_path / "a", seed=3)
    b = build_tiny_sd_pipeline(tmp_path / "b", seed=3)
    c = build_tiny_sd_pipeline(tmp_path / "c", seed=4, sample_size=4, unet_block_out_channels=(32, 32, 64),
                               vae_block_out_channels=(32, 32, 32), cross_attention_dim=16)
    weights = "unet/diffusion_pytorch_model.safetensors"
    assert (a / weights).read_bytes() == (b / weights).read_bytes()
    assert (a / weights).read_bytes() != (c / weights).read_bytes()
    big = StableDiffusionBackbone(str(c))
    assert big.text_embed_dim == 16 and big.vae_scale_factor == 4
    assert big.decode_latents(torch.zeros(1, 4, 4, 4)).shape == (1, 3, 16, 16)


def test_tokenizer_is_clip_bpe_with_special_tokens(backbone):
    tok = backbone.tokenizer
    ids = tok("a photo of a zebra!").input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.convert_ids_to_tokens(ids[2]) == "photo</w>"  # a merged word: one token
    assert tok.model_max_length == 77 and tok.pad_token == "<|endoftext|>"


def test_frozen_parts_are_frozen_and_in_eval(backbone):
    for module in (backbone.unet, backbone.vae, backbone.text_encoder):
        assert not module.training
        assert not any(p.requires_grad for p in module.parameters())


def test_missing_path_fails_before_loading_and_names_it(tmp_path, monkeypatch):
    import diffusers

    def boom(*args, **kwargs):
        raise AssertionError("from_pretrained must not be called")

    monkeypatch.setattr(diffusers.UNet2DConditionModel, "from_pretrained", boom)
    for bad in (str(tmp_path / "nowhere"), "./not/here/at/all", "not-a-dir"):
        with pytest.raises(ConfigError, match="does not exist") as info:
            StableDiffusionBackbone(bad)
        assert bad in str(info.value)
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "unet").mkdir()
    with pytest.raises(ConfigError, match="missing vae, text_encoder, tokenizer, scheduler"):
        StableDiffusionBackbone(str(tmp_path / "half"))
    check_pipeline_location("stabilityai/stable-diffusion-2-1")  # hub ids pass through
    with pytest.raises(ConfigError, match="dtype"):
        StableDiffusionBackbone("stabilityai/stable-diffusion-2-1", dtype="float8")


def test_backbone_is_registered(fresh_host, teacher_dir):
    from rewardkit.plugins import get_host

    spec = get_host().get("backbone", "stable-diffusion")
    assert spec.factory is StableDiffusionBackbone
    assert {p.name for p in spec.params} >= {"pretrained_model_name_or_path", "revision", "variant", "dtype"}
    built = spec.build(pretrained_model_name_or_path=str(teacher_dir))
    assert isinstance(built, StableDiffusionBackbone)


# ---------------------------------------------------------------- codecs


def test_encode_prompts_and_cached_empty_prompt(backbone):
    cond = backbone.encode_prompts(["a red circle", "a blue square", "zebra"])
    assert isinstance(cond, Conditioning) and len(cond) == 3
    embeds = cond.prompt_embeds
    assert embeds.shape == (3, 77, 32) and not embeds.requires_grad
    assert cond.added_cond_kwargs is None  # SD 1.x/2.x: the prompt embeddings alone
    assert not torch.allclose(embeds[0], embeds[1])
    empty = backbone.empty_conditioning(4).prompt_embeds
    assert empty.shape == (4, 77, 32)
    torch.testing.assert_close(empty[2], backbone.encode_prompts([""]).prompt_embeds[0])
    assert backbone.empty_conditioning(1).prompt_embeds.data_ptr() == empty.data_ptr()  # encoded once


def test_encode_images_gives_scaled_latents(backbone):
    pixels = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    latents = backbone.encode_images(pixels, generator=torch.Generator().manual_seed(1))
    assert latents.shape == (2, 4, 8, 8)
    with torch.no_grad():
        dist = backbone.vae.encode(pixels).latent_dist
    expected = dist.sample(torch.Generator().manual_seed(1)) * backbone.vae_scaling_factor
    torch.testing.assert_close(latents, expected)


def test_decode_is_in_unit_range_and_differentiable(backbone):
    latents = torch.randn(2, 4, 8, 8, requires_grad=True)
    images = backbone.decode_latents(latents * 3)
    assert images.shape == (2, 3, 16, 16)
    assert images.min() >= 0 and images.max() <= 1
    images.mean().backward()
    assert latents.grad is not None and torch.isfinite(latents.grad).all()
    assert latents.grad.abs().sum() > 0
    assert backbone.vae.decoder.conv_in.weight.grad is None  # the decoder stays frozen


# ---------------------------------------------------------------- the student


def test_student_equals_teacher_with_zero_guidance_embedding(backbone):
    student = backbone.build_student()
    cond_proj = student.time_embedding.cond_proj
    assert cond_proj.in_features == 256 and cond_proj.bias is None
    assert student.training and all(p.requires_grad for p in student.parameters())
    latents, timesteps, embeds = _inputs(backbone)
    with torch.no_grad():
        teacher = backbone.predict(backbone.unet, latents, timesteps, embeds)
        zero = backbone.predict(student, latents, timesteps, embeds, torch.zeros(2, 256))
        other = backbone.predict(student, latents, timesteps, embeds, torch.randn(2, 256))
    assert torch.equal(teacher, zero)
    assert not torch.allclose(teacher, other)
    with torch.no_grad():  # an independent copy: training the student leaves the teacher alone
        student.conv_in.weight.add_(1.0)
    assert not torch.equal(student.conv_in.weight, backbone.unet.conv_in.weight)


def test_student_from_half_precision_teacher_gets_full_precision_weights(teacher_dir, backbone):
    half = StableDiffusionBackbone(str(teacher_dir), dtype="bfloat16")
    assert half.unet.dtype == torch.bfloat16 and half.vae.dtype == torch.bfloat16
    student = half.build_student()
    assert student.dtype == torch.float32
    torch.testing.assert_close(student.conv_in.weight, backbone.unet.conv_in.weight, rtol=0, atol=0)


def test_student_without_guidance_embedding_is_a_teacher_copy(backbone):
    student = backbone.build_student(time_cond_proj_dim=None)
    assert student.time_embedding.cond_proj is None
    latents, timesteps, embeds = _inputs(backbone)
    with torch.no_grad():
        assert torch.equal(backbone.predict(student, latents, timesteps, embeds),
                           backbone.predict(backbone.unet, latents, timesteps, embeds))


# ---------------------------------------------------------------- saving


def test_saved_pipeline_samples_with_lcm_scheduler(backbone, tmp_path):
    from diffusers import DiffusionPipeline, LCMScheduler

    student = backbone.build_student()
    with torch.no_grad():
        student.time_embedding.cond_proj.weight.mul_(3.0)  # something the teacher does not have
    out = backbone.save_pipeline(student, tmp_path / "student")
    assert {p.name for p in out.iterdir()} == {"model_index.json", "unet", "vae", "text_encoder",
                                               "tokenizer", "scheduler"}
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dir left
    pipe = DiffusionPipeline.from_pretrained(out)
    assert isinstance(pipe.scheduler, LCMScheduler)
    config = pipe.scheduler.config
    assert config.prediction_type == backbone.prediction_type
    assert (config.original_inference_steps, config.timestep_scaling) == (50, 10.0)
    assert pipe.unet.config.time_cond_proj_dim == 256
    latents, timesteps, embeds = _inputs(backbone)
    w = torch.randn(2, 256)
    with torch.no_grad():
        torch.testing.assert_close(backbone.predict(pipe.unet, latents, timesteps, embeds, w),
                                   backbone.predict(student, latents, timesteps, embeds, w))
    pipe.set_progress_bar_config(disable=True)
    for steps in (1, 2, 4):
        images = pipe(["a red circle"], num_inference_steps=steps, guidance_scale=7.5,
                      generator=torch.Generator().manual_seed(0)).images
        assert len(images) == 1 and images[0].size == (16, 16)
        assert len(pipe.scheduler.timesteps) == steps


def test_save_replaces_existing_folder_and_survives_a_crash(backbone, tmp_path, monkeypatch):
    import rewardkit.backbones.stable_diffusion as sd

    student = backbone.build_student()
    out = backbone.save_pipeline(student, tmp_path / "student")
    (out / "stale.txt").write_text("old")
    backbone.save_pipeline(torch.nn.DataParallel(student), out)  # wrapped models are unwrapped
    assert not (out / "stale.txt").exists()
    before = (out / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(sd, "_save_merged_unet", crash)
    with pytest.raises(OSError, match="disk full"):
        backbone.save_pipeline(student, out)
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student"]


# ---------------------------------------------------------------- LoRA


def test_lora_adapters_are_the_only_trainable_parameters(backbone):
    student = backbone.add_lora(backbone.build_student(time_cond_proj_dim=None), rank=4)
    trainable = [n for n, p in student.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    adapted = {n.rsplit(".lora_", 1)[0] for n in trainable}
    for target in DEFAULT_LORA_TARGETS:
        assert any(name.endswith("." + target) for name in adapted), target
    with_embedding = backbone.add_lora(backbone.build_student(), rank=4)
    extra = [n for n, p in with_embedding.named_parameters() if p.requires_grad and "lora_" not in n]
    assert extra == ["time_embedding.cond_proj.weight"]
    frozen = backbone.add_lora(backbone.build_student(), rank=4, train_cond_proj=False)
    assert all("lora_" in n for n, p in frozen.named_parameters() if p.requires_grad)
    with pytest.raises(ConfigError, match="rank"):
        backbone.add_lora(backbone.build_student(), rank=0)


def test_fresh_lora_does_not_change_the_student(backbone):
    latents, timesteps, embeds = _inputs(backbone)
    student = backbone.build_student()
    w = torch.randn(2, 256)
    with torch.no_grad():
        before = backbone.predict(student, latents, timesteps, embeds, w)
        backbone.add_lora(student, rank=4)
        after = backbone.predict(student, latents, timesteps, embeds, w)
    torch.testing.assert_close(before, after)


def test_lora_file_loads_on_teacher_and_matches_merged_unet(backbone, teacher_dir, tmp_path):
    from diffusers import DiffusionPipeline

    student = backbone.add_lora(backbone.build_student(time_cond_proj_dim=None), rank=4, alpha=2)
    _randomise_lora(student)
    out = backbone.save_pipeline(student, tmp_path / "lora-student")
    assert (out / LORA_WEIGHTS_FILE).is_file() and not (out / GUIDANCE_EMBEDDING_FILE).exists()
    merged = DiffusionPipeline.from_pretrained(out).unet
    teacher = DiffusionPipeline.from_pretrained(teacher_dir)
    teacher.load_lora_weights(str(out))  # plain diffusers, LCM-LoRA style
    latents, timesteps, embeds = _inputs(backbone)
    with torch.no_grad():
        trained = backbone.predict(student, latents, timesteps, embeds)
        plain = backbone.predict(backbone.unet, latents, timesteps, embeds)
        torch.testing.assert_close(backbone.predict(merged, latents, timesteps, embeds), trained,
                                   rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(backbone.predict(teacher.unet, latents, timesteps, embeds), trained,
                                   rtol=1e-4, atol=1e-5)
    assert (trained - plain).abs().max() > 1e-3  # the LoRA really changed something


def test_w_conditioned_lora_loads_with_its_guidance_embedding(backbone, teacher_dir, tmp_path, caplog):
    from diffusers import DiffusionPipeline

    student = backbone.add_lora(backbone.build_student(), rank=4)
    _randomise_lora(student, seed=2)
    with caplog.at_level("WARNING"):
        out = backbone.save_pipeline(student, tmp_path / "lora-w")
    lora = out / W_EMBEDDED_LORA_DIR
    assert "cannot add its guidance embedding" in caplog.text and str(lora) in caplog.text
    assert (lora / GUIDANCE_EMBEDDING_FILE).is_file() and (lora / LORA_WEIGHTS_FILE).is_file()
    # plain load_lora_weights of the pipeline folder fails loudly instead of dropping the embedding
    with pytest.raises(EnvironmentError, match="no file named pytorch_lora_weights"):
        DiffusionPipeline.from_pretrained(teacher_dir).load_lora_weights(str(out))
    # the diffusers-only code of lora_w_embedded/README.md, run as written there
    readme = (lora / "README.md").read_text()
    code = readme.split("```python\n", 1)[1].split("```", 1)[0].replace("TEACHER", repr(str(teacher_dir)))
    namespace: dict = {}
    exec(code, namespace)  # noqa: S102 - the documented snippet itself
    plain_diffusers = namespace["pipe"]
    teacher = load_student_lora(DiffusionPipeline.from_pretrained(teacher_dir), out)
    merged = DiffusionPipeline.from_pretrained(out).unet
    latents, timesteps, embeds = _inputs(backbone)
    w = torch.randn(2, 256)
    with torch.no_grad():
        trained = backbone.predict(student, latents, timesteps, embeds, w)
        for unet in (merged, teacher.unet, plain_diffusers.unet):
            torch.testing.assert_close(backbone.predict(unet, latents, timesteps, embeds, w), trained,
                                       rtol=1e-4, atol=1e-5)
        # without the guidance embedding (what a silent plain load gave) the output differs
        teacher_lora = DiffusionPipeline.from_pretrained(teacher_dir)
        teacher_lora.load_lora_weights(str(lora))
        assert (backbone.predict(teacher_lora.unet, latents, timesteps, embeds) - trained).abs().max() > 1e-3
    assert type(plain_diffusers.scheduler).__name__ == "LCMScheduler"


def test_the_ema_target_is_exported_as_unet_target(backbone, tmp_path):
    from diffusers import DiffusionPipeline, UNet2DConditionModel

    student, target = backbone.build_student(), backbone.build_student()
    with torch.no_grad():
        target.time_embedding.cond_proj.weight.normal_()
    out = backbone.save_pipeline(student, tmp_path / "full", target=target)
    loaded = UNet2DConditionModel.from_pretrained(out, subfolder=TARGET_UNET_DIR)
    for key, value in target.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)
    pipe = DiffusionPipeline.from_pretrained(out)  # the pipeline's unet is the online student
    torch.testing.assert_close(pipe.unet.time_embedding.cond_proj.weight,
                               student.time_embedding.cond_proj.weight)
    assert not (backbone.save_pipeline(student, tmp_path / "no-target") / TARGET_UNET_DIR).exists()
    with pytest.raises(ConfigError, match="no LoRA adapters"):
        backbone.save_pipeline(backbone.build_student(), tmp_path / "x", lora=True)


def test_tiny_tokenizer_makes_every_word_one_token_whatever_their_order(tmp_path):
    from transformers import CLIPTokenizer

    from rewardkit.testing.tiny_sd import write_tiny_clip_tokenizer

    # "red" shares "re" with "green", "large" shares "la" with "black": a naive merge list made
    # by walking the words in order split the later words into several tokens
    words = ["red", "green", "large", "black", "square", "squares"]
    tokenizer = CLIPTokenizer.from_pretrained(write_tiny_clip_tokenizer(tmp_path, words))
    assert [len(tokenizer.tokenize(w)) for w in words] == [1] * len(words)
    assert tokenizer.tokenize("two dogs") != []  # other text still falls back to bytes


def test_stable_diffusion_meets_the_backbone_contract(backbone, tmp_path):
    from rewardkit.testing import check_backbone

    check_backbone(backbone, tmp_path)


def test_the_backbone_contract_catches_a_broken_backbone(teacher_dir, tmp_path):
    from rewardkit.testing import check_backbone

    class NoGradientDecode(StableDiffusionBackbone):
        def decode_latents(self, latents):
            return super().decode_latents(latents.detach())

    class WrongWidth(StableDiffusionBackbone):
        def encode_prompts(self, prompts):
            return super().encode_prompts(prompts).map(lambda t: t[..., :8])

    with pytest.raises(AssertionError, match="not differentiable"):
        check_backbone(NoGradientDecode(str(teacher_dir)))
    with pytest.raises(AssertionError, match="text_embed_dim"):
        check_backbone(WrongWidth(str(teacher_dir)))
