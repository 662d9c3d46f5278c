"""Each data source: webdataset shards (paths, brace ranges, pipe:, folders), image folders,
in-memory SampleSources and latent folders; and the errors for sources that cannot be read."""

from __future__ import annotations

import io
import json
import shutil
import tarfile

import pytest
import torch

from data_fixtures import (ListSource, caption, image_bytes, make_image, read_good_samples,
                           write_image_folder, write_shard, write_shards)
from rewardkit.data import (ImageFolderSource, LatentShardSource, LatentShardWriter,
                            build_loader, expand_shards)
from rewardkit.errors import DataError


def captions_of_one_epoch(loader, n: int) -> list[str]:
    """Captions of the next ``n`` samples (batch size 1)."""
    return [next(loader)["captions"][0] for _ in range(n)]


# ---------------------------------------------------------------- webdataset shards


def test_brace_range_expands_to_every_shard(tmp_path):
    spec = write_shards(tmp_path, 3, 2)
    assert [p.rsplit("/", 1)[-1] for p in expand_shards(spec)] == [
        "data-00000.tar", "data-00001.tar", "data-00002.tar"]


def test_webdataset_epoch_visits_every_sample_once(tmp_path):
    spec = write_shards(tmp_path, 3, 4)
    loader = build_loader(spec, resolution=8, batch_size=1, seed=3)
    seen = captions_of_one_epoch(loader, 12)
    assert sorted(seen) == sorted(caption(i) for i in range(12))
    assert loader.epoch == 0


@pytest.mark.parametrize("form", ["single", "list", "folder", "double_colon", "pipe"])
def test_webdataset_spec_forms(tmp_path, form):
    a = write_shard(tmp_path / "a.tar", range(0, 3))
    b = write_shard(tmp_path / "b.tar", range(3, 5))
    expected = {"single": 3}.get(form, 5)
    source = {"single": str(a), "list": [str(a), str(b)], "folder": str(tmp_path),
              "double_colon": f"{a}::{b}", "pipe": [f"pipe:cat {a}", f"pipe:cat {b}"]}[form]
    loader = build_loader(source, resolution=8, batch_size=1)
    assert sorted(captions_of_one_epoch(loader, expected)) == sorted(caption(i) for i in range(expected))


def test_reads_shards_written_by_webdataset_tarwriter_with_json_captions(tmp_path):
    import webdataset as wds

    with wds.TarWriter(str(tmp_path / "w.tar")) as sink:
        for i in range(4):
            record = {"__key__": f"s{i:03d}", "jpg": image_bytes(make_image(i), "JPEG")}
            if i % 2:
                record["txt"] = caption(i)
            else:
                record["json"] = {"caption": caption(i), "width": 24}
            sink.write(record)
    loader = build_loader(str(tmp_path / "w.tar"), resolution=8, batch_size=4, center_crop=True)
    batch = next(loader)
    assert sorted(batch["captions"]) == [caption(i) for i in range(4)]
    assert batch["pixel_values"].shape == (4, 3, 8, 8)
    assert loader.skipped == {}


def test_failing_pipe_command_is_a_skipped_shard_not_a_crash(tmp_path):
    good = write_shard(tmp_path / "good.tar", range(3))
    loader = build_loader([f"pipe:cat {good}", "pipe:exit 3"], resolution=8, batch_size=1, seed=0)
    assert sorted(captions_of_one_epoch(loader, 3)) == [caption(i) for i in range(3)]
    next(loader)  # goes past the failing shard into the next epoch
    assert loader.skipped.get("unreadable shard", 0) >= 1


def test_truncated_tar_keeps_the_samples_before_the_break(tmp_path):
    shard = write_shard(tmp_path / "t.tar", range(6))
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2 + 700])  # inside a member, not on a boundary
    loader = build_loader(str(shard), resolution=8, batch_size=1)
    got = captions_of_one_epoch(loader, 2)
    assert set(got) <= {caption(i) for i in range(6)}
    for _ in range(6):
        next(loader)
    assert loader.skipped.get("unreadable shard", 0) >= 1


def test_missing_shard_in_a_range_is_named(tmp_path):
    spec = write_shards(tmp_path, 3, 2)
    (tmp_path / "data-00001.tar").unlink()
    with pytest.raises(DataError, match="data-00001.tar"):
        build_loader(spec, resolution=8, batch_size=1)


@pytest.mark.parametrize("name", ["nothing-here", "nothing-{0..3}.tar", "missing.tar"])
def test_missing_path_raises_data_error_naming_it(tmp_path, name):
    with pytest.raises(DataError, match="nothing-here|nothing-0.tar|missing.tar"):
        build_loader(str(tmp_path / name), resolution=8, batch_size=1)


def test_shards_with_no_readable_sample_raise_data_error(tmp_path):
    spec = write_shards(tmp_path, 2, 2, corrupt={0: "garbage", 1: "truncated", 2: "no_caption",
                                                 3: "bad_utf8"})
    loader = build_loader(spec, resolution=8, batch_size=1)
    with pytest.raises(DataError, match="no readable samples") as raised:
        next(loader)
    message = str(raised.value)  # the reasons are in the message itself, with examples
    assert "skipped " in message and "e.g." in message and "report" not in message, message


def test_empty_tar_raises_data_error(tmp_path):
    with tarfile.open(tmp_path / "empty.tar", "w"):
        pass
    loader = build_loader(str(tmp_path / "empty.tar"), resolution=8, batch_size=1)
    with pytest.raises(DataError, match="empty.tar"):
        next(loader)


# ---------------------------------------------------------------- image folders


@pytest.mark.parametrize("jsonl", [True, False])
def test_image_folder_with_jsonl_or_sidecar_captions(tmp_path, jsonl):
    folder = write_image_folder(tmp_path / "imgs", 5, jsonl=jsonl)
    source = ImageFolderSource(folder)
    assert len(source) == 5
    sample = source.load(2)
    assert sample.caption == caption(2) and sample.image.size == (24, 20)
    loader = build_loader(str(folder), resolution=8, batch_size=5)
    assert sorted(next(loader)["captions"]) == [caption(i) for i in range(5)]


def test_image_folder_accepts_metadata_jsonl_nested_files_and_caption_field(tmp_path):
    (tmp_path / "sub").mkdir()
    make_image(0).save(tmp_path / "sub" / "a.png")
    make_image(1).save(tmp_path / "b.jpg")
    (tmp_path / "metadata.jsonl").write_text(
        json.dumps({"file_name": "sub/a.png", "text": "first"}) + "\n"
        + json.dumps({"file_name": "b.jpg", "caption": "second"}) + "\n")
    source = ImageFolderSource(tmp_path)
    assert sorted(source.load(i).caption for i in range(len(source))) == ["first", "second"]


def test_image_folder_problems_are_skipped_with_reasons(tmp_path):
    folder = write_image_folder(tmp_path / "imgs", 6, corrupt={1: "no_caption", 2: "truncated"})
    with open(folder / "captions.jsonl", "a") as handle:
        handle.write('{"file_name": "gone.png", "text": "x"}\n{not json\n')
    loader = build_loader(str(folder), resolution=8, batch_size=1)
    good = {caption(i) for i in (0, 3, 4, 5)}
    assert set(read_good_samples(loader, 4)) == good  # one epoch's good samples, in some order
    read_good_samples(loader, 4 * 2)  # two more epochs: every bad sample met 2 or 3 times
    assert set(loader.skipped) == {"missing caption", "truncated or corrupt image",
                                   "missing image file", "undecodable caption"}
    assert all(count in (2, 3) for count in loader.skipped.values()), loader.skipped
    report = loader.report()
    assert "12 samples loaded" in report and "gone.png" in report and "img_0002.png" in report


def test_folder_without_images_raises(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match=str(tmp_path)):
        build_loader(str(tmp_path), resolution=8, batch_size=1)


def test_folder_of_only_corrupt_images_raises_at_build_time(tmp_path):
    folder = write_image_folder(tmp_path / "imgs", 3, corrupt={0: "garbage", 1: "truncated",
                                                               2: "no_caption"})
    with pytest.raises(DataError, match="no readable samples"):
        build_loader(str(folder), resolution=8, batch_size=1)


# ---------------------------------------------------------------- SampleSource protocol


def test_in_memory_sample_source_gives_pixels_or_latents():
    pixels = next(build_loader(ListSource(6), resolution=8, batch_size=3))
    assert pixels["pixel_values"].shape == (3, 3, 8, 8)
    latents = build_loader(ListSource(6, latents=(4, 2, 2)), resolution=16, batch_size=3)
    batch = next(latents)
    assert batch["latents"].shape == (3, 4, 2, 2) and "pixel_values" not in batch
    assert latents.vae_scaling_factor == 0.5
    for values, text in zip(batch["latents"], batch["captions"]):
        assert values[0, 0, 1].item() == int(text.split()[-1])  # returned as stored


def test_sample_source_exceptions_are_counted_per_type():
    source = ListSource(5, bad=[1, 3])
    loader = build_loader(source, resolution=8, batch_size=3)
    source.loads.clear()  # forget build_loader's probe
    batch = next(loader)
    assert sorted(batch["captions"]) == [caption(i) for i in (0, 2, 4)]
    next(loader)
    assert loader.skipped == {"load raised ValueError": sum(i in (1, 3) for i in source.loads)}
    assert loader.skipped["load raised ValueError"] >= 1


def test_source_smaller_than_world_size_raises():
    with pytest.raises(DataError, match="fewer than"):
        build_loader(ListSource(2), resolution=8, batch_size=1, rank=0, world_size=3)


def test_unknown_source_type_raises():
    with pytest.raises(DataError, match="int"):
        build_loader(42, resolution=8, batch_size=1)


# ---------------------------------------------------------------- latent folders


def write_latents(folder, n: int = 10, shape=(4, 2, 2), shard_size: int = 4, **fields):
    writer = LatentShardWriter(folder, shard_size=shard_size, scaling_factor=0.5,
                               resolution=16, **fields)
    latents = torch.randn(n, *shape, generator=torch.Generator().manual_seed(0))
    writer.add(latents, [caption(i) for i in range(n)], [f"k{i}" for i in range(n)])
    writer.finish()
    return latents


def test_latent_folder_reads_back_what_was_written(tmp_path):
    written = write_latents(tmp_path, n=10, shard_size=4)
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == [
        "latents-00000.safetensors", "latents-00001.safetensors", "latents-00002.safetensors"]
    source = LatentShardSource(tmp_path)
    assert len(source) == 10 and source.vae_scaling_factor == 0.5
    for i in (0, 5, 9):
        sample = source.load(i)
        assert torch.equal(sample.latents, written[i]) and sample.caption == caption(i)


def test_latent_shard_with_wrong_shape_or_missing_file_is_skipped(tmp_path):
    write_latents(tmp_path, n=8, shard_size=4)
    other = tmp_path / "other"
    write_latents(other, n=4, shape=(4, 3, 3), shard_size=4)
    shutil.copy(other / "latents-00000.safetensors", tmp_path / "latents-00001.safetensors")
    loader = build_loader(str(tmp_path), resolution=16, batch_size=1)
    read_good_samples(loader, 4 * 3)  # three epochs of the 4 good latents
    assert set(loader.skipped) == {"wrong latent shape"}
    assert 4 * 2 <= loader.skipped["wrong latent shape"] <= 4 * 3
    (tmp_path / "latents-00001.safetensors").unlink()
    loader = build_loader(str(tmp_path), resolution=16, batch_size=1)
    assert next(loader)["latents"].shape == (1, 4, 2, 2)
    read_good_samples(loader, 4 * 3)
    assert set(loader.skipped) == {"unreadable latent shard"}


def test_bad_manifest_is_a_data_error_naming_it(tmp_path):
    write_latents(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    del manifest["scaling_factor"]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="manifest.json.*scaling_factor"):
        build_loader(str(tmp_path), resolution=16, batch_size=1)


def test_writer_refuses_a_folder_that_already_holds_latents(tmp_path):
    write_latents(tmp_path)
    with pytest.raises(DataError, match="already holds"):
        LatentShardWriter(tmp_path)


def test_non_tar_file_is_rejected(tmp_path):
    path = tmp_path / "data.csv"
    path.write_bytes(io.BytesIO(b"a,b").getvalue())
    with pytest.raises(DataError, match="data.csv"):
        build_loader(str(path), resolution=8, batch_size=1)
