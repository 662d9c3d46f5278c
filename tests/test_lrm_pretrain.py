"""The ``lrm-pretrain`` recipe on the tiny offline SD pipeline: losses, stages, resume, rg-lcd."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Sequence

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import rewardkit as rk
from rewardkit import cli
from rewardkit.data.specs import build_training_loader
from rewardkit.errors import ConfigError
from rewardkit.hookspecs import hookimpl
from rewardkit.plugins import load_host, reset_host
from rewardkit.proxies import LatentRewardModel
from rewardkit.proxies.preference_set import PreferenceSet
from rewardkit.proxies.pretrain_losses import (caption_groups, multi_positive_info_nce,
                                               pairwise_logistic_loss)
from rewardkit.recipes.lrm_pretrain import (HELDOUT_SET_DIR, PROXY_DIR, PREFERENCE_SET_DIR,
                                            LRMPretrainConfig, LRMPretrainRecipe)
from rewardkit.rewards.base import RewardModel
from rewardkit.testing.tiny_sd import build_tiny_sd_pipeline
from rewardkit.training.metrics import read_metrics
from rewardkit.training.safe_state import load_optimizer_state, save_optimizer_state
from rewardkit.testing.tiny_training import tiny_lcd_config, write_tiny_image_folder

SMALL_LRM = dict(embed_dim=16, image_widths=[8, 16], text_width=16, text_heads=2)
FAST_CANDIDATES = dict(preference_teacher_settings=[[2, 1.0]], preference_noise_levels=[0.5, 1.0])


def pretrain_lrm(values) -> Path:
    """Run lrm-pretrain from a mapping of config values; the saved proxy folder."""
    import rewardkit as rk

    return rk.recipe("lrm-pretrain", dict(values)).run(progress=False) / "proxy"


class Brightness(RewardModel):
    """The in-test expert: mean brightness of the decoded image (counts its builds)."""

    name = "test-brightness"
    builds = 0

    def __init__(self) -> None:
        Brightness.builds += 1

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return images.mean((1, 2, 3))


class TestRewards:
    @hookimpl
    def register_reward_models(self, register):
        register(Brightness)


@pytest.fixture(autouse=True)
def test_rewards():
    reset_host(load_host(extra_plugins=[("lrm-pretrain-test-rewards", TestRewards())]))
    yield
    reset_host()


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("lrm-pretrain")
    return {"teacher": build_tiny_sd_pipeline(root / "teacher"),
            "data": write_tiny_image_folder(root / "data", count=8, size=16),
            "heldout": write_tiny_image_folder(root / "heldout", count=4, size=16, seed=1)}


def config(assets, out, **overrides) -> LRMPretrainConfig:
    values = dict(pretrained_teacher_model=str(assets["teacher"]),
                  train_shards_path_or_url=str(assets["data"]), output_dir=str(out),
                  resolution=16, train_batch_size=4, contrastive_steps=3, learning_rate=3e-3,
                  lr_warmup_steps=2, proxy_params=dict(SMALL_LRM), checkpointing_steps=0,
                  validation_steps=0, report_to="none", seed=0, **FAST_CANDIDATES)
    values.update(overrides)
    built = LRMPretrainConfig(**values)
    built.validate()
    return built


def with_preferences(assets, out, **overrides) -> LRMPretrainConfig:
    return config(assets, out, **{
        "reward": "test-brightness", "preference_num_prompts": 3, "preference_steps": 3,
        "preference_batch_size": 4, "preference_learning_rate": 3e-3,
        "eval_shards_path_or_url": str(assets["heldout"]), "eval_num_prompts": 2, **overrides})


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "proxy.safetensors"))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ---------------------------------------------------------------- the losses


def clip_loss(image, text, scale):
    logits = scale * image @ text.T
    labels = torch.arange(image.shape[0])
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def unit(x):
    return F.normalize(x, dim=-1)


def test_info_nce_equals_the_clip_loss_when_captions_are_distinct():
    torch.manual_seed(0)
    image, text = unit(torch.randn(5, 8)), unit(torch.randn(5, 8))
    expected = clip_loss(image, text, 7.0)
    got = multi_positive_info_nce(image, text, 7.0, captions=list("abcde"))
    assert torch.allclose(got, expected, atol=1e-6)
    assert torch.allclose(multi_positive_info_nce(image, text, 7.0), expected, atol=1e-6)


def test_info_nce_does_not_treat_duplicate_captions_as_negatives():
    captions = ["red", "blue", "red", "green"]
    groups = caption_groups(captions)
    assert groups.tolist() == [0, 1, 0, 2]
    # a perfect model: each image equals its caption's (shared) text embedding
    basis = torch.eye(3)
    image = text = basis[groups]
    scale = 50.0
    loss = multi_positive_info_nce(image, text, scale, captions=captions)
    # the minimum is the targets' entropy: rows of the red pair are uniform over 2 positives
    entropy = (2 * math.log(2)) / 4
    assert float(loss) == pytest.approx(entropy, abs=1e-6)
    assert float(clip_loss(image, text, scale)) > math.log(2) / 2  # CLIP would push them apart
    # swapping which red image is "the" partner of which red caption changes nothing
    torch.manual_seed(1)
    noisy_image, noisy_text = unit(torch.randn(4, 3)), unit(torch.randn(4, 3))
    base = multi_positive_info_nce(noisy_image, noisy_text, 5.0, captions=captions)
    swapped = multi_positive_info_nce(noisy_image[[2, 1, 0, 3]], noisy_text, 5.0, captions=captions)
    assert torch.allclose(base, swapped, atol=1e-6)
    # and the gradient never pushes the two red images apart at the optimum
    image = image.clone().requires_grad_(True)
    multi_positive_info_nce(unit(image), text, scale, captions=captions).backward()
    assert image.grad.abs().max() < 1e-4
    with pytest.raises(ConfigError, match="one caption per sample"):
        multi_positive_info_nce(image.detach(), text, scale, captions=captions[:3])


def test_pairwise_logistic_loss_is_bradley_terry():
    s_a, s_b = torch.tensor([0.3, -0.2]), torch.tensor([0.1, 0.4])
    e_a, e_b = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 5.0])  # a wins, then b wins
    loss = pairwise_logistic_loss(s_a, s_b, e_a, e_b, 10.0)
    expected = -(F.logsigmoid(torch.tensor(10 * 0.2)) + F.logsigmoid(torch.tensor(10 * 0.6))) / 2
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)


# ---------------------------------------------------------------- pickle-free state


def test_optimizer_state_round_trips_without_pickles(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW([{"params": [model.weight]}, {"params": [model.bias],
                                                                 "weight_decay": 0.0}], lr=0.1)
    for _ in range(2):
        model(torch.randn(4, 3)).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    save_optimizer_state(optimizer, tmp_path)
    tensors = load_file(str(tmp_path / "optimizer.safetensors"))
    assert {"state.0.exp_avg", "state.1.exp_avg_sq", "state.0.step"} <= set(tensors)
    meta = json.loads((tmp_path / "optimizer.json").read_text())
    assert meta["param_groups"][1]["weight_decay"] == 0.0
    fresh = torch.optim.AdamW([{"params": [model.weight]}, {"params": [model.bias]}], lr=0.5)
    load_optimizer_state(fresh, tmp_path)
    assert fresh.state_dict()["param_groups"] == optimizer.state_dict()["param_groups"]
    for key, value in optimizer.state_dict()["state"][0].items():
        assert torch.equal(fresh.state_dict()["state"][0][key], value)

    path = tmp_path / "optimizer.safetensors"
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(ConfigError, match="optimizer.safetensors"):
        load_optimizer_state(fresh, tmp_path)


# ---------------------------------------------------------------- configuration


def test_registered_in_the_host_and_the_cli(capsys):
    assert rk.describe("recipe", "lrm-pretrain").factory is LRMPretrainRecipe
    assert cli.run(["list", "recipe", "--json"]) == 0
    names = [row["name"] for row in json.loads(capsys.readouterr().out)]
    assert "lrm-pretrain" in names and "rg-lcd" in names


@pytest.mark.parametrize("key, value, match", [
    ("train_batch_size", 0, "train_batch_size"),
    ("train_batch_size", 1, "train_batch_size"),
    ("contrastive_steps", -1, "contrastive_steps"),
    ("learning_rate", 0.0, "learning_rate"),
    ("preference_learning_rate", -1.0, "preference_learning_rate"),
    ("preference_batch_size", 0, "preference_batch_size"),
    ("eval_num_prompts", 0, "eval_num_prompts"),
    ("reward", "no-such-rm", "reward: no reward named 'no-such-rm'"),
    ("proxy", "no-such-proxy", "proxy: no proxy named"),
    ("mixed_precision", "fp8", "mixed_precision"),
    ("preference_teacher_settings", [[0, 1.0]], "preference_teacher_settings"),
    ("preference_noise_levels", [0.0], "preference_noise_levels"),
    ("resume_from_checkpoint", "checkpoint-7", "resume_from_checkpoint"),
    ("pretrained_proxy", "/no/such/folder", "pretrained_proxy"),
    ("train_shards_path_or_url", "/no/such/data", "train_shards_path_or_url"),
    ("train_shards_path_or_url", "world:nope", "world split"),
])
def test_bad_values_raise_config_errors_naming_the_key(assets, tmp_path, key, value, match):
    with pytest.raises(ConfigError, match=match):
        with_preferences(assets, tmp_path, **{key: value})


def test_config_errors_of_combinations_and_keys(assets, tmp_path):
    with pytest.raises(ConfigError, match="eval_shards_path_or_url needs reward"):
        config(assets, tmp_path, eval_shards_path_or_url=str(assets["heldout"]))
    with pytest.raises(ConfigError, match="eval_shards_path_or_url"):
        with_preferences(assets, tmp_path, eval_shards_path_or_url="/no/such/eval")
    with pytest.raises(ConfigError, match="nothing to train"):
        config(assets, tmp_path, contrastive_steps=0)
    with pytest.raises(ConfigError, match="did you mean 'contrastive_steps'"):
        rk.recipe("lrm-pretrain", contrastive_step=3)
    built = rk.recipe("lrm-pretrain", pretrained_teacher_model=str(assets["teacher"]),
                      train_shards_path_or_url="world:train", contrastive_steps="5")
    assert isinstance(built, LRMPretrainRecipe) and built.config.contrastive_steps == 5


def test_the_world_is_a_training_source():
    loader = build_training_loader("world:train?size=8", resolution=16, batch_size=4, seed=0)
    batch = next(loader)
    assert batch["pixel_values"].shape == (4, 3, 16, 16) and len(batch["captions"]) == 4


# ---------------------------------------------------------------- the contrastive stage


def test_contrastive_stage_trains_every_parameter_and_lowers_the_loss(assets, tmp_path):
    recipe = LRMPretrainRecipe(config(assets, tmp_path, contrastive_steps=12,
                                      proxy_params={**SMALL_LRM, "trainable": "heads"}))
    recipe.setup()
    proxy = recipe.proxy_model
    before = {n: p.detach().clone() for n, p in proxy.named_parameters()}
    fixed = build_training_loader(str(assets["data"]), resolution=16, batch_size=8, seed=0,
                                  center_crop=True)
    batch = next(fixed)
    latents, embeds = recipe.encode_batch(batch)

    def fixed_loss() -> float:
        with torch.no_grad():
            return float(multi_positive_info_nce(proxy.encode_latents(latents),
                                                 proxy.encode_prompts(embeds),
                                                 proxy.logit_scale_value(),
                                                 captions=batch["captions"]))

    start = fixed_loss()
    assert recipe.optimizer.param_groups[0]["lr"] == pytest.approx(1.5e-3)  # warm-up, step 1
    out = recipe.run(progress=False)
    assert fixed_loss() < start - 0.1
    changed = {n for n, p in proxy.named_parameters() if not torch.equal(before[n], p)}
    assert changed == set(before)  # all of them, though trainable="heads"
    assert not any(p.requires_grad for p in proxy.parameters())

    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 13))  # no expert: no initial row
    assert all(r["stage"] == "contrastive" and r["contrastive_loss"] > 0 for r in rows)
    # logged after each step's scheduler step, as diffusers' scripts log it: the next step's rate
    assert [r["lr"] for r in rows[:3]] == pytest.approx([3e-3, 3e-3, 3e-3])
    saved = LatentRewardModel.from_pretrained(out / PROXY_DIR)
    assert saved.trainable == "heads"  # the configured value, for rg-lcd's online update
    assert_same_weights(weights(out / PROXY_DIR),
                        {k: v.cpu() for k, v in proxy.state_dict().items()})
    assert json.loads((out / "config.json").read_text())["contrastive_steps"] == 12


# ---------------------------------------------------------------- the preference stage


def test_preference_stage_learns_from_the_expert_and_measures_held_out(assets, tmp_path):
    Brightness.builds = 0
    out = pretrain_lrm(dataclasses.asdict(with_preferences(
        assets, tmp_path, contrastive_steps=2, preference_steps=8, validation_steps=3)))
    assert out == tmp_path / PROXY_DIR and Brightness.builds == 1
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert rows[0]["step"] == 0 and rows[0]["stage"] == "initial"
    assert [r["step"] for r in rows[1:]] == list(range(1, 11))
    assert [r["stage"] for r in rows[1:]] == ["contrastive"] * 2 + ["preference"] * 8
    preference = [r for r in rows if r["stage"] == "preference"]
    assert all(r["preference_loss"] > 0 and "contrastive_loss" not in r for r in preference)
    measured = [r["step"] for r in rows if "proxy_heldout_accuracy" in r]
    assert measured == [0, 2, 3, 6, 9, 10]  # before, stage ends, every 3 steps
    for row in rows:
        if "proxy_heldout_accuracy" in row:
            assert 0.0 <= row["proxy_heldout_accuracy"] <= 1.0
            assert "proxy_heldout_accuracy_generated_vs_ground_truth" in row
            assert "proxy_train_accuracy" in row

    pset = PreferenceSet.load(tmp_path / PREFERENCE_SET_DIR)
    assert pset.num_prompts == 3 and len(pset) == 3 * 4  # gt, one teacher setting, two noised
    assert ((pset.expert >= 0) & (pset.expert <= 1)).all()  # brightness of decoded images
    heldout = PreferenceSet.load(tmp_path / HELDOUT_SET_DIR)
    assert heldout.num_prompts == 2
    assert not torch.equal(heldout.latents[:2], pset.latents[:2])  # built from the eval data
    # the expert's ordering is learned (about 0.5 -> 0.94 on the training pairs)
    assert rows[-1]["proxy_train_accuracy"] > rows[2]["proxy_train_accuracy"] + 0.2
    assert rows[-1]["proxy_heldout_accuracy"] >= rows[2]["proxy_heldout_accuracy"]


@pytest.mark.parametrize("resolution", [8, 32])  # the tiny teacher's native side is 16
def test_both_stages_train_at_another_resolution(assets, tmp_path, resolution):
    pretrain_lrm(dataclasses.asdict(with_preferences(
        assets, tmp_path, resolution=resolution, contrastive_steps=1, preference_steps=1)))
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["stage"] for r in rows] == ["initial", "contrastive", "preference"]
    assert all(0.0 <= rows[i]["proxy_heldout_accuracy"] <= 1.0 for i in (0, 1, 2))
    side = resolution // 2  # the tiny VAE halves the image side
    for folder in (PREFERENCE_SET_DIR, HELDOUT_SET_DIR):
        pset = PreferenceSet.load(tmp_path / folder)
        assert pset.latents.shape[-2:] == (side, side)  # the teacher's candidates too
        assert any(k.startswith("teacher-ddim") for k in pset.kinds)


def test_resumed_at_another_resolution_it_rebuilds_its_sets_at_that_size(assets, tmp_path):
    common = dict(contrastive_steps=1, preference_steps=1, checkpointing_steps=1)
    LRMPretrainRecipe(with_preferences(assets, tmp_path, **dict(common, preference_steps=0))
                      ).run(progress=False)
    assert PreferenceSet.load(tmp_path / HELDOUT_SET_DIR).latents.shape[-2:] == (8, 8)
    resumed = LRMPretrainRecipe(with_preferences(assets, tmp_path, resolution=32,
                                                 resume_from_checkpoint="latest", **common))
    resumed.run(progress=False)  # the sets are a cache keyed by resolution: rebuilt, not reused
    assert resumed.global_step == 2
    for folder in (PREFERENCE_SET_DIR, HELDOUT_SET_DIR):
        assert PreferenceSet.load(tmp_path / folder).latents.shape[-2:] == (16, 16)


def test_trains_on_the_embedded_world(assets, tmp_path):
    recipe = LRMPretrainRecipe(config(
        assets, tmp_path, train_shards_path_or_url="world:train?size=16", train_batch_size=8,
        contrastive_steps=2, reward="test-brightness", preference_steps=1,
        preference_num_prompts=2, eval_shards_path_or_url="world:validation?size=8",
        eval_num_prompts=2))
    recipe.run(progress=False)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["stage"] for r in rows] == ["initial", "contrastive", "contrastive", "preference"]
    assert recipe.heldout_set.captions and recipe.preference_set.captions
    assert set(recipe.heldout_set.captions).isdisjoint(recipe.preference_set.captions)


# ---------------------------------------------------------------- checkpoints and resume


class CrashAfter(LRMPretrainRecipe):
    """Interrupted before optimiser step ``crash_at`` (after the checkpoint before it)."""

    crash_at = 5

    def train_step(self):
        if self.global_step + 1 == self.crash_at:
            raise KeyboardInterrupt("simulated interruption")
        return super().train_step()


def test_resume_is_bit_identical_in_either_stage(assets, tmp_path):
    common = dict(contrastive_steps=3, preference_steps=3, checkpointing_steps=2)
    straight = LRMPretrainRecipe(with_preferences(assets, tmp_path / "a", **common))
    straight.run(progress=False)

    Brightness.builds = 0
    with pytest.raises(KeyboardInterrupt):  # interrupted in the preference stage
        CrashAfter(with_preferences(assets, tmp_path / "b", **common)).run(progress=False)
    assert (tmp_path / "b" / "checkpoint-4" / "optimizer.json").is_file()
    assert not list((tmp_path / "b" / "checkpoint-4").glob("*.pt*"))  # no pickles
    assert not list((tmp_path / "b" / "checkpoint-4").glob("*.bin"))
    LRMPretrainRecipe(with_preferences(assets, tmp_path / "b", resume_from_checkpoint="latest",
                                       **common)).run(progress=False)
    assert Brightness.builds == 1  # the resumed run reused both preference sets

    # a shorter run continued with more contrastive steps and then the preference stage
    LRMPretrainRecipe(with_preferences(assets, tmp_path / "c", contrastive_steps=2,
                                       preference_steps=0, checkpointing_steps=2)).run(
        progress=False)
    LRMPretrainRecipe(with_preferences(assets, tmp_path / "c", **common,
                                       resume_from_checkpoint="checkpoint-2")).run(progress=False)

    final = weights(tmp_path / "a" / PROXY_DIR)
    assert not all(torch.equal(final[k], v)
                   for k, v in weights(tmp_path / "a" / "checkpoint-4" / PROXY_DIR).items())
    for run in ("b", "c"):
        assert_same_weights(weights(tmp_path / run / PROXY_DIR), final)
        rows = read_metrics(tmp_path / run / "metrics.jsonl")
        straight_rows = read_metrics(tmp_path / "a" / "metrics.jsonl")
        assert [r["step"] for r in rows] == [r["step"] for r in straight_rows]
        for got, want in zip(rows, straight_rows):
            for key in ("contrastive_loss", "preference_loss", "lr"):
                if (run, got["step"], key) == ("c", 2, "lr"):
                    continue  # logged by c's shorter first run: the next rate of its schedule
                assert got.get(key) == want.get(key), (run, got["step"], key)
    # (c's step 2 ended its shorter contrastive stage, so it measured there; b matches a exactly)
    measured = [(r["step"], r.get("proxy_heldout_accuracy"))
                for r in read_metrics(tmp_path / "b" / "metrics.jsonl")]
    assert measured == [(r["step"], r.get("proxy_heldout_accuracy")) for r in straight_rows]


@pytest.mark.parametrize("name", ["optimizer.safetensors", "optimizer.json", "scheduler.json",
                                  "rank_state_0.safetensors", "rank_state_0.json",
                                  "random_states_0.safetensors", "trainer_state.json",
                                  "model.safetensors"])
def test_a_truncated_checkpoint_file_is_named(assets, tmp_path, name):
    LRMPretrainRecipe(config(assets, tmp_path, contrastive_steps=2,
                             checkpointing_steps=2)).run(progress=False)
    path = tmp_path / "checkpoint-2" / name
    path.write_bytes(path.read_bytes()[:20])
    resumed = LRMPretrainRecipe(config(assets, tmp_path, contrastive_steps=4,
                                       resume_from_checkpoint="latest"))
    with pytest.raises(ConfigError, match=name.split("/")[-1]):
        resumed.setup()


# ---------------------------------------------------------------- into rg-lcd


def test_the_output_loads_into_rg_lcd(assets, tmp_path):
    from rewardkit.recipes.rg_lcd import RGLCDConfig, RGLCDRecipe

    out = pretrain_lrm(dataclasses.asdict(config(
        assets, tmp_path / "pre", contrastive_steps=2,
        proxy_params={**SMALL_LRM, "trainable": "last"})))
    base = dataclasses.asdict(tiny_lcd_config(assets["teacher"], assets["data"], tmp_path / "rg"))
    rg = RGLCDConfig(**{**base, "reward": "test-brightness", "proxy": "lrm",
                        "pretrained_proxy": str(out), "proxy_batch_size": 2,
                        "proxy_eval_num_prompts": 0})
    recipe = RGLCDRecipe(rg)
    recipe.setup()
    assert recipe.proxy_model.trainable == "last"
    assert_same_weights({k: v.cpu() for k, v in recipe.proxy_model.state_dict().items()},
                        weights(out))


def test_with_no_arguments_it_pretrains_the_world_lrm_on_the_shipped_teacher():
    from rewardkit.world.assets import TEACHER, asset_path

    config = rk.recipe("lrm-pretrain").config
    assert config.pretrained_teacher_model == str(asset_path(TEACHER))
    assert (config.train_shards_path_or_url, config.reward) == ("world:train", "world-judge")
    assert config.eval_shards_path_or_url == "world:validation"
    assert rk.recipe("lrm-pretrain", contrastive_steps=7).config.contrastive_steps == 7
