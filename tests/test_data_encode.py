"""``rewardkit data encode``: latents written once, read back by the loader; through a fake
encoder, through the real stable-diffusion backbone on a tiny pipeline, and from the CLI."""

from __future__ import annotations

import json
import random

import pytest
import torch

from data_fixtures import FakeBackbone, caption, make_image, write_image_folder, write_shards
from rewardkit.data import LatentShardSource, build_loader, encode_dataset
from rewardkit.data.transforms import ImageTransform
from rewardkit.errors import DataError


def test_encode_round_trip_with_a_fake_encoder(tmp_path):
    spec = write_shards(tmp_path / "wds", 2, 5, corrupt={3: "truncated", 6: "no_caption"})
    backbone = FakeBackbone(scaling_factor=0.5)
    manifest_path, skips = encode_dataset(spec, tmp_path / "latents", backbone, resolution=16,
                                          batch_size=3, shard_size=4, seed=7, progress=False)
    manifest = json.loads(manifest_path.read_text())
    good = [i for i in range(10) if i not in (3, 6)]
    assert manifest["count"] == 8 and manifest["latent_shape"] == [4, 2, 2]
    assert manifest["scaling_factor"] == 0.5 and manifest["resolution"] == 16
    assert manifest["skipped"] == {"truncated or corrupt image": 1, "missing caption": 1}
    assert [s["count"] for s in manifest["shards"]] == [4, 4]
    assert skips.loaded == 8

    source = LatentShardSource(tmp_path / "latents")
    encoded = torch.cat(backbone.outputs)  # what the encoder returned, in order
    for row, seed in enumerate(good):
        sample = source.load(row)
        assert sample.caption == caption(seed)
        assert torch.equal(sample.latents, encoded[row])

    # the same images through the same (centre-crop) transform give the same latents, noise aside
    pixels = ImageTransform(16, center_crop=True)(make_image(good[0]), random.Random(0))
    mean = backbone.vae(pixels[None]) * 0.5
    assert torch.allclose(source.load(0).latents, mean[0], atol=0.05)


def test_encode_is_deterministic_given_the_seed(tmp_path):
    folder = write_image_folder(tmp_path / "imgs", 5)
    outputs = []
    for run, seed in enumerate((1, 1, 2)):
        path, _ = encode_dataset(str(folder), tmp_path / f"out{run}", FakeBackbone(), resolution=16,
                                 batch_size=2, seed=seed, progress=False)
        source = LatentShardSource(path.parent)
        outputs.append(torch.stack([source.load(i).latents for i in range(len(source))]))
    assert torch.equal(outputs[0], outputs[1])
    assert not torch.equal(outputs[0], outputs[2])


def test_latent_loader_yields_scaled_latents_with_the_right_shape(tmp_path):
    folder = write_image_folder(tmp_path / "imgs", 6)
    encode_dataset(str(folder), tmp_path / "lat", FakeBackbone(scaling_factor=0.5), resolution=24,
                   batch_size=4, progress=False)
    loader = build_loader(str(tmp_path / "lat"), resolution=24, batch_size=4, seed=0,
                          random_flip=True, vae_scaling_factor=0.5)
    batch = next(loader)
    assert set(batch) == {"latents", "captions", "keys"}
    assert batch["latents"].shape == (4, 4, 3, 3) and batch["latents"].dtype == torch.float32
    assert loader.latent_shape == (4, 3, 3)
    source = LatentShardSource(tmp_path / "lat")
    stored = {source.load(i).caption: source.load(i).latents for i in range(6)}
    for values, text in zip(batch["latents"], batch["captions"]):
        assert torch.equal(values, stored[text]) or torch.equal(values, stored[text].flip(-1))


def test_encode_of_an_unreadable_source_writes_no_manifest(tmp_path):
    spec = write_shards(tmp_path / "wds", 1, 2, corrupt={0: "garbage", 1: "truncated"})
    with pytest.raises(DataError, match="no readable images"):
        encode_dataset(spec, tmp_path / "out", FakeBackbone(), resolution=16, progress=False)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_encode_limit_stops_early(tmp_path):
    folder = write_image_folder(tmp_path / "imgs", 7)
    path, _ = encode_dataset(str(folder), tmp_path / "out", FakeBackbone(), resolution=16,
                             batch_size=2, limit=3, progress=False)
    assert json.loads(path.read_text())["count"] == 3


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    tiny = pytest.importorskip("rewardkit.testing.tiny_sd")
    return tiny.build_tiny_sd_pipeline(tmp_path_factory.mktemp("tiny-sd") / "pipe")


def test_encode_through_the_stable_diffusion_backbone(tmp_path, tiny_sd):
    import rewardkit as rk

    backbone = rk.backbone("stable-diffusion", pretrained_model_name_or_path=str(tiny_sd))
    folder = write_image_folder(tmp_path / "imgs", 3)
    path, _ = encode_dataset(str(folder), tmp_path / "lat", backbone, resolution=16, batch_size=2,
                             seed=0, teacher=str(tiny_sd), progress=False)
    manifest = json.loads(path.read_text())
    assert manifest["scaling_factor"] == backbone.vae_scaling_factor == pytest.approx(0.18215)
    assert manifest["latent_shape"] == [backbone.latent_channels, 8, 8]  # 16 px / VAE factor 2
    loader = build_loader(str(tmp_path / "lat"), resolution=16, batch_size=3,
                          vae_scaling_factor=backbone.vae_scaling_factor)
    latents = next(loader)["latents"]
    # decoding what was stored gives back images (scaling was applied exactly once)
    images = backbone.decode_latents(latents)
    assert images.shape == (3, 3, 16, 16) and torch.isfinite(images).all()
    with pytest.raises(DataError, match="scaling factor"):
        build_loader(str(tmp_path / "lat"), resolution=16, batch_size=3, vae_scaling_factor=0.13025)


def test_data_encode_command(tmp_path, tiny_sd, fresh_host):
    from rewardkit.cli import run

    spec = write_shards(tmp_path / "wds", 2, 3, corrupt={4: "garbage"})
    out = tmp_path / "lat"
    code = run(["data", "encode", spec, str(out), "--teacher", str(tiny_sd), "--resolution", "16",
                "--batch-size", "2", "--shard-size", "3", "--latent-dtype", "float16"])
    assert code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["count"] == 5 and manifest["dtype"] == "float16"
    assert manifest["teacher"] == str(tiny_sd) and manifest["skipped"] == {"undecodable image": 1}
    assert len(list(out.glob("latents-*.safetensors"))) == 2
    assert next(build_loader(str(out), resolution=16, batch_size=5))["latents"].shape == (5, 4, 8, 8)


def test_data_encode_command_reports_a_missing_source(tmp_path, tiny_sd, fresh_host, capsys):
    from rewardkit.cli import run

    code = run(["data", "encode", str(tmp_path / "nope-{0..2}.tar"), str(tmp_path / "out"),
                "--teacher", str(tiny_sd), "--resolution", "16"])
    assert code == 1
    assert "nope-0.tar" in capsys.readouterr().err
