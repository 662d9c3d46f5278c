"""The ``rg-lcd`` recipe on the tiny offline SD pipeline: direct and LRM modes, resume, failures."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import pytest
import torch
from safetensors.torch import load_file

import rewardkit as rk
from rewardkit.errors import ConfigError, RewardModelError
from rewardkit.hookspecs import hookimpl
from rewardkit.plugins import load_host, reset_host
from rewardkit.proxies import LatentRewardModel
from rewardkit.proxies.preference_set import GROUND_TRUTH, PreferenceSet, preference_accuracy
from rewardkit.recipes.rg_lcd import (HELDOUT_DIR, PROXY_DIR, REPLAY_WEIGHTS, RGLCDConfig,
                                      RGLCDRecipe)
from rewardkit.rewards.base import RewardModel
from rewardkit.testing.tiny_sd import build_tiny_sd_pipeline
from rewardkit.training.checkpoint import list_checkpoints
from rewardkit.training.metrics import read_metrics
from rewardkit.training.safe_state import load_state
from rewardkit.testing.tiny_training import tiny_lcd_config, write_tiny_image_folder

SMALL_LRM = dict(embed_dim=16, image_widths=[8, 16], text_width=16, text_heads=2)


# ---------------------------------------------------------------- in-test reward models


class Redness(RewardModel):
    """Differentiable: red minus the other channels, weighted by a (trainable-looking) tensor."""

    name = "test-redness"
    differentiable = True

    def __init__(self) -> None:
        # requires_grad on purpose: any gradient reaching the expert would show up in .grad
        self.weight = torch.ones(3, requires_grad=True)
        self.calls: list[dict] = []

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        self.calls.append({"requires_grad": images.requires_grad, "prompts": list(prompts),
                           "grad_enabled": torch.is_grad_enabled()})
        channels = images.mean((2, 3)) * self.weight
        return channels[:, 0] - 0.5 * (channels[:, 1] + channels[:, 2])


class SecretlyNotDifferentiable(Redness):
    """The class says differentiable, the built instance does not (like a mixed weighted RM)."""

    name = "test-secretly-nondiff"

    def __init__(self) -> None:
        super().__init__()
        self.differentiable = False


class Broken(RewardModel):
    """Returns NaN or a wrong shape from its ``fail_at``-th call on."""

    name = "test-broken"
    differentiable = True

    def __init__(self, fail_at: int = 3, mode: str = "nan") -> None:
        self.fail_at, self.mode, self.count = fail_at, mode, 0

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        self.count += 1
        scores = images.mean((1, 2, 3))
        if self.count >= self.fail_at:
            return scores * float("nan") if self.mode == "nan" else torch.cat([scores, scores])
        return scores


class TestRewards:
    @hookimpl
    def register_reward_models(self, register):
        for factory in (Redness, SecretlyNotDifferentiable, Broken):
            register(factory)


@pytest.fixture(autouse=True)
def test_rewards():
    reset_host(load_host(extra_plugins=[("rg-lcd-test-rewards", TestRewards())]))
    yield
    reset_host()


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("rg-lcd")
    return {"teacher": build_tiny_sd_pipeline(root / "teacher"),
            "data": write_tiny_image_folder(root / "data", count=8, size=16)}


def config(assets, out, **overrides) -> RGLCDConfig:
    base = dataclasses.asdict(tiny_lcd_config(assets["teacher"], assets["data"], out))
    values = {**base, "reward": "test-redness", "proxy": "lrm", "proxy_params": dict(SMALL_LRM),
              "proxy_batch_size": 2, "vae_decode_batch_size": 4, "proxy_eval_num_prompts": 4,
              **overrides}
    built = RGLCDConfig(**values)
    built.validate()
    return built


def proxy_snapshot(recipe: RGLCDRecipe) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in recipe.proxy_model.named_parameters()}


# ---------------------------------------------------------------- configuration


def test_registered_and_reward_is_required(assets, tmp_path):
    assert rk.describe("recipe", "rg-lcd").factory is RGLCDRecipe
    with pytest.raises(ConfigError, match="--reward"):
        config(assets, tmp_path, reward=None)
    with pytest.raises(ConfigError, match="proxy_loss_type"):
        config(assets, tmp_path, proxy_loss_type="hinge")
    with pytest.raises(Exception, match="no-such-rm"):
        config(assets, tmp_path, reward="no-such-rm")


def test_direct_mode_refuses_a_non_differentiable_rm_before_training(assets, tmp_path):
    with pytest.raises(ConfigError, match="'jpeg-compressibility'.*proxy=lrm"):
        config(assets, tmp_path, reward="jpeg-compressibility", proxy="none")
    # an RM whose *instance* is not differentiable is caught when built, before any step
    recipe = RGLCDRecipe(config(assets, tmp_path, reward="test-secretly-nondiff", proxy="none"))
    with pytest.raises(ConfigError, match="'test-secretly-nondiff'.*proxy=lrm"):
        recipe.run(progress=False)
    assert recipe.global_step == 0 and not list_checkpoints(tmp_path)
    assert not (tmp_path / "metrics.jsonl").exists() or not read_metrics(tmp_path / "metrics.jsonl")


# ---------------------------------------------------------------- direct mode


def test_direct_mode_reward_gradient_reaches_the_student(assets, tmp_path):
    recipe = RGLCDRecipe(config(assets, tmp_path, proxy="none", reward_scale=2.0))
    recipe.setup()
    step = recipe.forward(next(recipe.batches))
    losses = {"reward_loss": recipe.reward_loss(step)}
    expected = -2.0 * Redness().score(recipe.backbone.decode_latents(step.student_x0).float(),
                                      step.captions).mean()
    assert float(losses["reward_loss"].detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    losses["reward_loss"].backward()
    grads = [p.grad for p in recipe.unwrapped_student.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    assert recipe.reward_model.calls[-1]["requires_grad"]  # decoded images carry the graph
    assert all(p.grad is None for p in recipe.backbone.vae.parameters())  # the VAE stays frozen


def test_direct_mode_run_logs_rewards(assets, tmp_path):
    out = RGLCDRecipe(config(assets, tmp_path, proxy="none", max_train_steps=2)).run(progress=False)
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        assert {"lcd_loss", "reward_loss", "expert_reward"} <= set(row)
        assert row["reward_loss"] == pytest.approx(-row["expert_reward"], rel=1e-4)
    assert not (out / PROXY_DIR).exists()


# ---------------------------------------------------------------- LRM mode


def test_lrm_mode_student_step_has_no_expert_and_no_decoder(assets, tmp_path):
    recipe = RGLCDRecipe(config(assets, tmp_path))
    recipe.setup()
    assert all(not c["grad_enabled"] for c in recipe.reward_model.calls)  # the held-out set
    recipe.reward_model.calls.clear()
    decoder_calls = []
    hook = recipe.backbone.vae.decoder.register_forward_hook(lambda *a: decoder_calls.append(1))
    step = recipe.forward(next(recipe.batches))
    losses = {"reward_loss": recipe.reward_loss(step)}
    assert not recipe.reward_model.calls and not decoder_calls  # latent space only
    losses["reward_loss"].backward()
    grads = [p.grad for p in recipe.unwrapped_student.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in recipe.proxy_model.parameters())  # proxy frozen
    hook.remove()

    metrics = recipe.update_proxy(step)
    assert recipe.reward_model.calls  # the expert judged the candidates...
    assert all(not c["requires_grad"] and not c["grad_enabled"] for c in recipe.reward_model.calls)
    assert recipe.reward_model.weight.grad is None  # ...and got no gradient
    assert {"proxy_loss", "proxy_accuracy", "expert_reward", "expert_reward_gt",
            "lrm_reward"} <= set(metrics)
    # the expert saw 3 candidates for each sub-batch prompt, with their own captions
    prompts = [p for c in recipe.reward_model.calls for p in c["prompts"]]
    assert len(prompts) == 3 * 2 and prompts[:2] == prompts[2:4] == prompts[4:]
    assert set(prompts) <= set(step.captions)


def test_lrm_mode_trains_from_a_non_differentiable_rm_and_keeps_the_lock(assets, tmp_path):
    recipe = RGLCDRecipe(config(assets, tmp_path, reward="jpeg-compressibility", max_train_steps=3,
                                proxy_lr=1e-2))
    recipe.setup()
    before = proxy_snapshot(recipe)
    rows = [recipe.train_step() for _ in range(3)]
    for row in rows:
        assert {"lcd_loss", "reward_loss", "expert_reward", "proxy_accuracy",
                "proxy_loss"} <= set(row)
        assert 0.0 <= row["proxy_accuracy"] <= 1.0 and row["proxy_loss"] >= 0
        assert row["expert_reward"] < 0  # -JPEG size in kB
    after = proxy_snapshot(recipe)
    trainable = recipe.proxy_model.trainable_parameter_names()
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and changed <= trainable
    assert not any(p.requires_grad for p in recipe.proxy_model.parameters())


def test_lrm_can_start_from_a_saved_proxy(assets, tmp_path):
    recipe = RGLCDRecipe(config(assets, tmp_path / "a"))
    recipe.setup()
    saved = LatentRewardModel(**{**recipe.proxy_model.config, "logit_scale_init": 1.5})
    saved.save_pretrained(tmp_path / "pretrained")
    resumed = RGLCDRecipe(config(assets, tmp_path / "b", pretrained_proxy=str(
        tmp_path / "pretrained"), proxy_params={"trainable": "heads"}))
    resumed.setup()
    assert float(resumed.proxy_model.logit_scale) == 1.5
    assert resumed.proxy_model.trainable == "heads"
    for name, value in saved.state_dict().items():
        assert torch.equal(resumed.proxy_model.state_dict()[name], value), name
    with pytest.raises(ConfigError, match="pretrained_proxy"):
        config(assets, tmp_path, pretrained_proxy=str(tmp_path / "missing"))


# ---------------------------------------------------------------- checkpoints and failures


class CrashAt(RGLCDRecipe):
    """Interrupted after the student step of step 3 (before its proxy update)."""

    def after_step(self) -> dict[str, float]:
        if self.global_step + 1 == 3:
            raise KeyboardInterrupt("simulated interruption")
        return super().after_step()


def test_checkpoint_and_resume_restore_the_lrm_and_its_optimiser(assets, tmp_path):
    common = dict(max_train_steps=4, checkpointing_steps=2, proxy_lr=1e-3,
                  reward="jpeg-compressibility")
    straight = RGLCDRecipe(config(assets, tmp_path / "a", **common)).run(progress=False)
    with pytest.raises(KeyboardInterrupt):
        CrashAt(config(assets, tmp_path / "b", **common)).run(progress=False)
    resumed = RGLCDRecipe(config(assets, tmp_path / "b", resume_from_checkpoint="latest",
                                 **common))
    resumed.run(progress=False)

    first = load_file(str(straight / "checkpoint-2" / PROXY_DIR / "proxy.safetensors"))
    for folder in (f"checkpoint-4/{PROXY_DIR}", PROXY_DIR):
        a = load_file(str(straight / folder / "proxy.safetensors"))
        b = load_file(str(tmp_path / "b" / folder / "proxy.safetensors"))
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (folder, key)
    assert any(not torch.equal(first[k], a[k]) for k in a)  # the LRM did train
    opt_a = load_state(straight / "checkpoint-4", "extra_state")
    opt_b = load_state(tmp_path / "b" / "checkpoint-4", "extra_state")
    state_a = opt_a["proxy_updater"]["optimizer"]["state"]
    state_b = opt_b["proxy_updater"]["optimizer"]["state"]
    assert state_a.keys() == state_b.keys() and state_a
    for key in state_a:
        assert int(state_a[key]["step"]) == 4
        assert torch.equal(state_a[key]["exp_avg_sq"], state_b[key]["exp_avg_sq"])
    loaded = LatentRewardModel.from_pretrained(straight / PROXY_DIR)  # usable as pretrained
    assert loaded.config["text_dim"] == resumed.backbone.text_embed_dim


@pytest.mark.parametrize("proxy,mode,fail_at", [("none", "nan", 3), ("lrm", "nan", 5),
                                                 ("lrm", "shape", 5)])
def test_a_broken_rm_stops_the_run_naming_it_with_the_last_checkpoint_intact(
        assets, tmp_path, proxy, mode, fail_at):
    # direct mode calls the RM once per step; LRM mode once per chunk (2 chunks of 4 per step)
    recipe = RGLCDRecipe(config(assets, tmp_path, proxy=proxy, reward="test-broken",
                                reward_params={"fail_at": fail_at, "mode": mode},
                                max_train_steps=4, checkpointing_steps=1,
                                proxy_eval_num_prompts=0))
    with pytest.raises(RewardModelError, match="'test-broken'.*(non-finite|shape)"):
        recipe.run(progress=False)
    assert [step for step, _ in list_checkpoints(tmp_path)] == [1, 2]
    last = tmp_path / "checkpoint-2"
    assert load_file(str(last / "model.safetensors"))
    if proxy == "lrm":
        assert LatentRewardModel.from_pretrained(last / PROXY_DIR).num_parameters() > 0
    resumed = RGLCDRecipe(config(assets, tmp_path, proxy=proxy, reward="test-redness",
                                 max_train_steps=3, resume_from_checkpoint="latest"))
    resumed.run(progress=False)
    assert resumed.global_step == 3


# ---------------------------------------------------------------- held-out evidence and the schedule


def heldout_rows(out: Path) -> list[dict]:
    return [r for r in read_metrics(out / "metrics.jsonl") if "proxy_heldout_accuracy" in r]


def test_heldout_accuracy_is_logged_before_training_and_at_each_validation(assets, tmp_path):
    cfg = config(assets, tmp_path, reward="jpeg-compressibility", max_train_steps=2,
                 validation_steps=1, checkpointing_steps=1, proxy_lr=1e-2)
    RGLCDRecipe(cfg).run(progress=False)
    rows = heldout_rows(tmp_path)
    assert [r["step"] for r in rows] == [0, 1, 2]
    for row in rows:
        for key in ("proxy_heldout_accuracy", "proxy_heldout_accuracy_generated_vs_generated",
                    "proxy_heldout_accuracy_generated_vs_ground_truth"):
            assert 0.0 <= row[key] <= 1.0
    saved = PreferenceSet.load(tmp_path / HELDOUT_DIR)
    assert saved.num_prompts == 4 and GROUND_TRUTH in saved.kinds
    assert any(k.startswith("teacher-ddim") for k in saved.kinds)
    assert any(k.startswith("student-lcm") for k in saved.kinds)
    # a resumed run measures on the very same saved set (not a rebuilt one)
    resumed = RGLCDRecipe(config(assets, tmp_path, reward="jpeg-compressibility",
                                 max_train_steps=3, validation_steps=1,
                                 resume_from_checkpoint="latest"))
    resumed.setup()
    assert torch.equal(resumed.heldout.latents, saved.latents)
    assert resumed.validation_metrics() == preference_accuracy(resumed.proxy_model, saved)


@pytest.mark.parametrize("resolution", [8, 32])  # the tiny teacher's native side is 16
def test_lrm_mode_with_the_heldout_set_trains_at_another_resolution(assets, tmp_path, resolution):
    out = RGLCDRecipe(config(assets, tmp_path, resolution=resolution, max_train_steps=2,
                             validation_steps=2)).run(progress=False)
    rows = heldout_rows(out)
    assert [r["step"] for r in rows] == [0, 2]
    assert all(0.0 <= r["proxy_heldout_accuracy"] <= 1.0 for r in rows)
    saved = PreferenceSet.load(out / HELDOUT_DIR)
    side = resolution // 2  # the tiny VAE halves the image side
    assert saved.latents.shape[-2:] == (side, side)  # every candidate, teacher and student too
    assert {k.split("-")[0] for k in saved.kinds} == {"ground", "teacher", "student", "noised"}


def test_a_set_or_buffer_saved_at_another_resolution_is_refused_naming_the_key(assets, tmp_path):
    run = tmp_path / "run"  # 16 px: 8x8 latents in its held-out set and replay buffer
    common = dict(max_train_steps=1, checkpointing_steps=1, proxy_replay_size=2)
    RGLCDRecipe(config(assets, run, **common)).run(progress=False)
    rehearse = config(assets, tmp_path / "other", resolution=32, proxy_eval_num_prompts=0,
                      proxy_rehearsal_set=str(run / HELDOUT_DIR))
    with pytest.raises(ConfigError, match=r"^proxy_rehearsal_set: .* holds 8x8 latents but "
                                          r"resolution 32 trains on 16x16 ones; .*resolution 32"):
        RGLCDRecipe(rehearse).setup()
    resume = dict(common, resolution=32, max_train_steps=2, resume_from_checkpoint="latest")
    with pytest.raises(ConfigError, match=r"^resolution: the held-out preference set .* holds "
                                          r"8x8 latents .*delete that folder"):
        RGLCDRecipe(config(assets, run, **resume)).setup()
    with pytest.raises(ConfigError, match=r"^resume_from_checkpoint: the proxy replay buffer in "
                                          rf".*checkpoint-1' holds 8x8 latents .*{REPLAY_WEIGHTS}"):
        RGLCDRecipe(config(assets, run, **resume, proxy_eval_num_prompts=0)).setup()
    (run / "checkpoint-1" / REPLAY_WEIGHTS).unlink()  # the way out the message names
    RGLCDRecipe(config(assets, run, **resume, proxy_eval_num_prompts=0)).run(progress=False)


def test_heldout_set_can_be_switched_off(assets, tmp_path):
    RGLCDRecipe(config(assets, tmp_path, max_train_steps=1, validation_steps=1,
                       proxy_eval_num_prompts=0)).run(progress=False)
    assert not heldout_rows(tmp_path) and not (tmp_path / HELDOUT_DIR).exists()


def test_the_student_maximises_the_very_proxy_the_update_trains(assets, tmp_path):
    recipe = RGLCDRecipe(config(assets, tmp_path, reward="jpeg-compressibility", proxy_lr=1e-2))
    recipe.setup()
    assert recipe.proxy_updater.proxy is recipe.proxy_model
    step = recipe.forward(next(recipe.batches))
    before = float(recipe.reward_loss(step).detach())
    snapshot = proxy_snapshot(recipe)
    recipe.update_proxy(step)
    assert any(not torch.equal(snapshot[n], p) for n, p in recipe.proxy_model.named_parameters())
    after = float(recipe.reward_loss(step).detach())
    assert after != before  # the same student output now gets the trained proxy's reward
    expected = -recipe.config.reward_scale * recipe.proxy_updater.proxy.score(
        step.student_x0, step.cond.prompt_embeds).mean().detach()
    assert after == pytest.approx(float(expected), abs=1e-6)


def test_proxy_warmup_switches_the_reward_term_on_after_it(assets, tmp_path):
    recipe = RGLCDRecipe(config(assets, tmp_path, reward="jpeg-compressibility",
                                proxy_warmup_steps=2, proxy_lr=1e-2))
    recipe.setup()
    rows = []
    for _ in range(3):
        rows.append(recipe.train_step())
        recipe.global_step += 1
    assert rows[0]["reward_loss"] == 0.0 and rows[1]["reward_loss"] == 0.0
    assert rows[2]["reward_loss"] != 0.0
    assert all("proxy_loss" in row for row in rows)  # the proxy learns during the warm-up


def test_several_proxy_updates_per_step_draw_from_the_replay_buffer(assets, tmp_path):
    recipe = RGLCDRecipe(config(assets, tmp_path, reward="jpeg-compressibility",
                                proxy_updates_per_step=3, proxy_replay_size=4,
                                expert_logit_scale=50.0))
    recipe.setup()
    calls = []
    original = recipe.proxy_updater.step

    def counting(latents, embeds, scores, scale=None):
        calls.append((latents.shape, scale))
        return original(latents, embeds, scores, scale)

    recipe.proxy_updater.step = counting
    recipe.train_step()
    assert len(calls) == 3 and all(scale == 50.0 for _, scale in calls)
    assert all(shape[:2] == (3, 2) for shape, _ in calls)
    assert len(recipe.replay) == 2
    recipe.global_step += 1
    recipe.train_step()
    recipe.global_step += 1
    recipe.train_step()
    assert len(recipe.replay) == 4  # a ring of proxy_replay_size triples


def test_proxy_update_every_judges_and_updates_on_every_nth_step_only(assets, tmp_path):
    recipe = RGLCDRecipe(config(assets, tmp_path, reward="jpeg-compressibility",
                                proxy_update_every=2, proxy_lr=1e-2))
    recipe.setup()
    judged = []
    original = recipe.expert_scores
    recipe.expert_scores = lambda latents, captions: judged.append(len(captions)) or original(
        latents, captions)
    rows, moved = [], []
    for _ in range(4):
        before = proxy_snapshot(recipe)
        rows.append(recipe.train_step())
        recipe.global_step += 1
        after = proxy_snapshot(recipe)
        moved.append(any(not torch.equal(before[n], after[n]) for n in before))
    assert moved == [False, True, False, True]
    assert ["proxy_accuracy" in row for row in rows] == [False, True, False, True]
    assert all("lrm_reward" in row for row in rows)
    assert len(judged) == 2 * 2  # 2 judged steps, each 3 x 2 candidates in chunks of 4


def test_resume_restores_the_replay_buffer_bit_identically(assets, tmp_path):
    common = dict(max_train_steps=4, checkpointing_steps=2, proxy_lr=1e-3,
                  reward="jpeg-compressibility", proxy_updates_per_step=2, proxy_replay_size=4)
    straight = RGLCDRecipe(config(assets, tmp_path / "a", **common)).run(progress=False)
    with pytest.raises(KeyboardInterrupt):
        CrashAt(config(assets, tmp_path / "b", **common)).run(progress=False)
    RGLCDRecipe(config(assets, tmp_path / "b", resume_from_checkpoint="latest",
                       **common)).run(progress=False)
    a = load_file(str(straight / PROXY_DIR / "proxy.safetensors"))
    b = load_file(str(tmp_path / "b" / PROXY_DIR / "proxy.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (straight / "checkpoint-4" / REPLAY_WEIGHTS).is_file()


@pytest.mark.parametrize("key,value", [("proxy_updates_per_step", 0), ("proxy_warmup_steps", -1),
                                       ("proxy_update_every", 0),
                                       ("proxy_replay_size", 1), ("expert_logit_scale", 0.0),
                                       ("proxy_eval_num_prompts", -2),
                                       ("proxy_eval_shards_path_or_url", "/no/such/data")])
def test_bad_proxy_schedule_values_are_named(assets, tmp_path, key, value):
    with pytest.raises(ConfigError, match=key):
        config(assets, tmp_path, **{key: value})


def test_rehearsal_pairs_join_every_proxy_update(assets, tmp_path):
    recipe = RGLCDRecipe(config(assets, tmp_path / "a"))
    recipe.setup()
    batch = next(recipe.batches)
    latents, embeds, _ = recipe.encode_batch(batch)
    n = latents.shape[0]
    pset = PreferenceSet(latents=torch.cat([latents, latents + 1.0]).cpu(),
                         prompt_embeds=embeds.prompt_embeds.cpu(), prompt_index=torch.arange(n).repeat(2),
                         captions=list(batch["captions"]),
                         kinds=[GROUND_TRUTH] * n + ["noised"] * n,
                         expert=torch.cat([torch.ones(n), torch.zeros(n)]))
    pset.save(tmp_path / "rehearsal")
    rehearsed = RGLCDRecipe(config(assets, tmp_path / "b", reward="jpeg-compressibility",
                                   proxy_rehearsal_set=str(tmp_path / "rehearsal"),
                                   proxy_rehearsal_batch_size=4))
    rehearsed.setup()
    assert rehearsed.proxy_updater.generator is rehearsed.generator
    row = rehearsed.train_step()
    assert row["proxy_rehearsal_loss"] > 0
    with pytest.raises(ConfigError, match="proxy_rehearsal_set"):
        config(assets, tmp_path, proxy_rehearsal_set=str(tmp_path))
    with pytest.raises(ConfigError, match="proxy_rehearsal_weight"):
        config(assets, tmp_path, proxy_rehearsal_set=str(tmp_path / "rehearsal"),
               proxy_rehearsal_weight=0.0)


def test_the_reference_flag_names_are_aliases_of_the_proxy_keys(assets, tmp_path):
    values = {**dataclasses.asdict(tiny_lcd_config(assets["teacher"], assets["data"], tmp_path)),
              "reward": "test-redness", "proxy_params": dict(SMALL_LRM)}
    config = rk.recipe("rg-lcd", values, rm_batch_size=3, rm_lr=1e-5,
                       latent_rm_loss_type="cross_entropy").config
    assert (config.proxy_batch_size, config.proxy_lr, config.proxy_loss_type) == (3, 1e-5,
                                                                                  "cross_entropy")
    path = tmp_path / "ref.toml"
    path.write_text('rm_lr = 2e-5\n')
    from rewardkit.config import load_config

    required = {k: values[k] for k in ("pretrained_teacher_model", "train_shards_path_or_url")}
    assert load_config(RGLCDConfig, path, required, validate=False).proxy_lr == 2e-5
    assert load_config(RGLCDConfig, path, {**required, "proxy_lr": 3e-5},
                       validate=False).proxy_lr == 3e-5  # the command line wins over the file
    with pytest.raises(ConfigError, match="'rm_lr' and 'proxy_lr' are the same key"):
        rk.recipe("rg-lcd", values, rm_lr=1e-5, proxy_lr=2e-5)


# ---------------------------------------------------------------- memory and dtypes on GPUs


def test_direct_mode_decoder_checkpointing_changes_no_loss_or_gradient(assets, tmp_path):
    """Recomputing the VAE decoder in backward gives the same loss and student gradient."""
    results = []
    for checkpointing in (False, True):
        recipe = RGLCDRecipe(config(assets, tmp_path / str(checkpointing), proxy="none",
                                    vae_gradient_checkpointing=checkpointing))
        recipe.setup()
        assert recipe.backbone.vae.decoder.gradient_checkpointing is checkpointing
        step = recipe.forward(next(recipe.batches))
        loss = step.lcd_loss + recipe.reward_loss(step)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in recipe.unwrapped_student.named_parameters()
                 if p.grad is not None}
        results.append((loss.detach(), grads))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.equal(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-5, atol=1e-7)


def test_the_expert_runs_in_the_mixed_precision_dtype_unless_reward_params_set_one(
        assets, tmp_path):
    from rewardkit.testing.tiny_clip import build_tiny_clip

    clip = str(build_tiny_clip(tmp_path / "clip"))
    for params, expected in (({"model": clip}, torch.bfloat16),
                             ({"model": clip, "dtype": "float32"}, torch.float32)):
        recipe = RGLCDRecipe(config(assets, tmp_path / str(expected), proxy="none",
                                    reward="clip-score", reward_params=params,
                                    mixed_precision="bf16"))
        recipe.setup()
        assert recipe.reward_model.dtype == expected
    recipe = RGLCDRecipe(config(assets, tmp_path / "fp32", proxy="none", reward="clip-score",
                                reward_params={"model": clip}))
    recipe.setup()
    assert recipe.reward_model.dtype == torch.float32  # no mixed precision: as built


def test_expert_images_count_what_the_expert_scored_and_survive_a_resume(assets, tmp_path):
    """``expert_images``: the expert's cost. Through the LRM with ``proxy_update_every=2`` it
    judges 3 candidates x 2 images on every second step only (after the held-out set's one-off
    cost); directly it scores the batch every step. A resumed run goes on counting."""
    common = dict(max_train_steps=4, checkpointing_steps=2, reward="jpeg-compressibility",
                  proxy_update_every=2)
    straight = RGLCDRecipe(config(assets, tmp_path / "a", **common)).run(progress=False)
    counts = [r["expert_images"] for r in read_metrics(straight / "metrics.jsonl")
              if "expert_images" in r]
    heldout = counts[0]
    assert [c - heldout for c in counts] == [0, 6, 6, 12]
    with pytest.raises(KeyboardInterrupt):
        CrashAt(config(assets, tmp_path / "b", **common)).run(progress=False)
    RGLCDRecipe(config(assets, tmp_path / "b", resume_from_checkpoint="latest",
                       **common)).run(progress=False)
    resumed = [r["expert_images"] for r in read_metrics(tmp_path / "b" / "metrics.jsonl")
               if "expert_images" in r]
    assert resumed == counts
    direct = RGLCDRecipe(config(assets, tmp_path / "c", max_train_steps=2, proxy="none",
                                proxy_eval_num_prompts=0)).run(progress=False)
    assert [r["expert_images"] for r in read_metrics(direct / "metrics.jsonl")
            if "expert_images" in r] == [2, 4]
