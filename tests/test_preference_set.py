"""Expert-scored candidate sets: pairs, held-out accuracy, persistence, building from a teacher."""

from __future__ import annotations

import pytest
import torch

from rewardkit.errors import ConfigError
from rewardkit.proxies.preference_set import (GEN_VS_GEN, GEN_VS_GT, GROUND_TRUTH, PreferenceSet,
                                              build_preference_set, preference_accuracy)
from rewardkit.testing.tiny_sd import build_tiny_sd_pipeline


class MeanLatentProxy(torch.nn.Module):
    """Scores a latent by its mean times ``sign`` (ignores the prompt)."""

    def __init__(self, sign: float = 1.0) -> None:
        super().__init__()
        self.sign = torch.nn.Parameter(torch.tensor(sign))

    def forward(self, latents, prompt_embeds):
        return latents.mean((1, 2, 3)) * self.sign


def toy_set() -> PreferenceSet:
    # 2 prompts x 3 candidates; the expert prefers a higher latent mean
    means = torch.tensor([3.0, 1.0, 2.0, 0.5, 0.7, 0.7])
    latents = means[:, None, None, None].expand(6, 4, 2, 2).clone()
    return PreferenceSet(latents=latents, prompt_embeds=torch.zeros(2, 3, 5),
                         prompt_index=torch.tensor([0, 0, 0, 1, 1, 1]), captions=["a", "b"],
                         kinds=[GROUND_TRUTH, "x", "y", GROUND_TRUTH, "x", "y"], expert=means.clone())


def test_pairs_are_same_prompt_and_skip_ties():
    first, second, types = toy_set().pairs()
    pairs = sorted(zip(first.tolist(), second.tolist()))
    assert pairs == [(0, 1), (0, 2), (1, 2), (3, 4), (3, 5)]  # (4, 5) is a tie
    assert types.count(GEN_VS_GT) == 4 and types.count(GEN_VS_GEN) == 1


def test_accuracy_of_a_perfect_and_an_inverted_proxy():
    pset = toy_set()
    good = preference_accuracy(MeanLatentProxy(1.0), pset)
    assert good == {"proxy_heldout_accuracy": 1.0,
                    f"proxy_heldout_accuracy_{GEN_VS_GEN}": 1.0,
                    f"proxy_heldout_accuracy_{GEN_VS_GT}": 1.0}
    bad = preference_accuracy(MeanLatentProxy(-1.0), pset)
    assert bad["proxy_heldout_accuracy"] == 0.0
    assert preference_accuracy(MeanLatentProxy(0.0), pset)["proxy_heldout_accuracy"] == 0.5


def test_save_load_round_trip_and_corrupt_file_is_named(tmp_path):
    pset = toy_set()
    pset.save(tmp_path / "set")
    back = PreferenceSet.load(tmp_path / "set")
    assert torch.equal(back.latents, pset.latents) and back.kinds == pset.kinds
    assert back.captions == pset.captions and torch.equal(back.expert, pset.expert)
    weights = tmp_path / "set" / "preference_set.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])
    with pytest.raises(ConfigError, match="unreadable"):
        PreferenceSet.load(tmp_path / "set")
    with pytest.raises(ConfigError, match="missing"):
        PreferenceSet.load(tmp_path / "nowhere")


def test_nan_expert_scores_are_refused():
    pset = toy_set()
    with pytest.raises(ConfigError, match="NaN"):
        PreferenceSet(latents=pset.latents, prompt_embeds=pset.prompt_embeds,
                      prompt_index=pset.prompt_index, captions=pset.captions, kinds=pset.kinds,
                      expert=torch.tensor([1.0, float("nan"), 0, 0, 0, 0]))


def test_build_from_a_tiny_teacher_scores_each_candidate_once(tmp_path):
    import rewardkit as rk

    backbone = rk.backbone("stable-diffusion",
                           pretrained_model_name_or_path=str(build_tiny_sd_pipeline(tmp_path / "t")))
    calls = []

    def expert(latents, captions):
        calls.append(latents.shape[0])
        return latents.mean((1, 2, 3))

    gt = torch.randn(3, backbone.latent_channels, backbone.sample_size, backbone.sample_size)
    student = backbone.build_student(8)
    pset = build_preference_set(backbone, expert, gt, ["a", "b", "c"], student=student,
                                time_cond_proj_dim=8, teacher_settings=((2, 1.0), (2, 4.0)),
                                noise_levels=(0.5,), batch_size=4)
    assert len(pset) == 3 * 5 and sum(calls) == 15
    assert pset.kinds.count(GROUND_TRUTH) == 3
    assert set(pset.kinds) == {GROUND_TRUTH, "teacher-ddim-2-cfg1", "teacher-ddim-2-cfg4",
                               "student-lcm-1", "noised-gt-0.5"}
    assert torch.equal(pset.latents[:3], gt)
    assert torch.allclose(pset.expert, pset.latents.mean((1, 2, 3)), atol=1e-5)
    again = build_preference_set(backbone, expert, gt, ["a", "b", "c"], student=student,
                                 time_cond_proj_dim=8, teacher_settings=((2, 1.0), (2, 4.0)),
                                 noise_levels=(0.5,), batch_size=4)
    assert torch.equal(again.latents, pset.latents)  # seeded: the same set every time
    sub = pset.subset([2])
    assert sub.captions == ["c"] and len(sub) == 5 and sub.prompt_index.tolist() == [0] * 5
