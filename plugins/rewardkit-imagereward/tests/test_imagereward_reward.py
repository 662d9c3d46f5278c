"""Offline tests of the imagereward plugin: a tiny ImageReward folder loaded through the real code."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rewardkit as rk
from rewardkit.errors import ConfigError, RewardModelError
from rewardkit_imagereward import ImageRewardConfig, ImageRewardReward
from rewardkit_imagereward.loading import (DEFAULT_TOKENIZER, IMAGEREWARD_HUB_REPO,
                                           resolve_tokenizer_source)
from rewardkit_imagereward.model import REWARD_MEAN, REWARD_STD, ImageRewardModel
from rewardkit_imagereward.preprocess import CLIP_MEAN, CLIP_STD, imagereward_preprocess
from rewardkit_imagereward.testing import build_tiny_imagereward

PROMPTS = ["a red cube on the table", "two dogs under the blue sky",
           "a lighthouse at night with three green trees and a big white house and a small cat"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return build_tiny_imagereward(tmp_path_factory.mktemp("imagereward"))


@pytest.fixture(scope="module")
def rm(folder) -> ImageRewardReward:
    # built through the plugin host, as `rewardkit run rg-lcd --reward imagereward` does
    return rk.reward_model("imagereward", checkpoint=str(folder), output="raw")


def images(batch: int, height: int = 48, width: int = 48, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def test_entry_point_lists_imagereward_in_the_cli():
    env = {**os.environ, "COLUMNS": "200"}
    out = subprocess.run([sys.executable, "-m", "rewardkit", "list", "reward"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "imagereward" in out.stdout
    spec = rk.describe("reward", "imagereward")
    assert spec.plugin == "rewardkit-imagereward"
    assert {"checkpoint", "output", "hinge_at", "med_config", "tokenizer"} <= {p.name for p in spec.params}


def test_imports_and_scores_with_this_transformers_and_no_legacy_modules(folder):
    import transformers

    code = (
        "import sys, torch\n"
        "from rewardkit_imagereward import ImageRewardConfig, ImageRewardReward\n"
        f"rm = ImageRewardReward(ImageRewardConfig(checkpoint={str(folder)!r}))\n"
        "rm(torch.rand(1, 3, 32, 32), ['a cat'])\n"
        "legacy = [m for m in ('ImageReward', 'clip', 'fairscale', 'pkg_resources', 'timm')"
        " if m in sys.modules]\n"
        "print('legacy:', legacy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "legacy: []" in out.stdout
    assert int(transformers.__version__.split(".")[0]) >= 5, "run these tests with transformers 5"


@pytest.mark.parametrize("output", ["raw", "hinge"])
def test_contract_of_rewardkit_testing(folder, output):
    contract = pytest.importorskip("rewardkit.testing.reward_contract")
    contract.check_reward_model(ImageRewardReward(ImageRewardConfig(checkpoint=str(folder),
                                                                    output=output)))


def test_hinge_is_min_of_r_minus_threshold_and_zero(folder, rm):
    x = images(3, seed=2)
    raw = rm(x, PROMPTS).detach()
    hinge = ImageRewardReward(ImageRewardConfig(checkpoint=str(folder)))  # the default output
    assert hinge.config.output == "hinge" and hinge.config.hinge_at == 2.0
    torch.testing.assert_close(hinge(x, PROMPTS), torch.clamp(raw - 2.0, max=0.0))
    # a threshold between the scores: the better images earn exactly 0 and no gradient
    middle = float(raw.median())
    split = ImageRewardReward(ImageRewardConfig(checkpoint=str(folder), hinge_at=middle))
    xg = x.clone().requires_grad_(True)
    scores = split(xg, PROMPTS)
    assert (scores[raw >= middle] == 0).all() and (scores[raw < middle] < 0).all()
    scores.sum().backward()
    grad_per_image = xg.grad.abs().flatten(1).sum(1)
    assert (grad_per_image[raw >= middle] == 0).all() and (grad_per_image[raw < middle] > 0).all()


def test_gradient_reaches_the_images_and_not_the_weights(rm):
    x = images(2, 40, 56).requires_grad_(True)
    rm(x, PROMPTS[:2]).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in rm.model.parameters())


def test_scores_depend_on_image_and_prompt_and_not_on_the_batch(rm):
    x = images(3, seed=4)
    with torch.no_grad():
        together = rm(x, PROMPTS)
        alone = torch.cat([rm(x[i:i + 1], PROMPTS[i:i + 1]) for i in range(3)])
        swapped_prompts = rm(x, PROMPTS[::-1])
        other_images = rm(images(3, seed=5), PROMPTS)
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(together, swapped_prompts)
    assert not torch.allclose(together, other_images)


def test_prompts_are_tokenised_like_blip(rm, folder):
    ids, mask = rm.tokenize(["a red cube", " ".join(["cat"] * 60)])
    assert ids.shape == mask.shape == (2, 35)
    assert mask[0].sum() == 5 and mask[1].sum() == 35  # [CLS] a red cube [SEP]; truncated
    assert ids[0, 0] == rm.tokenizer.cls_token_id and ids[1, -1] == rm.tokenizer.sep_token_id
    vocab = (folder / "vocab.txt").read_text().split()
    assert len(rm.tokenizer) == len(vocab) + 2  # BLIP's [DEC] and [ENC]
    assert rm.tokenizer.convert_tokens_to_ids("[DEC]") == len(vocab)


def test_reward_is_the_standardised_mlp_of_the_cls_state(rm):
    x = images(2, seed=6)
    with torch.no_grad():
        ids, mask = rm.tokenize(PROMPTS[:2])
        pixels = imagereward_preprocess(x, rm.image_size)
        image_tokens = rm.model.blip.visual_encoder(pixels)
        hidden = rm.model.blip.text_encoder(ids, mask, image_tokens)
        expected = (rm.model.mlp(hidden[:, 0]).squeeze(-1) - REWARD_MEAN) / REWARD_STD
        # padding is masked: changing padded positions' ids does not change the reward
        noisy = ids.clone()
        noisy[mask == 0] = 7
        hidden_noisy = rm.model.blip.text_encoder(noisy, mask, image_tokens)
    torch.testing.assert_close(rm(x, PROMPTS[:2]), expected)
    torch.testing.assert_close(hidden_noisy[:, 0], hidden[:, 0], atol=1e-5, rtol=1e-5)


def test_parameter_names_are_those_of_the_imagereward_checkpoint():
    with torch.device("meta"):
        names = set(ImageRewardModel().state_dict())
    patterns = {re.sub(r"\.\d+\.", ".N.", n) for n in names}
    expected_vit = {f"blip.visual_encoder.{k}" for k in (
        "cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias",
        "norm.weight", "norm.bias")} | {f"blip.visual_encoder.blocks.N.{k}.{w}" for k in (
            "norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2") for w in ("weight", "bias")}
    layer = [f"{a}.self.{p}" for a in ("attention", "crossattention") for p in ("query", "key", "value")]
    layer += [f"{a}.output.{p}" for a in ("attention", "crossattention") for p in ("dense", "LayerNorm")]
    layer += ["intermediate.dense", "output.dense", "output.LayerNorm"]
    expected_text = {f"blip.text_encoder.encoder.layer.N.{k}.{w}" for k in layer for w in ("weight", "bias")}
    expected_text |= {"blip.text_encoder.embeddings.word_embeddings.weight",
                      "blip.text_encoder.embeddings.position_embeddings.weight",
                      "blip.text_encoder.embeddings.LayerNorm.weight",
                      "blip.text_encoder.embeddings.LayerNorm.bias"}
    expected_mlp = {f"mlp.layers.{i}.{w}" for i in (0, 2, 4, 6, 7) for w in ("weight", "bias")}
    expected_mlp = {re.sub(r"\.\d+\.", ".N.", n) for n in expected_mlp}
    assert patterns == expected_vit | expected_text | expected_mlp
    assert len(names) == (4 + 2 + 24 * 12) + (4 + 12 * 26) + 10  # ViT-L/16, BERT-base, MLP


@pytest.mark.parametrize("height,width", [(48, 48), (40, 64), (64, 24), (32, 32), (31, 45)])
def test_preprocessing_matches_torchvision_resize_and_center_crop(height, width):
    transforms = pytest.importorskip("torchvision.transforms")
    x = torch.rand(2, 3, height, width, generator=torch.Generator().manual_seed(height * width))
    reference = transforms.Compose([
        transforms.Resize(32, interpolation=transforms.InterpolationMode.BICUBIC, antialias=True),
        transforms.CenterCrop(32), transforms.Normalize(CLIP_MEAN, CLIP_STD)])
    expected = torch.stack([reference(image) for image in x])
    torch.testing.assert_close(imagereward_preprocess(x, 32), expected, atol=1e-5, rtol=1e-5)


def test_published_name_downloads_the_hub_file(monkeypatch, folder):
    asked = []

    def fake_download(repo_id, filename, cache_dir=None):
        asked.append((repo_id, filename))
        return str(folder / "ImageReward.pt")

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    ImageRewardReward(ImageRewardConfig(
        med_config=str(folder / "med_config.json"), tokenizer=str(folder),
        vision_config=str(folder / "vision_config.json")))
    assert asked == [(IMAGEREWARD_HUB_REPO, "ImageReward.pt")]
    assert resolve_tokenizer_source(None, None) == DEFAULT_TOKENIZER
    assert resolve_tokenizer_source(None, folder) == str(folder)
    assert resolve_tokenizer_source("/my/bert", folder) == "/my/bert"


def test_explicit_local_paths_and_a_bare_weights_file_load(tmp_path, folder, rm):
    weights = tmp_path / "weights.pt"
    weights.write_bytes((folder / "ImageReward.pt").read_bytes())
    other = ImageRewardReward(ImageRewardConfig(
        checkpoint=str(weights), med_config=str(folder / "med_config.json"),
        tokenizer=str(folder), vision_config=str(folder / "vision_config.json"), output="raw"))
    x = images(2)
    torch.testing.assert_close(other(x, PROMPTS[:2]), rm(x, PROMPTS[:2]))


def test_bad_inputs_fail_with_clear_errors(tmp_path, folder):
    with pytest.raises(ConfigError, match="nowhere.pt"):
        ImageRewardReward(ImageRewardConfig(checkpoint=str(tmp_path / "nowhere.pt")))
    with pytest.raises(ConfigError, match="output"):
        ImageRewardReward(ImageRewardConfig(checkpoint=str(folder), output="logit"))
    bad = json.loads((folder / "med_config.json").read_text())
    bad["hidden_size"] = 48
    (tmp_path / "med.json").write_text(json.dumps(bad))
    with pytest.raises(RewardModelError, match="ImageReward.pt"):
        ImageRewardReward(ImageRewardConfig(checkpoint=str(folder), med_config=str(tmp_path / "med.json")))
    bad_vision = tmp_path / "vision.json"
    bad_vision.write_text(json.dumps({"width": 32, "layers": 2}))
    with pytest.raises(ConfigError, match="layers"):
        ImageRewardReward(ImageRewardConfig(checkpoint=str(folder), vision_config=str(bad_vision)))
    with pytest.raises(RewardModelError, match="imagereward"):
        ImageRewardReward(ImageRewardConfig(checkpoint=str(folder)))(torch.rand(2, 3, 32, 32), ["a"])


def test_unknown_checkpoint_entries_warn(tmp_path, folder):
    extra = tmp_path / "extra"
    extra.mkdir()
    for name in ("med_config.json", "vision_config.json", "vocab.txt"):
        (extra / name).write_bytes((folder / name).read_bytes())
    state = torch.load(folder / "ImageReward.pt")
    state["blip.something_new.weight"] = torch.zeros(2)
    torch.save(state, extra / "ImageReward.pt")
    with pytest.warns(UserWarning, match="something_new"):
        ImageRewardReward(ImageRewardConfig(checkpoint=str(extra)))


def test_each_distinct_prompt_is_tokenised_once(folder, monkeypatch):
    # the BERT encoder cross-attends to the image, so the prompt side cached is the tokens
    rm = rk.reward_model("imagereward", checkpoint=str(folder), output="raw")
    calls = []
    tokenizer = rm.tokenizer
    monkeypatch.setattr(rm, "tokenizer",
                        lambda prompts, **kw: calls.append(list(prompts)) or tokenizer(prompts, **kw))

    def uncached(x, prompts):
        tokens = tokenizer(list(prompts), padding="max_length", truncation=True,
                           max_length=rm.config.max_length, return_tensors="pt")
        pixels = imagereward_preprocess(x, rm.image_size, antialias=True)
        with torch.no_grad():
            return rm.model(pixels, tokens["input_ids"], tokens["attention_mask"]).float()

    step = PROMPTS * 3
    x = images(len(step), seed=6).requires_grad_(True)
    scores = torch.cat([rm(x[i::3], PROMPTS) for i in range(3)] + [rm(x, step)])
    assert calls == [PROMPTS]
    torch.testing.assert_close(scores, torch.cat(
        [uncached(x[i::3], PROMPTS) for i in range(3)] + [uncached(x, step)]), atol=1e-5, rtol=1e-5)
    changed = ["a boat on a lake", PROMPTS[1]]
    torch.testing.assert_close(rm(x[:2], changed), uncached(x[:2], changed), atol=1e-5, rtol=1e-5)
    assert calls[1:] == [["a boat on a lake"]]
    rm.text_cache.size = 4
    for i in range(10):
        rm(x[:2], [f"step {i} a", f"step {i} b"])
    assert len(rm.text_cache) == 4
