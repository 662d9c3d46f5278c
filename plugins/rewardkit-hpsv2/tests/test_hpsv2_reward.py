"""Offline tests of the hpsv2 plugin: a tiny HPS checkpoint loaded through the real loading code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rewardkit as rk
from rewardkit.errors import ConfigError, RewardModelError
from rewardkit_hpsv2 import HPSv2Config, HPSv2Reward
from rewardkit_hpsv2.loading import HPS_HUB_REPO, build_clip
from rewardkit_hpsv2.preprocess import OPENAI_MEAN, OPENAI_STD, hps_preprocess
from rewardkit_hpsv2.testing import TINY_HPS_CONFIG, build_tiny_hps_checkpoint

PROMPTS = ["a red cube on a table", "two cats under a blue sky", "a lighthouse at night"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    return build_tiny_hps_checkpoint(tmp_path_factory.mktemp("hps"))


@pytest.fixture(scope="module")
def rm(tiny) -> HPSv2Reward:
    checkpoint, config = tiny
    # built through the plugin host, exactly as `rewardkit run rg-lcd --reward hpsv2` does
    return rk.reward_model("hpsv2", checkpoint=str(checkpoint), model_config=str(config))


def images(batch: int, size: int = 48, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_entry_point_lists_hpsv2_in_the_cli():
    env = {**os.environ, "COLUMNS": "200"}
    out = subprocess.run([sys.executable, "-m", "rewardkit", "list", "reward"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "hpsv2" in out.stdout
    spec = rk.describe("reward", "hpsv2")
    assert spec.plugin == "rewardkit-hpsv2"
    assert {"version", "checkpoint", "model_config", "device", "dtype"} <= {p.name for p in spec.params}


def test_contract_of_rewardkit_testing(rm):
    contract = pytest.importorskip("rewardkit.testing.reward_contract")
    contract.check_reward_model(rm)


def test_score_is_the_cosine_of_the_loaded_weights(rm, tiny):
    checkpoint, _ = tiny
    # an independent model with the same weights, scored by hand
    reference = build_clip(TINY_HPS_CONFIG)
    reference.load_state_dict(torch.load(checkpoint)["state_dict"])
    reference.eval()
    x = images(3)
    with torch.no_grad():
        pixels = hps_preprocess(x, size=32)
        img = reference.encode_image(pixels)
        txt = reference.encode_text(rm.tokenizer(PROMPTS))
        expected = torch.nn.functional.cosine_similarity(img, txt, dim=-1)
    scores = rm(x, PROMPTS)
    assert scores.shape == (3,) and scores.dtype == torch.float32
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=1e-5)
    assert (scores.abs() <= 1.0 + 1e-5).all()
    assert rm.logit_scale == pytest.approx(float(reference.logit_scale.detach().exp()))
    assert rm.differentiable and rm.input_space == "pixels"


def test_gradient_reaches_the_images_and_not_the_weights(rm):
    x = images(2).requires_grad_(True)
    rm(x, PROMPTS[:2]).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in rm.model.parameters())


def test_scores_are_deterministic_and_batch_independent(rm):
    x = images(3, seed=1)
    with torch.no_grad():
        together = rm(x, PROMPTS)
        alone = torch.cat([rm(x[i:i + 1], PROMPTS[i:i + 1]) for i in range(3)])
        again = rm(x, PROMPTS)
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(together, again)
    # the prompt matters: swapping prompts changes the scores
    assert not torch.allclose(together, rm(x, PROMPTS[::-1]))


def test_wrong_input_is_refused_naming_the_model(rm):
    with pytest.raises(RewardModelError, match="hpsv2"):
        rm(torch.rand(2, 4, 32, 32), PROMPTS[:2])
    with pytest.raises(RewardModelError, match="hpsv2"):
        rm(torch.rand(2, 3, 32, 32), PROMPTS[:1])


@pytest.mark.parametrize("antialias", [False, True])
@pytest.mark.parametrize("height,width", [(48, 48), (40, 64), (64, 24), (32, 32)])
def test_preprocessing_matches_hpsv2_resize_max_size(height, width, antialias):
    """HPSv2 resizes a tensor: antialias=False is torchvision < 0.17 (its published scores),
    True a current torchvision's default."""
    tvf = pytest.importorskip("torchvision.transforms.functional")
    x = torch.rand(2, 3, height, width, generator=torch.Generator().manual_seed(height + width))
    size = 32
    # HPSv2's ResizeMaxSize + MaskAwareNormalize, applied with torchvision per image
    scale = size / max(height, width)
    new = [round(height * scale), round(width * scale)]
    expected = []
    for image in x:
        out = tvf.resize(image, new, tvf.InterpolationMode.BICUBIC, antialias=antialias)
        pad_h, pad_w = size - new[0], size - new[1]
        out = tvf.pad(out, [pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2], fill=0)
        expected.append(tvf.normalize(out, OPENAI_MEAN, OPENAI_STD))
    torch.testing.assert_close(hps_preprocess(x, size, antialias=antialias), torch.stack(expected),
                               atol=1e-5, rtol=1e-5)
    if (height, width) != (size, size):  # the two settings really differ when it resizes
        assert not torch.allclose(hps_preprocess(x, size, antialias=not antialias),
                                  torch.stack(expected), atol=1e-3)


def test_the_default_resize_is_hpsv2s_published_one():
    from rewardkit_hpsv2 import HPSv2Config

    assert HPSv2Config().antialias is False


def test_version_picks_the_published_hub_file(monkeypatch, tiny):
    checkpoint, config = tiny
    asked = []

    def fake_download(repo_id, filename, cache_dir=None):
        asked.append((repo_id, filename))
        return str(checkpoint)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    for version in ("v2.0", "v2.1"):
        HPSv2Reward(HPSv2Config(version=version, model_config=str(config)))
    assert asked == [(HPS_HUB_REPO, "HPS_v2_compressed.pt"), (HPS_HUB_REPO, "HPS_v2.1_compressed.pt")]


def test_other_checkpoint_forms_load(tmp_path, tiny, rm):
    from safetensors.torch import save_file

    checkpoint, config = tiny
    state = torch.load(checkpoint)["state_dict"]
    folder = tmp_path / "ddp"
    folder.mkdir()
    torch.save({f"module.{k}": v for k, v in state.items()}, folder / "model.pt")
    save_file(state, tmp_path / "model.safetensors")
    x = images(2)
    expected = rm(x, PROMPTS[:2])
    for source in (folder, tmp_path / "model.safetensors"):
        other = HPSv2Reward(HPSv2Config(checkpoint=str(source), model_config=str(config)))
        torch.testing.assert_close(other(x, PROMPTS[:2]), expected)


def test_bad_checkpoints_and_options_fail_with_clear_errors(tmp_path, tiny):
    checkpoint, config = tiny
    with pytest.raises(ConfigError, match="does-not-exist"):
        HPSv2Reward(HPSv2Config(checkpoint=str(tmp_path / "does-not-exist.pt")))
    with pytest.raises(ConfigError, match="v3"):
        HPSv2Reward(HPSv2Config(version="v3"))
    with pytest.raises(ConfigError, match="dtype"):
        HPSv2Reward(HPSv2Config(checkpoint=str(checkpoint), model_config=str(config), dtype="int8"))
    other = dict(TINY_HPS_CONFIG, embed_dim=8)
    other_config = tmp_path / "other.json"
    other_config.write_text(__import__("json").dumps(other))
    with pytest.raises(RewardModelError, match=checkpoint.name):
        HPSv2Reward(HPSv2Config(checkpoint=str(checkpoint), model_config=str(other_config)))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(RewardModelError, match="junk.pt"):
        HPSv2Reward(HPSv2Config(checkpoint=str(junk), model_config=str(config)))


def test_each_distinct_caption_is_encoded_once_per_step(tiny, monkeypatch):
    checkpoint, config = tiny
    rm = rk.reward_model("hpsv2", checkpoint=str(checkpoint), model_config=str(config))
    calls = []
    encode_text = rm.model.encode_text
    monkeypatch.setattr(rm.model, "encode_text",
                        lambda tokens, **kw: calls.append(tokens.shape[0]) or encode_text(tokens, **kw))

    def uncached(x, prompts):  # the path without a cache: every prompt of the batch encoded
        with torch.no_grad():
            text = encode_text(rm.tokenizer(prompts), normalize=True)
            return (rm.encode_images(x) * text).sum(dim=-1).float()

    step = PROMPTS * 3  # an LRM step scores three images per caption
    x = images(len(step), seed=2).requires_grad_(True)  # scored with gradients, as in training
    scores = torch.cat([rm(x[i::3], PROMPTS) for i in range(3)] + [rm(x, step)])
    assert calls == [len(PROMPTS)]  # four calls, 21 captions, one encoding of the three
    torch.testing.assert_close(scores, torch.cat(
        [uncached(x[i::3], PROMPTS) for i in range(3)] + [uncached(x, step)]), atol=1e-6, rtol=1e-5)
    assert all(not row.requires_grad and row.grad_fn is None  # no graph is kept alive
               for rows in rm.text_cache._rows.values() for row in rows)
    changed = ["a boat on a lake", PROMPTS[0]]
    torch.testing.assert_close(rm(x[:2], changed), uncached(x[:2], changed), atol=1e-6, rtol=1e-5)
    assert calls == [len(PROMPTS), 1]  # the new caption is encoded, the known one is not
    rm.text_cache.size = 4
    for i in range(10):  # a training run brings new captions every step
        rm(x[:2], [f"step {i} a", f"step {i} b"])
    assert len(rm.text_cache) == 4
    rm.to("cpu", torch.float32)  # a move drops embeddings computed on the old device/dtype
    assert len(rm.text_cache) == 0
