"""`rewardkit world build --size tiny`: every asset it writes loads through the public paths."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rewardkit import api, cli
from rewardkit.errors import ConfigError
from rewardkit.world import build as world_build
from rewardkit.world.assets import FEATURES, LRM, SCORER, TEACHER, load_net
from rewardkit.world.build import BUILD_FILE, PLANS, build_world, load_build_report, make_plan
from rewardkit.world.grammar import make_splits
from rewardkit.world.nets import WorldFeatureNet
from rewardkit.world.teacher import world_words


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One tiny build through the CLI, shared by the tests of this module."""
    from rewardkit.plugins import reset_host

    out = tmp_path_factory.mktemp("world")
    reset_host()
    assert cli.run(["world", "build", "--size", "tiny", "--out", str(out), "--no-progress",
                    "--seed", "3"]) == 0
    return out


def test_build_writes_every_asset_and_a_report(built):
    assert {p.name for p in built.iterdir()} == {TEACHER, SCORER, FEATURES, LRM, BUILD_FILE}
    report = load_build_report(built)
    assert report["size"] == "tiny" and report["seed"] == 3
    assert set(report["seconds"]) >= {"vae", "unet", "world-scorer", "features", "lrm",
                                      "quality", "total"}
    assert report["teacher"]["unet"]["steps"] == PLANS["tiny"].teacher.unet_steps
    assert report["teacher"]["vae"]["steps"] == PLANS["tiny"].teacher.vae_steps
    quality = report["quality"]
    teacher = quality["teacher"]
    for key in ("validation", "test", "untrained_unet_validation"):
        assert 0.0 <= teacher[key]["judge_reward"] <= 1.0
        assert set(teacher[key]["terms"]) >= {"colour", "shape", "background"}
    assert teacher["renders_validation"]["judge_reward"] > 0.8  # real renders: the ceiling
    assert -1.0 <= quality["world-scorer"]["correlation_with_judge"] <= 1.0
    assert set(quality["features"]["attribute_accuracy"]) == {"count", "size", "colour", "shape",
                                                               "background"}
    assert report["teacher"]["megabytes"] > 0


def test_teacher_loads_through_the_stable_diffusion_backbone(built):
    from rewardkit.backbones.stable_diffusion import StableDiffusionBackbone

    backbone = StableDiffusionBackbone(str(built / TEACHER))
    assert backbone.prediction_type == "epsilon"
    assert backbone.sample_size == 8 and backbone.latent_channels == 4
    assert backbone.unet.dtype == torch.float32  # stored as float16, loaded as asked
    report = json.loads((built / BUILD_FILE).read_text())
    assert backbone.vae_scaling_factor == pytest.approx(report["teacher"]["scaling_factor"])
    for word in world_words():  # every grammar word is a single token
        assert len(backbone.tokenizer.tokenize(word)) == 1, word
    caption = make_splits(0).validation[0].caption()
    embeds = backbone.encode_prompts([caption, ""])
    assert embeds.prompt_embeds.shape == (2, 16, backbone.text_embed_dim)
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    latents = backbone.encode_images(pixels, generator=torch.Generator().manual_seed(0))
    assert latents.shape == (2, 4, 8, 8)
    assert backbone.decode_latents(latents).shape == (2, 3, 32, 32)
    student = backbone.build_student(time_cond_proj_dim=32)
    out = backbone.predict(student, latents, torch.tensor([500, 10]), embeds,
                           timestep_cond=torch.zeros(2, 32))
    assert out.shape == latents.shape


def test_teacher_loads_with_plain_diffusers_and_samples(built):
    from diffusers import DDIMScheduler, DiffusionPipeline, StableDiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(built / TEACHER))
    assert isinstance(pipe, StableDiffusionPipeline)
    assert pipe.unet.dtype == torch.float32
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a small red circle on a white background", num_inference_steps=2,
                 guidance_scale=7.5, generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (32, 32)


def test_scorer_and_features_load(built):
    scorer = api.reward_model("world-scorer", path=str(built / SCORER))
    images = torch.rand(3, 3, 32, 32)
    prompts = [scene.caption() for scene in make_splits(0).validation[:3]]
    scores = scorer.score(images, prompts)
    assert scores.shape == (3,) and torch.isfinite(scores).all()
    features = load_net(WorldFeatureNet, built / FEATURES)
    assert features.features(images).shape[0] == 3
    assert not any(p.requires_grad for p in features.parameters())


def test_the_pretrained_world_lrm_loads_into_rg_lcd_sized_for_the_teacher(built):
    from rewardkit.proxies import LatentRewardModel

    report = json.loads((built / "build.json").read_text())["lrm"]
    assert report["preference_steps"] == PLANS["tiny"].lrm_preference_steps
    assert 0.0 <= report["heldout"]["proxy_heldout_accuracy"] <= 1.0
    proxy = LatentRewardModel.from_pretrained(built / LRM)
    backbone = api.backbone("stable-diffusion", pretrained_model_name_or_path=str(built / TEACHER))
    assert proxy.config["text_dim"] == backbone.text_embed_dim
    latents = torch.randn(2, backbone.latent_channels, 8, 8)
    assert proxy(latents, backbone.encode_prompts(["a", "b"]).prompt_embeds).shape == (2,)
    from rewardkit.proxies.preference_set import PreferenceSet

    rehearsal = PreferenceSet.load(built / LRM / "preference_set")  # shipped for rehearsal
    assert rehearsal.num_prompts == PLANS["tiny"].lrm_preference_prompts
    assert rehearsal.prompt_embeds.shape[-1] == backbone.text_embed_dim


def test_a_failed_stage_keeps_the_previous_assets(built, tmp_path, monkeypatch):
    import shutil

    out = tmp_path / "world"
    shutil.copytree(built, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def broken(**_):
        raise RuntimeError("scorer training broke")

    monkeypatch.setattr("rewardkit.world.train_judges.train_scorer", broken)
    with pytest.raises(RuntimeError, match="scorer training broke"):
        build_world(out, size="tiny", progress=False)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # untouched, and no temporary folder left behind
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_plan_options_are_checked():
    with pytest.raises(ConfigError, match="--size"):
        make_plan("huge")
    with pytest.raises(ConfigError, match="--minutes"):
        make_plan("full", minutes=0)
    plan = make_plan("full", minutes=7)
    assert plan.teacher.vae_seconds + plan.teacher.unet_seconds == pytest.approx(420)
    assert plan.teacher.unet_steps == PLANS["full"].teacher.unet_steps
    with pytest.raises(ConfigError, match="world build"):
        load_build_report(world_build.Path("/nonexistent-world"))


def test_shipped_world_when_built():
    """The assets shipped in the package (skipped before the first full build)."""
    from rewardkit.world.assets import ASSETS

    if not (ASSETS / BUILD_FILE).is_file():
        pytest.skip("the world has not been built into the package yet")
    report = load_build_report()
    assert report["size"] == "full"
    teacher = report["quality"]["teacher"]
    # worth distilling: clearly better than the same pipeline with an untrained UNet
    assert teacher["validation"]["judge_reward"] > teacher["untrained_unet_validation"]["judge_reward"] + 0.1
    # The package carries the world so a laptop run needs no download; each part keeps a budget so the
    # wheel stays a quick install: the UNet world (teacher, LRM, features, scorer) under 16 MiB and the
    # flow-matching teacher beside it under 8 MiB.
    def size(paths):
        return sum(p.stat().st_size for p in paths if p.is_file())

    flow = size((ASSETS / "teacher-flow").rglob("*"))
    total = size(ASSETS.rglob("*"))
    assert total - flow < 16 * 2**20
    assert flow < 8 * 2**20
    assert np.isfinite(report["quality"]["world-scorer"]["correlation_with_judge"])
