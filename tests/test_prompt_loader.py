"""``build_prompt_loader``: prompt-only batches, seeded, rank-sharded and exactly resumable, read
from prompt files and registered prompt sets the way ``rewardkit eval`` reads them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import rewardkit as rk
from rewardkit.data import PromptLoader, build_prompt_loader
from rewardkit.errors import ConfigError, DataError
from rewardkit.evaluation import PromptSet

PROMPTS = [f"prompt number {i}" for i in range(12)]


@pytest.fixture
def prompt_file(tmp_path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("# training prompts\n" + "\n".join(PROMPTS) + "\n\n")
    return path


def take(loader: PromptLoader, count: int) -> list[dict]:
    return [next(loader) for _ in range(count)]


def test_batches_are_caption_dicts_and_epochs_reshuffle_by_seed(prompt_file):
    loader = build_prompt_loader(prompt_file, batch_size=4, seed=3)
    batch = next(loader)
    assert set(batch) == {"captions", "categories", "keys"}
    assert len(batch["captions"]) == 4 and batch["categories"] == [""] * 4
    assert all(key.startswith("prompts:") for key in batch["keys"])
    loader = build_prompt_loader(prompt_file, batch_size=4, seed=3)
    epochs = [sum((b["captions"] for b in take(loader, 3)), []) for _ in range(3)]
    for epoch in epochs:
        assert sorted(epoch) == sorted(PROMPTS)  # every prompt once per epoch
    assert epochs[0] != epochs[1] != epochs[2]  # a new order every epoch
    # the same seed gives the same stream; another seed another one
    again = build_prompt_loader(prompt_file, batch_size=4, seed=3)
    assert sum((b["captions"] for b in take(again, 9)), []) == sum(epochs, [])
    other = build_prompt_loader(prompt_file, batch_size=4, seed=4)
    assert sum((b["captions"] for b in take(other, 3)), []) != epochs[0]


@pytest.mark.parametrize("count", [12, 13])
def test_two_ranks_cover_each_epoch_without_overlap(count):
    prompts = [f"p{i}" for i in range(count)]
    ranks = [build_prompt_loader(prompts, batch_size=1, seed=0, rank=r, world_size=2)
             for r in range(2)]
    for epoch in range(3):
        seen = []
        for loader in ranks:
            share = loader.samples_per_epoch
            assert loader.epoch == epoch
            seen.append([c for b in take(loader, share) for c in b["captions"]])
        assert not set(seen[0]) & set(seen[1])
        assert sorted(seen[0] + seen[1]) == sorted(prompts)
        assert {len(s) for s in seen} == ({6} if count == 12 else {6, 7})


def test_resuming_mid_epoch_gives_the_same_following_batches(prompt_file):
    first = build_prompt_loader(prompt_file, batch_size=5, seed=1, rank=1, world_size=2)
    take(first, 3)  # 15 prompts of a 6-prompt share: in the middle of epoch 2
    state = json.loads(json.dumps(first.state_dict()))  # what a checkpoint stores
    assert state["position"]["epoch"] == 2 and state["position"]["position"] == 3
    expected = take(first, 4)
    resumed = build_prompt_loader(prompt_file, batch_size=5, seed=1, rank=1, world_size=2)
    resumed.load_state_dict(state)
    assert take(resumed, 4) == expected
    for changed, match in ((dict(seed=2, rank=1), "seed=1"), (dict(seed=1, rank=0), "rank=1")):
        other = build_prompt_loader(prompt_file, batch_size=5, world_size=2, **changed)
        with pytest.raises(DataError, match=match):
            other.load_state_dict(state)
    prompt_file.write_text("\n".join(PROMPTS[::-1]))  # same count, other prompts
    edited = build_prompt_loader(prompt_file, batch_size=5, seed=1, rank=1, world_size=2)
    with pytest.raises(DataError, match="whose prompts differ"):
        edited.load_state_dict(state)


def test_every_prompt_file_format_of_rewardkit_eval_is_read(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"caption": "a red circle", "category": "shapes"}\n'
                                      '{"prompt": "a cat", "category": "animals"}\n')
    (tmp_path / "p.json").write_text(json.dumps([{"text": "a red circle"}, "a cat"]))
    (tmp_path / "p.csv").write_text("Caption,Category\na red circle,shapes\na cat,animals\n")
    for name in ("p.jsonl", "p.json", "p.csv"):
        batch = next(build_prompt_loader(tmp_path / name, batch_size=2, seed=0))
        assert sorted(batch["captions"]) == ["a cat", "a red circle"], name
    batch = next(build_prompt_loader(tmp_path / "p.jsonl", batch_size=2, seed=0))
    assert dict(zip(batch["captions"], batch["categories"])) == {"a red circle": "shapes",
                                                                 "a cat": "animals"}
    one_each = build_prompt_loader(str(tmp_path / "p.csv"), batch_size=1, limit=1)
    assert len(one_each) == 2  # limit keeps the first prompt of each category, as in eval
    assert len(build_prompt_loader(PromptSet("given", ["a", "b", "c"]), batch_size=2)) == 3


def test_a_set_registered_through_the_prompts_hook_is_read_by_name():
    from rewardkit.hookspecs import hookimpl
    from rewardkit.plugins import load_host, reset_host

    class Colours:
        """Three colour prompts (a test prompt set)."""

        name = "test-colours"

        def __init__(self, source: str | None = None, limit: int | None = None,
                     shade: str = "bright"):
            self.limit, self.shade = limit, shade

        def load(self) -> PromptSet:
            prompts = [f"a {self.shade} {c} circle" for c in ("red", "green", "blue")]
            return PromptSet(self.name, prompts, ["colour"] * 3).head(self.limit)

    class Plugin:
        @hookimpl
        def register_prompt_sets(self, register):
            register(Colours)

    reset_host(load_host(extra_plugins=[("test-colours-plugin", Plugin())]))
    try:
        loader = build_prompt_loader("test-colours", batch_size=3, seed=0, shade="dark")
        assert sorted(next(loader)["captions"]) == ["a dark blue circle", "a dark green circle",
                                                    "a dark red circle"]
        assert len(build_prompt_loader("test-colours", batch_size=1, limit=2)) == 2
        assert "test-colours" in repr(loader)
    finally:
        reset_host()


def test_a_missing_or_empty_set_is_named_in_one_sentence(tmp_path):
    def refusal(error, prompts, **kwargs) -> str:
        with pytest.raises(error) as caught:
            build_prompt_loader(prompts, batch_size=2, **kwargs)
        message = str(caught.value)
        assert message.count(". ") == 0 and "\n" not in message, message
        return message

    missing = tmp_path / "missing.txt"
    assert f"prompt file {missing} does not exist" in refusal(ConfigError, missing)
    (tmp_path / "empty.txt").write_text("# only a comment\n\n")
    assert "has no prompts (read from " + str(tmp_path / "empty.txt") in refusal(
        ConfigError, tmp_path / "empty.txt")
    assert "prompts 'no-such-set' is neither a registered prompt set" in refusal(
        ConfigError, "no-such-set")
    assert "holds no prompts" in refusal(ConfigError, [])
    assert "fewer than the 4 data-parallel ranks" in refusal(DataError, ["a", "b"], world_size=4)
    assert "rank must be in [0, world_size=2)" in refusal(ConfigError, ["a", "b"], rank=2,
                                                           world_size=2)
    with pytest.raises(ConfigError, match="batch_size must be a positive integer"):
        build_prompt_loader(["a"], batch_size=0)


def test_it_is_exported_with_the_other_loaders():
    assert rk.build_prompt_loader is build_prompt_loader and rk.PromptLoader is PromptLoader
    assert {"build_prompt_loader", "PromptLoader"} <= set(rk.__all__)
