"""`rg-lcd` (through the LRM) trains against `rewardkit serve-reward world-judge` in another
process exactly as against the judge in process; a server killed mid-run stops the run in one
sentence with the last checkpoint intact, and the run resumes exactly once it is back; the
token stays out of everything the run writes."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import rewardkit as rk
from rewardkit.errors import ConfigError, RemoteRewardError
from rewardkit.recipes.rg_lcd import PROXY_DIR, RGLCDConfig, RGLCDRecipe
from rewardkit.testing.reward_server import RewardServer
from rewardkit.testing.tiny_sd import build_tiny_sd_pipeline
from rewardkit.testing.tiny_training import tiny_lcd_config, write_tiny_image_folder
from rewardkit.training.checkpoint import list_checkpoints
from rewardkit.training.metrics import read_metrics

TOKEN = "training-token-5d1e0b"
SMALL_LRM = dict(embed_dim=16, image_widths=[8, 16], text_width=16, text_heads=2)
STEPS = 4


def world_captioned_folder(path: Path) -> Path:
    """The tiny image folder with captions of the world's grammar, so the judge's scores vary
    (its terms read the caption's scene)."""
    from rewardkit.world.grammar import Scene

    folder = write_tiny_image_folder(path, count=8, size=16)
    lines = []
    for line in (folder / "captions.jsonl").read_text().splitlines():
        row = json.loads(line)
        _, _, _, _, colour, shape = row["text"].split()
        row["text"] = Scene(1, "small", colour, shape, "black").caption()
        lines.append(json.dumps(row))
    (folder / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("remote-training")
    return {"teacher": build_tiny_sd_pipeline(root / "teacher"),
            "data": world_captioned_folder(root / "data"), "root": root}


@pytest.fixture(scope="module")
def server():
    with RewardServer("world-judge", token=TOKEN) as running:
        yield running


def config(assets, out, **overrides) -> RGLCDConfig:
    base = dataclasses.asdict(tiny_lcd_config(assets["teacher"], assets["data"], out))
    values = {**base, "reward": "world-judge", "proxy": "lrm", "proxy_params": dict(SMALL_LRM),
              "proxy_batch_size": 2, "vae_decode_batch_size": 4, "proxy_eval_num_prompts": 4,
              "max_train_steps": STEPS, "checkpointing_steps": 1, "proxy_lr": 1e-3, **overrides}
    built = RGLCDConfig(**values)
    built.validate()
    return built


def remote_params(server, **more) -> dict:
    return {"url": server.url, "token": TOKEN, "retries": 1, "backoff": 0.05, "timeout": 30,
            **more}


@pytest.fixture(scope="module")
def in_process(assets):
    """The reference: the same run against the judge in this process."""
    out = assets["root"] / "in-process"
    RGLCDRecipe(config(assets, out)).run(progress=False)
    return out


def weights(out: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {folder: load_file(str(out / folder / name)) for folder, name in (
        ("checkpoint-4", "model.safetensors"), (PROXY_DIR, "proxy.safetensors"))}


def assert_same_run(a: Path, b: Path) -> None:
    rows_a, rows_b = read_metrics(a / "metrics.jsonl"), read_metrics(b / "metrics.jsonl")
    keys = ("expert_reward", "expert_reward_target", "expert_reward_gt", "proxy_loss",
            "lcd_loss", "proxy_heldout_accuracy")
    assert [{k: r.get(k) for k in keys} for r in rows_a] == \
        [{k: r.get(k) for k in keys} for r in rows_b]
    assert sum("expert_reward" in r for r in rows_a) == STEPS
    assert len({r["expert_reward"] for r in rows_a if "expert_reward" in r}) > 1  # it varies
    for folder, tensors in weights(a).items():
        other = weights(b)[folder]
        assert tensors.keys() == other.keys()
        assert all(torch.equal(tensors[k], other[k]) for k in tensors), folder


def test_rg_lcd_trains_against_the_served_judge_exactly_as_in_process(assets, server,
                                                                      in_process):
    out = assets["root"] / "remote"
    recipe = RGLCDRecipe(config(assets, out, reward="remote", reward_params=remote_params(server)))
    recipe.run(progress=False)
    assert recipe.reward_model.served["name"] == "world-judge"
    assert_same_run(in_process, out)  # exact: float32 pixels cross bit for bit
    saved = json.loads((out / "config.json").read_text())
    assert saved["reward_params"]["token"] == "<redacted>"
    assert saved["reward_params"]["url"] == server.url
    for path in out.rglob("*"):  # config.json, metrics.jsonl, checkpoints, the proxy...
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
    assert TOKEN not in server.output()


class KillsTheServerAt(RGLCDRecipe):
    """Kills the reward server (SIGKILL, as a crash) just before step ``at`` asks it."""

    server: RewardServer
    at = 3

    def after_step(self):
        if self.global_step + 1 == self.at:
            self.server.kill()
        return super().after_step()


def test_a_server_killed_mid_run_stops_it_in_one_sentence_and_the_run_resumes_exactly(
        assets, in_process):
    out = assets["root"] / "killed"
    with RewardServer("world-judge", token=TOKEN) as server:
        recipe = KillsTheServerAt(config(assets, out, reward="remote",
                                         reward_params=remote_params(server)))
        recipe.server = server
        with pytest.raises(RemoteRewardError) as caught:
            recipe.run(progress=False)
    message = str(caught.value)
    assert message.startswith(f"reward server {server.url} did not answer (connection refused: "
                              "is it running?; 2 tries over ")
    assert message.endswith(f"s) at step 3; start the server again and continue from the newest "
                            f"checkpoint, {out / 'checkpoint-2'} (step 2), with "
                            "--resume_from_checkpoint latest")
    assert "\n" not in message and TOKEN not in message
    assert [step for step, _ in list_checkpoints(out)] == [1, 2]  # step 3 saved nothing
    with RewardServer("world-judge", token=TOKEN, port=server.port):  # back where it was
        RGLCDRecipe(config(assets, out, reward="remote", reward_params=remote_params(server),
                           resume_from_checkpoint="latest")).run(progress=False)
    assert_same_run(in_process, out)


def test_direct_mode_refuses_the_remote_rm_by_name(assets, tmp_path):
    with pytest.raises(ConfigError, match="reward model 'remote' is not differentiable.*"
                                          "proxy=lrm"):
        config(assets, tmp_path, reward="remote", proxy="none",
               reward_params={"url": "http://127.0.0.1:1"})
    assert rk.describe("reward", "remote").factory.differentiable is False
