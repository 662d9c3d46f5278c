"""``rewardkit vote export``: votes become a preference set that lrm-pretrain learns from and
rg-lcd rehearses (the world's teacher encodes the images; tiny, offline)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rewardkit import cli
from rewardkit.errors import ConfigError
from rewardkit.proxies.preference_set import PreferenceSet
from rewardkit.vote.export import human_pairs
from rewardkit.vote.log import VoteLog, winner_of
from rewardkit.vote.study import Arm, Study
from rewardkit.world.assets import TEACHER, asset_path

PAIRS = 256


@pytest.fixture(scope="module")
def study_votes(tmp_path_factory) -> Path:
    """A study of world captions whose images are a clean render and the same render under
    heavy noise, on random sides; the raters prefer the clean one (with one tie, one split
    pair and one skip, which make no pair). Returns the votes file."""
    from rewardkit.world.eval_sets import evaluation_prompts
    from rewardkit.world.grammar import parse_caption
    from rewardkit.world.render import render

    root = tmp_path_factory.mktemp("vote-export")
    prompts = evaluation_prompts(PAIRS, "train")
    arms = (Arm("student", "/models/student", "student", 2),
            Arm("teacher", str(asset_path(TEACHER)), "teacher", 50))
    study = Study(arms, prompts, [""] * PAIRS, root / "votes-images")
    study.save()
    rng = np.random.default_rng(0)
    clean_is_a = []
    for i, prompt in enumerate(prompts):
        clean = render(parse_caption(prompt), seed=i)
        noisy = np.clip(clean + rng.normal(0, 90, clean.shape), 0, 255).astype(np.uint8)
        clean_is_a.append(bool(rng.random() < 0.5))
        for arm, image in zip("ab", (clean, noisy) if clean_is_a[-1] else (noisy, clean)):
            path = study.image(arm, i)
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(path)
    votes = []
    for i, prompt in enumerate(prompts):
        better = "a" if clean_is_a[i] else "b"
        worse = "b" if better == "a" else "a"
        winners = {0: ["tie"], 1: [better, worse], 2: ["skip"]}.get(i, [better, better, worse]
                                                                   if i % 4 == 3 else [better])
        for n, winner in enumerate(winners):
            left = "a" if (i + n) % 2 else "b"
            choice = winner if winner in ("tie", "skip") else ("left" if winner == left else "right")
            assert winner_of(choice, left) == winner
            votes.append({"study": study.id, "pair": i, "prompt": prompt, "category": "",
                          "seed": i, "model_a": "student (2 steps)",
                          "model_b": "teacher (50 steps)", "left": left, "criterion": "overall",
                          "choice": choice, "winner": winner, "rater": f"r{n}",
                          "time": "2025-01-01T00:00:00Z",
                          "image_a": str(study.image("a", i).relative_to(root)),
                          "image_b": str(study.image("b", i).relative_to(root))})
    path = root / "votes.jsonl"
    VoteLog(path).append(votes)
    (root / "clean_is_a.json").write_text(json.dumps(clean_is_a))
    return path


@pytest.fixture(scope="module")
def exported(study_votes) -> Path:
    assert cli.run(["vote", "export", str(study_votes)]) == 0  # the study's teacher, found
    return study_votes.with_name("votes-preference-set")


def test_pairs_take_the_raters_share_and_undecided_ones_are_left_out(study_votes):
    votes = VoteLog(study_votes).read().votes
    pairs = human_pairs(study_votes, votes)
    clean_is_a = json.loads(study_votes.with_name("clean_is_a.json").read_text())
    assert len(pairs) == PAIRS - 3  # the tied, the split and the skipped pair make none
    for pair, index in zip(pairs, range(3, PAIRS)):
        share = 2 / 3 if index % 4 == 3 else 1.0
        assert pair.share_a == pytest.approx(share if clean_is_a[index] else 1 - share)
        assert pair.image_a.is_file() and pair.votes == (3 if index % 4 == 3 else 1)


def test_the_export_is_a_preference_set_of_the_teachers_latents(exported, study_votes):
    pset = PreferenceSet.load(exported)
    count = PAIRS - 3
    assert pset.num_prompts == count and len(pset) == 2 * count
    assert pset.latents.shape[1:] == (4, 8, 8)  # the world VAE: 32 px -> 8 x 8 latents
    assert pset.prompt_embeds.shape[-1] == 64  # the world text encoder, what the LRM reads
    first, second, types = pset.pairs()
    assert len(first) == count  # one pair per voted pair, never across pairs of one prompt
    assert torch.equal(pset.prompt_index[first], pset.prompt_index[second])
    assert set(types) == {"generated_vs_generated"}
    decided = range(3, PAIRS)
    assert pset.meta["criterion"] == "overall"
    assert pset.meta["votes"] == sum(3 if i % 4 == 3 else 1 for i in decided)
    assert pset.kinds[0] == "a: student (2 steps)" and pset.kinds[-1] == "b: teacher (50 steps)"
    with pytest.raises(ConfigError, match=r"--criterion 'quality': the votes answer overall"):
        from rewardkit.vote.export import votes_to_preference_set

        votes_to_preference_set(study_votes, VoteLog(study_votes).read().votes, None, "quality")


def test_lrm_pretrain_learns_the_raters_preferences_from_it(study_votes, tmp_path):
    import rewardkit as rk
    from rewardkit.proxies.lrm import LatentRewardModel
    from rewardkit.proxies.preference_set import preference_accuracy
    from rewardkit.training.metrics import read_metrics

    votes = VoteLog(study_votes).read().votes
    for name, keep in (("train", lambda v: v["pair"] < 192), ("heldout", lambda v: v["pair"] >= 192)):
        VoteLog(study_votes.with_name(f"{name}.jsonl")).append([v for v in votes if keep(v)])
        assert cli.run(["vote", "export", str(study_votes.with_name(f"{name}.jsonl")), "-o",
                        str(tmp_path / name)]) == 0
    rk.recipe("lrm-pretrain", {
        "pretrained_teacher_model": str(asset_path(TEACHER)), "output_dir": str(tmp_path / "run"),
        "train_shards_path_or_url": "world:train?size=16", "resolution": 32,
        "contrastive_steps": 0, "preference_set": str(tmp_path / "train"), "preference_steps": 100,
        "preference_batch_size": 16, "preference_learning_rate": 1e-3, "lr_warmup_steps": 0,
        "validation_steps": 0, "checkpointing_steps": 0, "report_to": "none",
        "proxy_params": {"embed_dim": 32, "image_widths": [16, 32], "text_width": 32,
                         "text_heads": 2}}).run(progress=False)
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert rows[0]["stage"] == "initial" and rows[-1]["stage"] == "preference"
    before, after = rows[0]["proxy_train_accuracy"], rows[-1]["proxy_train_accuracy"]
    assert after >= 0.9 and after > before + 0.2  # it learns which image people chose
    assert not (tmp_path / "run" / "preference_set").exists()  # the given set, none built
    # and it generalises to the 64 pairs it never saw (0.83 measured; chance is 0.5)
    heldout = PreferenceSet.load(tmp_path / "heldout")
    proxy = LatentRewardModel.from_pretrained(str(tmp_path / "run" / "proxy"))
    assert preference_accuracy(proxy, heldout)["proxy_heldout_accuracy"] >= 0.75  # chance + 4 sd


def test_it_loads_as_a_rehearsal_set_for_the_worlds_lrm(exported):
    from rewardkit.proxies.lrm import LatentRewardModel
    from rewardkit.proxies.rehearsal import Rehearsal
    from rewardkit.world.assets import LRM

    proxy = LatentRewardModel.from_pretrained(str(asset_path(LRM))).requires_grad_(True)
    rehearsal = Rehearsal(PreferenceSet.load(exported), batch_size=8)
    loss = rehearsal.loss(proxy, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    assert any(p.grad is not None for p in proxy.parameters())


def test_bad_preference_sets_and_votes_are_named(tmp_path, study_votes):
    from rewardkit.recipes.lrm_pretrain import LRMPretrainConfig

    with pytest.raises(ConfigError, match=r"preference_set: '.*' holds no saved preference set"):
        LRMPretrainConfig(pretrained_teacher_model=str(asset_path(TEACHER)),
                          train_shards_path_or_url="world:train", contrastive_steps=0,
                          preference_set=str(tmp_path)).validate()
    ties = tmp_path / "ties.jsonl"
    read = VoteLog(study_votes).read().votes
    VoteLog(ties).append([{**v, "choice": "tie", "winner": "tie"} for v in read[:3]])
    with pytest.raises(ConfigError, match="no voted pair has a preferred side under 'overall'"):
        from rewardkit.vote.export import votes_to_preference_set

        votes_to_preference_set(ties, VoteLog(ties).read().votes, None)
    lost = tmp_path / "lost.jsonl"  # the images are not beside this copy of the votes
    VoteLog(lost).append(read)
    assert cli.run(["vote", "export", str(lost), "--teacher", str(asset_path(TEACHER))]) == 1
