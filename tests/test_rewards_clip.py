"""CLIP-based reward models (clip-score, pickscore, aesthetic) built from tiny offline weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import rewardkit as rk
from rewardkit.errors import ConfigError
from rewardkit.rewards import aesthetic_head
from rewardkit.rewards.preprocess import ImageTransform
from rewardkit.testing import check_reward_model
from rewardkit.testing.tiny_clip import build_tiny_aesthetic_head, build_tiny_clip


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("clip"), image_size=32, seed=0)


@pytest.fixture(scope="module")
def other_clip_dir(tmp_path_factory):
    """A second tiny CLIP with different weights and a non-default normalisation."""
    return build_tiny_clip(tmp_path_factory.mktemp("clip2"), image_size=32, seed=1,
                           image_mean=(0.5, 0.5, 0.5), image_std=(0.25, 0.25, 0.25))


@pytest.fixture(scope="module")
def clip_rm(clip_dir):
    return rk.reward_model("clip-score", model=str(clip_dir))


def smooth_image(height: int, width: int) -> np.ndarray:
    """An 8-bit RGB image with smooth content (so resampling differences stay small)."""
    y, x = np.mgrid[0:height, 0:width]
    array = np.stack([x / width, y / height, 0.5 + 0.4 * np.sin(x / 7 + y / 5)], axis=-1)
    return (array * 255).round().astype(np.uint8)


def test_clip_score_meets_the_contract(clip_rm):
    check_reward_model(clip_rm, image_size=64, batch=3)


def test_clip_score_matches_the_hf_processor_pipeline(clip_dir, clip_rm):
    """Torch preprocessing + cosine equals CLIPProcessor (PIL) + CLIPModel on the same image."""
    from PIL import Image
    from transformers import CLIPModel, CLIPProcessor

    image = smooth_image(48, 71)  # not square: resize of the shorter side, then a center crop
    prompt = "a photo of a red cat"
    processor = CLIPProcessor.from_pretrained(clip_dir)
    model = CLIPModel.from_pretrained(clip_dir).eval()
    inputs = processor(text=[prompt], images=Image.fromarray(image), return_tensors="pt",
                       padding=True)
    with torch.no_grad():
        out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                    pixel_values=inputs["pixel_values"])
    reference = (out.logits_per_image[0, 0] / model.logit_scale.exp()).item()

    tensor = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    ours = clip_rm.transform(tensor)
    assert ours.shape == inputs["pixel_values"].shape
    # PIL resamples in 8 bits: one quantisation step is 1/255/std ~ 0.015 after normalising
    assert (ours - inputs["pixel_values"]).abs().max() < 0.03
    with torch.no_grad():
        score = clip_rm(tensor, [prompt]).item()
    assert score == pytest.approx(reference, abs=2e-3)
    assert clip_rm.logit_scale == pytest.approx(model.logit_scale.exp().item())


def test_gradient_reaches_pixels_through_preprocessing(clip_rm):
    images = torch.rand(2, 3, 40, 56, requires_grad=True)
    clip_rm(images, ["a red cat", "a blue dog"]).sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert all(p.grad is None for p in clip_rm.model.parameters())  # weights stay frozen


def test_text_embeddings_are_cached_per_prompt_with_a_bound(clip_dir):
    rm = rk.reward_model("clip-score", model=str(clip_dir))
    rm.text_cache.size = 2
    calls = []
    original = rm.model.get_text_features
    rm.model.get_text_features = lambda **kw: calls.append(kw["input_ids"].shape[0]) or original(**kw)
    images = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        first = rm(images[:2], ["a red cat", "a red cat"])
        again = rm(images[:2], ["a red cat", "a red cat"])
    assert calls == [1]  # one distinct prompt embedded once
    assert torch.equal(first, again)
    with torch.no_grad():
        rm(images[:2], ["a blue dog", "a green tree"])
    assert len(rm.text_cache) == 2 and "a red cat" not in rm.text_cache


def test_weights_are_moved_once_not_per_call(clip_dir, monkeypatch):
    rm = rk.reward_model("clip-score", model=str(clip_dir))
    moves = []
    monkeypatch.setattr(rm.model, "to", lambda *a, **k: moves.append((a, k)))
    with torch.no_grad():
        for _ in range(3):
            rm(torch.rand(2, 3, 32, 32), ["a red cat", "a dog"])
    assert moves == []


def test_dtype_parameter(clip_dir, clip_rm):
    rm = rk.reward_model("clip-score", model=str(clip_dir), dtype="bfloat16")
    assert next(rm.model.parameters()).dtype == torch.bfloat16
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        low, full = rm(images, ["a red cat", "a dog"]), clip_rm(images, ["a red cat", "a dog"])
    assert low.dtype == torch.float32
    assert torch.allclose(low, full, atol=0.05)
    with pytest.raises(ConfigError, match="clip-score.*dtype"):
        rk.reward_model("clip-score", model=str(clip_dir), dtype="float8")


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="clip-score.*nowhere"):
        rk.reward_model("clip-score", model=str(tmp_path / "nowhere"))


def test_pickscore_uses_model_and_processor_paths(clip_dir, other_clip_dir, clip_rm):
    rm = rk.reward_model("pickscore", model=str(clip_dir), processor=str(other_clip_dir))
    check_reward_model(rm, image_size=48, batch=2)
    assert rm.transform.mean == (0.5, 0.5, 0.5) and rm.transform.std == (0.25, 0.25, 0.25)
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        # same weights as clip_rm, different normalisation: different scores
        assert not torch.allclose(rm(images, ["a cat", "a dog"]), clip_rm(images, ["a cat", "a dog"]))
    assert rm.logit_scale == pytest.approx(clip_rm.logit_scale)


@pytest.mark.parametrize("kind, suffix", [("linear", ".pth"), ("mlp", ".safetensors")])
def test_aesthetic_heads_meet_the_contract(clip_dir, tmp_path, kind, suffix):
    head = build_tiny_aesthetic_head(tmp_path / f"head{suffix}", dim=16, kind=kind)
    rm = rk.reward_model("aesthetic", clip_model=str(clip_dir), head=str(head))
    check_reward_model(rm, image_size=64, batch=3)
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        scores = rm(images, ["a cat", "something else"])
        # the reference computation: the head on L2-normalised CLIP image embeddings
        from transformers import CLIPModel

        model = CLIPModel.from_pretrained(clip_dir).eval()
        embeds = model.get_image_features(pixel_values=rm.transform(images))
        embeds = getattr(embeds, "pooler_output", embeds)
        embeds = embeds / embeds.norm(dim=-1, keepdim=True)
        state = aesthetic_head.read_state_dict(head)
        prefixes = [""] if kind == "linear" else ["layers.0.", "layers.2.", "layers.4."]
        expected = embeds
        for prefix in prefixes:  # the improved-aesthetic MLP has no activations
            expected = expected @ state[f"{prefix}weight"].T + state[f"{prefix}bias"]
    assert torch.allclose(scores, expected[:, 0], atol=1e-5)


def test_aesthetic_head_errors(clip_dir, tmp_path):
    wrong = build_tiny_aesthetic_head(tmp_path / "wide.pth", dim=24)
    with pytest.raises(ConfigError, match="24-d features.*16-d"):
        rk.reward_model("aesthetic", clip_model=str(clip_dir), head=str(wrong))
    with pytest.raises(ConfigError, match="does not exist"):
        rk.reward_model("aesthetic", clip_model=str(clip_dir), head=str(tmp_path / "none.pth"))
    junk = tmp_path / "junk.pth"
    junk.write_text("not a checkpoint")
    with pytest.raises(ConfigError, match="junk.pth"):
        rk.reward_model("aesthetic", clip_model=str(clip_dir), head=str(junk))


def test_aesthetic_hub_head_goes_through_the_download_function(clip_dir, tmp_path, monkeypatch):
    local = build_tiny_aesthetic_head(tmp_path / "aesthetic-model.pth", dim=16, kind="mlp")
    asked = []

    def fake_download(spec):
        asked.append(spec)
        return local

    monkeypatch.setattr(aesthetic_head, "download_head_file", fake_download)
    rm = rk.reward_model("aesthetic", clip_model=str(clip_dir),
                         head="trl-lib/ddpo-aesthetic-predictor/aesthetic-model.pth")
    assert asked == ["trl-lib/ddpo-aesthetic-predictor/aesthetic-model.pth"]
    assert len(rm.head.layers) == 3  # dim -> 32 -> 8 -> 1


def test_image_transform_reads_old_and_new_processor_configs():
    new = ImageTransform.from_processor_config(
        {"size": {"shortest_edge": 224}, "crop_size": {"height": 224, "width": 224},
         "image_mean": [0.1, 0.2, 0.3], "image_std": [1, 2, 3], "resample": 3})
    old = ImageTransform.from_processor_config({"size": 224, "crop_size": 224, "resample": 2})
    assert new.shortest_edge == 224 and new.crop == (224, 224) and new.mean == (0.1, 0.2, 0.3)
    assert old.shortest_edge == 224 and old.crop == (224, 224) and old.mode == "bilinear"
    assert new.output_size(300, 450) == (224, 336) and new.output_size(450, 300) == (336, 224)
    out = new(torch.rand(2, 3, 300, 450))
    assert out.shape == (2, 3, 224, 224)
