"""The resumable loader: determinism, per-epoch reshuffle, exact resume, rank sharding,
skip accounting and the checks that guard training (scaling factor, resolution, state)."""

from __future__ import annotations

import json

import pytest
import torch

from data_fixtures import ListSource, caption, read_good_samples, write_image_folder, write_shards
from rewardkit.data import LatentShardWriter, build_loader
from rewardkit.errors import ConfigError, DataError

CORRUPT = {2: "truncated", 7: "garbage", 11: "no_caption", 13: "bad_utf8"}


@pytest.fixture
def shards(tmp_path):
    """4 shards of 5 samples, 4 of them corrupt."""
    return write_shards(tmp_path / "wds", 4, 5, corrupt=CORRUPT)


@pytest.fixture
def folder(tmp_path):
    """An image folder of 9 images, 2 of them unusable."""
    return str(write_image_folder(tmp_path / "imgs", 9, corrupt={3: "no_caption", 5: "truncated"}))


def take(loader, n):
    return [next(loader) for _ in range(n)]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x["captions"] == y["captions"] and x["keys"] == y["keys"]
        key = "latents" if "latents" in x else "pixel_values"
        assert torch.equal(x[key], y[key])


SOURCES = ["shards", "folder"]


@pytest.mark.parametrize("which", SOURCES)
def test_same_seed_same_batches_other_seed_other_order(request, which):
    source = request.getfixturevalue(which)
    options = dict(resolution=8, batch_size=3, random_flip=True)
    first = take(build_loader(source, seed=5, **options), 6)
    assert_same_batches(first, take(build_loader(source, seed=5, **options), 6))
    other = take(build_loader(source, seed=6, **options), 6)
    assert [b["keys"] for b in first] != [b["keys"] for b in other]


def test_each_epoch_is_reshuffled_and_complete():
    loader = build_loader(ListSource(12), resolution=8, batch_size=1, seed=0)
    epochs = [read_good_samples(loader, 12) for _ in range(3)]
    for epoch in epochs:
        assert sorted(epoch) == sorted(caption(i) for i in range(12))
    assert epochs[0] != epochs[1] != epochs[2]


def test_random_crop_differs_between_epochs_but_not_between_runs():
    source = ListSource(1)  # 24x20 image: random 8x8 crops after resizing to 9x8
    crops = [next(build_loader(source, resolution=8, batch_size=4, seed=1))["pixel_values"]
             for _ in range(2)]
    assert torch.equal(crops[0], crops[1])
    assert len({tuple(c.flatten().tolist()) for c in crops[0]}) > 1


@pytest.mark.parametrize("which", SOURCES)
@pytest.mark.parametrize("stop_after", [1, 4, 7])
def test_resumed_loader_yields_exactly_the_uninterrupted_batches(request, which, stop_after):
    source = request.getfixturevalue(which)
    options = dict(resolution=8, batch_size=3, seed=11, random_flip=True)
    uninterrupted = take(build_loader(source, **options), stop_after + 5)

    interrupted = build_loader(source, **options)
    assert_same_batches(take(interrupted, stop_after), uninterrupted[:stop_after])
    state = json.loads(json.dumps(interrupted.state_dict()))  # survives a JSON checkpoint
    interrupted.close()

    resumed = build_loader(source, **options)
    resumed.load_state_dict(state)
    assert_same_batches(take(resumed, 5), uninterrupted[stop_after:])
    assert resumed.skipped == build_loader_skips_after(source, options, stop_after + 5)


def build_loader_skips_after(source, options, batches):
    loader = build_loader(source, **options)
    take(loader, batches)
    return loader.skipped


def test_resume_mid_shard_with_a_small_shuffle_buffer(tmp_path):
    spec = write_shards(tmp_path, 2, 9)
    options = dict(resolution=8, batch_size=2, seed=3, shuffle_buffer=3)
    uninterrupted = take(build_loader(spec, **options), 12)
    first = build_loader(spec, **options)
    take(first, 3)
    assert first.state_dict()["position"]["taken"] > 0  # stopped inside a shard
    resumed = build_loader(spec, **options)
    resumed.load_state_dict(first.state_dict())
    assert_same_batches(take(resumed, 9), uninterrupted[3:])


@pytest.mark.parametrize("which", SOURCES)
def test_worker_threads_do_not_change_the_batches(request, which):
    source = request.getfixturevalue(which)
    options = dict(resolution=8, batch_size=4, seed=2, random_flip=True)
    with build_loader(source, num_workers=3, **options) as threaded:
        assert_same_batches(take(threaded, 5), take(build_loader(source, **options), 5))


def keys_of_one_epoch(source, rank, world_size, per_rank):
    loader = build_loader(source, resolution=8, batch_size=1, seed=4, rank=rank,
                          world_size=world_size)
    return [next(loader)["keys"][0] for _ in range(per_rank)]


def test_ranks_of_a_random_access_source_are_disjoint_and_cover_it():
    source = ListSource(10)
    parts = [keys_of_one_epoch(source, rank, 2, 5) for rank in range(2)]
    assert not set(parts[0]) & set(parts[1])
    assert set(parts[0]) | set(parts[1]) == {f"item{i}" for i in range(10)}


@pytest.mark.parametrize("n_shards, per_shard, world_size", [(4, 3, 2), (1, 8, 2), (3, 4, 4)])
def test_ranks_of_a_shard_stream_are_disjoint(tmp_path, n_shards, per_shard, world_size):
    spec = write_shards(tmp_path, n_shards, per_shard)
    total = n_shards * per_shard
    parts = [keys_of_one_epoch(spec, rank, world_size, total // world_size)
             for rank in range(world_size)]
    flat = [key for part in parts for key in part]
    assert len(flat) == len(set(flat)), "two ranks read the same sample"
    assert len(flat) == total  # and together they read every sample once


def test_corrupt_samples_are_counted_and_reported(shards):
    loader = build_loader(shards, resolution=8, batch_size=4, seed=0)
    take(loader, 12)  # 48 good samples: three epochs of the 16 good ones
    assert set(loader.skipped) == {"truncated or corrupt image", "undecodable image",
                                   "missing caption", "undecodable caption"}
    assert all(count in (2, 3) for count in loader.skipped.values())  # one corrupt sample each
    report = loader.report()
    assert f"48 samples loaded, {sum(loader.skipped.values())} skipped" in report
    for reason in loader.skipped:
        assert reason in report
    assert "data-00000.tar:000002" in report  # names where to look


def test_latent_scaling_factor_and_resolution_mismatch_are_clear_errors(tmp_path):
    writer = LatentShardWriter(tmp_path, scaling_factor=0.18215, resolution=16)
    writer.add(torch.zeros(3, 4, 2, 2), ["a", "b", "c"], ["0", "1", "2"])
    writer.finish()
    loader = build_loader(str(tmp_path), resolution=16, batch_size=2, vae_scaling_factor=0.18215)
    assert loader.vae_scaling_factor == 0.18215 and loader.latent_shape == (4, 2, 2)
    with pytest.raises(DataError, match=r"manifest.json.*0\.18215.*0\.13025"):
        build_loader(str(tmp_path), resolution=16, batch_size=2, vae_scaling_factor=0.13025)
    with pytest.raises(DataError, match="resolution 16.*resolution 32"):
        build_loader(str(tmp_path), resolution=32, batch_size=2)


def test_state_from_another_rank_seed_or_source_is_refused(folder):
    state = build_loader(folder, resolution=8, batch_size=1, seed=1).state_dict()
    with pytest.raises(DataError, match="seed"):
        build_loader(folder, resolution=8, batch_size=1, seed=2).load_state_dict(state)
    with pytest.raises(DataError, match="world_size"):
        build_loader(folder, resolution=8, batch_size=1, seed=1, world_size=2).load_state_dict(state)
    with pytest.raises(DataError, match="saved reading .*9 images.*this run reads .*ListSource"):
        build_loader(ListSource(4), resolution=8, batch_size=1, seed=1).load_state_dict(state)


@pytest.mark.parametrize("bad", [dict(batch_size=0), dict(resolution=-1), dict(rank=2, world_size=2),
                                 dict(num_workers=-1)])
def test_invalid_arguments_name_the_key(bad):
    options = dict(resolution=8, batch_size=1) | bad
    with pytest.raises(ConfigError, match=next(iter(bad))):
        build_loader(ListSource(4), **options)
