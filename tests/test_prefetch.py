"""The prefetching data path: the batches the loader gives, in its order, read ahead by a
thread; a checkpoint's position is after the batches taken; a loader's failure reaches the step
as one sentence naming the loader."""

from __future__ import annotations

import threading

import pytest
import torch

from data_fixtures import write_image_folder
from rewardkit.data import build_loader
from rewardkit.data.prefetch import Prefetcher, pin
from rewardkit.errors import DataError


@pytest.fixture
def folder(tmp_path):
    """7 usable images and one truncated (skipped and counted)."""
    return str(write_image_folder(tmp_path / "imgs", 8, corrupt={5: "truncated"}))


def loader_of(folder):
    return build_loader(folder, resolution=16, batch_size=3, seed=1, random_flip=True)


def take(batches, n):
    return [next(batches) for _ in range(n)]


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x["captions"] == y["captions"] and x["keys"] == y["keys"]
        assert torch.equal(x["pixel_values"], y["pixel_values"])


@pytest.mark.parametrize("depth", [1, 3])
def test_the_same_batches_in_the_same_order_across_epochs(folder, depth):
    plain = take(loader_of(folder), 6)  # 18 samples: past the second epoch of 7
    prefetched = Prefetcher(loader_of(folder), depth=depth)
    try:
        assert_same(take(prefetched, 6), plain)
    finally:
        prefetched.close()


def test_the_thread_reads_ahead_while_the_step_computes(folder):
    reads = []

    class Counting:
        def __init__(self, inner):
            self.inner = inner

        def __next__(self):
            reads.append(threading.current_thread().name)
            return next(self.inner)

        def state_dict(self):
            return self.inner.state_dict()

        def load_state_dict(self, state):
            self.inner.load_state_dict(state)

    prefetched = Prefetcher(Counting(loader_of(folder)), depth=2)
    next(prefetched)
    for _ in range(100):  # the thread fills its queue: the taken batch plus two ahead
        if len(reads) >= 3:
            break
        threading.Event().wait(0.02)
    prefetched.close()
    assert len(reads) == 3 and set(reads) == {"rewardkit-prefetch"}


@pytest.mark.parametrize("taken", [1, 4])
def test_a_saved_position_resumes_at_the_next_batch_taken_not_read(folder, taken):
    plain = take(loader_of(folder), taken + 3)
    prefetched = Prefetcher(loader_of(folder), depth=3)
    take(prefetched, taken)
    state = prefetched.state_dict()  # the thread has read up to three batches past it
    prefetched.close()

    resumed = Prefetcher(loader_of(folder), depth=2)
    resumed.load_state_dict(state)
    try:
        assert_same(take(resumed, 3), plain[taken:])
    finally:
        resumed.close()
    # the skip count is the batches' taken, not the ones read ahead: one truncated image a
    # pass of 7, and 3 * taken samples loaded
    assert state["skips"]["loaded"] == 3 * taken


def test_closing_puts_the_loader_back_where_the_steps_are(folder):
    plain = take(loader_of(folder), 4)
    loader = loader_of(folder)
    prefetched = Prefetcher(loader, depth=3)
    take(prefetched, 2)
    prefetched.close()
    assert_same(take(loader, 2), plain[2:])  # read directly: nothing read ahead was lost


class Failing:
    """A loader whose ``fail_at``-th batch raises ``error``."""

    def __init__(self, error, fail_at=2):
        self.error, self.fail_at, self.given = error, fail_at, 0

    def __next__(self):
        if self.given == self.fail_at:
            raise self.error
        self.given += 1
        return {"captions": [f"caption {self.given}"]}

    def state_dict(self):
        return {"given": self.given}

    def load_state_dict(self, state):
        self.given = state["given"]

    def __repr__(self):
        return "Failing(shards-000.tar)"


def test_a_loaders_crash_is_one_sentence_naming_the_loader_at_the_batch_it_spoils():
    prefetched = Prefetcher(Failing(OSError("disk went away")), depth=2)
    assert [next(prefetched)["captions"] for _ in range(2)] == [["caption 1"], ["caption 2"]]
    with pytest.raises(DataError) as raised:
        next(prefetched)
    message = str(raised.value)
    assert message == ("reading the next training batch from Failing(shards-000.tar) failed: "
                       "OSError: disk went away")
    assert isinstance(raised.value.__cause__, OSError)
    with pytest.raises(DataError):  # and again, not a hang waiting for a thread that ended
        next(prefetched)
    assert prefetched.state_dict() == {"given": 2}


def test_even_a_base_exception_in_the_thread_reaches_the_step_not_a_hang():
    class Stop(BaseException):
        pass

    prefetched = Prefetcher(Failing(Stop("loader interrupted"), fail_at=0))
    with pytest.raises(DataError, match="failed: Stop: loader interrupted") as raised:
        next(prefetched)  # would wait forever on the queue if the thread died silently
    assert isinstance(raised.value.__cause__, Stop)


def test_a_data_error_of_the_loader_reaches_the_step_unchanged():
    error = DataError("shards-000.tar: no readable sample (3 truncated images)")
    prefetched = Prefetcher(Failing(error, fail_at=0))
    with pytest.raises(DataError) as raised:
        next(prefetched)
    assert raised.value is error


def test_depth_must_be_positive(folder):
    with pytest.raises(DataError, match="prefetch depth must be a positive integer, got 0"):
        Prefetcher(loader_of(folder), depth=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_pinned_batches_hold_the_same_values():
    batch = {"pixel_values": torch.rand(2, 3, 4, 4), "captions": ["a", "b"]}
    pinned = pin(batch)
    assert pinned["pixel_values"].is_pinned() and pinned["captions"] == ["a", "b"]
    assert torch.equal(pinned["pixel_values"], batch["pixel_values"])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from rewardkit.testing.tiny_sd import build_tiny_sd_pipeline
    from rewardkit.testing.tiny_training import write_tiny_image_folder

    root = tmp_path_factory.mktemp("prefetch")
    # 5 images, batch 2: the batches cross epochs at different offsets
    return build_tiny_sd_pipeline(root / "teacher"), write_tiny_image_folder(root / "data",
                                                                              count=5, size=16)


def test_training_reads_ahead_and_trains_as_without_it(tiny, tmp_path):
    """A run with the prefetching thread logs the losses and saves the weights and data position
    of a run reading each batch inside the step, bit for bit."""
    from safetensors.torch import load_file

    from rewardkit.recipes.lcd import LCDRecipe
    from rewardkit.testing.tiny_training import tiny_lcd_config
    from rewardkit.training.checkpoint import load_rank_state
    from rewardkit.training.metrics import read_metrics

    runs = {}
    for depth in (0, 2):
        out = tmp_path / f"depth{depth}"
        recipe = LCDRecipe(tiny_lcd_config(*tiny, out, max_train_steps=3, checkpointing_steps=3,
                                           dataloader_prefetch=depth))
        recipe.run(progress=False)
        assert isinstance(recipe.batches, Prefetcher) == bool(depth)
        runs[depth] = ([row["lcd_loss"] for row in read_metrics(out / "metrics.jsonl")
                        if "lcd_loss" in row],
                       load_file(str(out / "checkpoint-3" / "model.safetensors")),
                       load_rank_state(out / "checkpoint-3", 0)["loader"])
    (losses0, weights0, position0), (losses2, weights2, position2) = runs[0], runs[2]
    assert len(losses0) == 3 and losses2 == losses0
    assert all(torch.equal(weights2[k], weights0[k]) for k in weights0)
    assert position2 == position0 and position0["skips"]["loaded"] == 6  # 3 batches of 2 taken


def test_a_negative_prefetch_depth_is_refused_naming_the_key(tiny, tmp_path):
    from rewardkit.errors import ConfigError
    from rewardkit.testing.tiny_training import tiny_lcd_config

    with pytest.raises(ConfigError, match="^dataloader_prefetch must be finite and not "
                                          "negative, got -1$"):
        tiny_lcd_config(*tiny, tmp_path, dataloader_prefetch=-1)


def test_a_failing_step_stops_the_thread_reading_ahead(tiny, tmp_path, monkeypatch):
    """A run that fails in a step (from Python: the session goes on) leaves no thread reading."""
    from rewardkit.recipes.lcd import LCDRecipe
    from rewardkit.testing.tiny_training import tiny_lcd_config

    recipe = LCDRecipe(tiny_lcd_config(*tiny, tmp_path / "out", max_train_steps=3,
                                       dataloader_prefetch=2))
    calls = []

    def failing_step():
        next(recipe.batches)  # the thread has started and reads ahead
        calls.append(recipe.batches._thread)
        raise RuntimeError("the step broke")

    monkeypatch.setattr(recipe, "train_step", failing_step)
    with pytest.raises(RuntimeError, match="the step broke"):
        recipe.run(progress=False)
    (thread,) = calls
    assert not thread.is_alive() and recipe.batches._thread is None
