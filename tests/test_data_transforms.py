"""Image and latent transforms: resize the shorter side, crop, flip, [-1, 1] CHW tensors."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from rewardkit.data.transforms import (SIXTEEN_BIT_MODES, ImageTransform, LatentTransform,
                                       crop_square, resize_shorter_side, shorter_side_size)


def gradient_image(width: int, height: int) -> Image.Image:
    """Red grows left to right, green top to bottom: positions are readable from pixels."""
    x = np.linspace(0, 255, width, dtype=np.float64)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.float64)[:, None].repeat(width, 1)
    array = np.stack([x, y, np.full_like(x, 128)], axis=-1).round().astype(np.uint8)
    return Image.fromarray(array, "RGB")


@pytest.mark.parametrize("size, expected", [((20, 40), (16, 32)), ((40, 20), (32, 16)),
                                            ((30, 30), (16, 16)), ((20, 33), (16, 26))])
def test_shorter_side_becomes_resolution_and_aspect_is_kept(size, expected):
    height, width = size
    assert shorter_side_size(height, width, 16) == expected
    pixels = resize_shorter_side(gradient_image(width, height), 16)
    assert tuple(pixels.shape) == (3, *expected)


def test_pil_resize_is_bilinear_antialiased_like_pil():
    image = gradient_image(64, 48)
    ours = resize_shorter_side(image, 12)
    reference = np.asarray(image.resize((16, 12), Image.BILINEAR), dtype=np.float32) / 255.0
    assert torch.allclose(ours, torch.from_numpy(reference).permute(2, 0, 1))


def test_tensor_resize_antialiases_a_checkerboard():
    board = torch.zeros(3, 64, 64)
    board[:, ::2, ::2] = 1.0
    board[:, 1::2, 1::2] = 1.0
    small = resize_shorter_side(board, 8)
    # antialiased downscaling averages the board to grey; plain bilinear would alias to 0/1 values
    assert torch.allclose(small, torch.full_like(small, 0.5), atol=0.05)


def test_center_crop_takes_the_middle():
    pixels = torch.arange(10 * 20, dtype=torch.float32).reshape(1, 10, 20)
    crop = crop_square(pixels, 10, None)
    assert torch.equal(crop, pixels[..., :, 5:15])


def test_random_crop_stays_inside_and_follows_the_rng():
    pixels = torch.arange(16 * 40, dtype=torch.float32).reshape(1, 16, 40)
    lefts = set()
    for seed in range(30):
        crop = crop_square(pixels, 16, random.Random(seed))
        assert crop.shape == (1, 16, 16)
        left = int(crop[0, 0, 0].item()) % 40
        assert torch.equal(crop, pixels[..., :, left:left + 16])
        assert torch.equal(crop, crop_square(pixels, 16, random.Random(seed)))
        lefts.add(left)
    assert len(lefts) > 5


def test_transform_output_range_shape_and_centre_content():
    out = ImageTransform(16, center_crop=True)(gradient_image(32, 16), random.Random(0))
    assert out.shape == (3, 16, 16) and out.dtype == torch.float32
    assert out.min() >= -1.0 and out.max() <= 1.0
    red = out[0].mean(0)  # centre crop of a left-to-right ramp: symmetric around 0
    assert red[0] < -0.3 and red[-1] > 0.3 and abs(red.mean().item()) < 0.05


def test_flip_mirrors_the_image_for_about_half_the_samples():
    image = gradient_image(16, 16)
    plain = ImageTransform(16, center_crop=True)(image, random.Random(0))
    flips = 0
    for seed in range(40):
        out = ImageTransform(16, center_crop=True, random_flip=True)(image, random.Random(seed))
        if torch.equal(out, plain.flip(-1)):
            flips += 1
        else:
            assert torch.equal(out, plain)
    assert 10 <= flips <= 30


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK"])
def test_any_pil_mode_becomes_three_channels(mode):
    image = gradient_image(20, 20).convert(mode)
    assert ImageTransform(8, center_crop=True)(image, random.Random(0)).shape == (3, 8, 8)


def test_uint8_array_and_float_tensor_inputs_agree():
    array = np.asarray(gradient_image(16, 16))
    from_array = ImageTransform(16, center_crop=True)(array, random.Random(0))
    from_tensor = ImageTransform(16, center_crop=True)(
        torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255.0, random.Random(0))
    assert torch.allclose(from_array, from_tensor, atol=1e-6)
    gray = ImageTransform(16, center_crop=True)(torch.rand(1, 16, 16), random.Random(0))
    assert torch.equal(gray[0], gray[1])


def test_latent_transform_returns_latents_as_stored_or_flipped():
    latents = torch.randn(4, 8, 8)
    assert torch.equal(LatentTransform()(latents, random.Random(0)), latents)
    outs = [LatentTransform(random_flip=True)(latents, random.Random(s)) for s in range(20)]
    assert any(torch.equal(o, latents.flip(-1)) for o in outs)
    assert all(torch.equal(o, latents) or torch.equal(o, latents.flip(-1)) for o in outs)


def _saved_and_reopened(image: Image.Image, fmt: str) -> Image.Image:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    buffer.seek(0)
    reopened = Image.open(buffer)
    reopened.load()
    return reopened


NOISE = np.random.default_rng(0).random((32, 32))  # uniform in [0, 1): mean ~0.5


@pytest.mark.parametrize("mode,build,fmt", [
    ("I;16", lambda: Image.fromarray((NOISE * 65535).astype(np.uint16)), "PNG"),
    ("I", lambda: Image.fromarray((NOISE * 65535).astype(np.int32), mode="I"), "TIFF"),
    ("F", lambda: Image.fromarray(NOISE.astype(np.float32), mode="F"), "TIFF"),
    ("L", lambda: Image.fromarray((NOISE * 255).astype(np.uint8)), "PNG"),
    ("P", lambda: Image.fromarray((NOISE * 255).astype(np.uint8)).convert("P"), "PNG"),
    ("LA", lambda: Image.fromarray((NOISE * 255).astype(np.uint8)).convert("LA"), "PNG"),
    ("CMYK", lambda: Image.fromarray((NOISE * 255).astype(np.uint8)).convert("RGB")
     .convert("CMYK"), "JPEG"),
])
def test_high_bit_depth_and_other_modes_are_scaled_not_clipped(mode, build, fmt):
    """A uniform-noise image keeps its mean (~0 in [-1, 1]) whatever its mode; convert("RGB")
    alone turns 16-bit and float greyscale white or black."""
    image = _saved_and_reopened(build(), fmt)
    assert image.mode.startswith(mode[:1]) and (mode != "I;16" or image.mode in SIXTEEN_BIT_MODES)
    pixels = ImageTransform(32)(image, random.Random(0))
    assert pixels.shape == (3, 32, 32)
    assert abs(float(pixels.mean())) < 0.08, (image.mode, float(pixels.mean()))


def test_rewards_cli_reads_a_16_bit_png_scaled(tmp_path):
    from rewardkit.rewards.cli import load_image

    path = tmp_path / "deep.png"
    Image.fromarray((NOISE * 65535).astype(np.uint16)).save(path)
    assert abs(float(load_image(path).mean()) - 0.5) < 0.05
