"""Contract checks every backbone plugin should pass: ``check_backbone``.

A third-party backbone author runs, in their own tests (on a tiny teacher built offline)::

    from rewardkit.testing import check_backbone

    def test_contract(tmp_path):
        check_backbone(MyBackbone(str(build_my_tiny_teacher(tmp_path))), tmp_path / "out")

Each check raises ``AssertionError`` naming the backbone and what went wrong:

- the attributes the recipes read exist and agree (``latent_channels``, ``text_embed_dim``,
  ``sample_size``, ``vae_scaling_factor``, ``prediction_type`` and the ``schedule`` built from it);
- ``encode_prompts`` and ``empty_conditioning`` give a :class:`~rewardkit.backbones.Conditioning`
  whose ``prompt_embeds`` are ``[B, L, text_embed_dim]`` without gradients (different prompts,
  different embeddings) and which carry the same ``added`` tensors;
- ``encode_images`` maps ``[B, 3, H, W]`` pixels in ``[-1, 1]`` to ``[B, latent_channels, h, w]``
  with ``h == latent_side(H)`` (what a run at another resolution relies on), and ``decode_latents`` maps them back to ``[B, 3, H, W]`` in ``[0, 1]``, differentiably (the
  reward gradient of RG-LCD flows through it);
- ``build_student`` has the teacher's weights: with a zero guidance embedding (or none, for a
  backbone whose students take none: ``guidance_embedding = False``) it predicts what the
  teacher predicts, and its only trainable parameters are its own; ``predict`` keeps the
  latents' shape;
- ``lcm_scheduler`` is the diffusers scheduler the backbone's ``student_scheduler`` names
  (``LCMScheduler`` with the teacher's ``prediction_type`` for DDPM teachers), and (when
  ``output_dir`` is given) ``save_pipeline`` writes a folder that
  ``diffusers.DiffusionPipeline.from_pretrained`` loads with that scheduler (parts the folder
  saved as ``null``, such as a dropped T5, passed as ``None``, as diffusers requires).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..backbones.base import Backbone
from ..backbones.conditioning import Conditioning
from ..noise_process import NoiseProcess

__all__ = ["check_backbone"]


def check_backbone(backbone: Any, output_dir: str | Path | None = None, batch: int = 2,
                   time_cond_proj_dim: int = 32) -> None:
    """Run every contract check on a built ``backbone`` (see the module docstring)."""
    name = getattr(backbone, "name", type(backbone).__name__)
    where = f"backbone '{name}'"
    if batch < 2:
        raise ValueError("check_backbone needs batch >= 2 (it compares two prompts)")
    assert isinstance(backbone, Backbone), f"{where} is not a rewardkit.backbones.Backbone"
    _check_attributes(backbone, where)
    prompts = ["a photo of a red circle", "a blue square"][:batch] + ["a cat"] * max(0, batch - 2)
    cond = _check_prompts(backbone, prompts, where)
    latents = _check_codecs(backbone, batch, where)
    _check_student(backbone, latents, cond, time_cond_proj_dim, where)
    _check_scheduler(backbone, where)
    if output_dir is not None:
        _check_saving(backbone, Path(output_dir), time_cond_proj_dim, where)


def _check_attributes(backbone: Backbone, where: str) -> None:
    for attribute, kind in (("latent_channels", int), ("text_embed_dim", int), ("sample_size", int),
                            ("vae_scaling_factor", float), ("prediction_type", str)):
        value = getattr(backbone, attribute, None)
        assert isinstance(value, kind), f"{where}: {attribute} must be a {kind.__name__}, got {value!r}"
    schedule = backbone.schedule
    assert isinstance(schedule, NoiseProcess), (
        f"{where}: schedule is not a rewardkit.noise_process.NoiseProcess")
    assert schedule.prediction_type == backbone.prediction_type, (
        f"{where}: schedule.prediction_type {schedule.prediction_type!r} is not the backbone's "
        f"{backbone.prediction_type!r}")
    assert schedule is backbone.schedule, f"{where}: schedule must be built once, not per call"


def _check_prompts(backbone: Backbone, prompts: list[str], where: str) -> Conditioning:
    cond, uncond = backbone.encode_prompts(prompts), backbone.empty_conditioning(len(prompts))
    for label, value in (("encode_prompts", cond), ("empty_conditioning", uncond)):
        assert isinstance(value, Conditioning), (
            f"{where}: {label} must return a rewardkit.backbones.Conditioning, got "
            f"{type(value).__name__}")
    embeds, empty = cond.prompt_embeds, uncond.prompt_embeds
    for label, tensor in (("encode_prompts", embeds), ("empty_conditioning", empty)):
        assert tensor.ndim == 3 and tensor.shape[0] == len(prompts), (
            f"{where}: {label} must return [B, L, D] with B={len(prompts)}, got {tuple(tensor.shape)}")
        assert tensor.shape[-1] == backbone.text_embed_dim, (
            f"{where}: {label} width {tensor.shape[-1]} is not text_embed_dim {backbone.text_embed_dim}")
        assert not tensor.requires_grad, f"{where}: {label} must not carry gradients"
    assert embeds.shape == empty.shape, f"{where}: prompt and empty-prompt embeddings differ in shape"
    assert set(cond.added) == set(uncond.added), (
        f"{where}: the prompts' and the empty prompt's conditioning carry different tensors")
    assert not torch.equal(embeds[0], embeds[1]), f"{where}: different prompts, same embeddings"
    return cond


def _check_codecs(backbone: Backbone, batch: int, where: str) -> torch.Tensor:
    factor = getattr(backbone, "vae_scale_factor", 8)
    side = backbone.sample_size * factor
    pixels = torch.rand(batch, 3, side, side, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        latents = backbone.encode_images(pixels, generator=torch.Generator().manual_seed(1))
    expected = (batch, backbone.latent_channels, backbone.sample_size, backbone.sample_size)
    assert tuple(latents.shape) == expected, (
        f"{where}: encode_images of {side}x{side} pixels gave {tuple(latents.shape)}, expected {expected}")
    assert backbone.latent_side(side) == backbone.sample_size, (
        f"{where}: latent_side({side}) is {backbone.latent_side(side)} but encode_images gave "
        f"{backbone.sample_size}x{backbone.sample_size} latents")
    probe = latents.detach().float().clone().requires_grad_(True)
    images = backbone.decode_latents(probe)
    assert tuple(images.shape) == (batch, 3, side, side), (
        f"{where}: decode_latents gave {tuple(images.shape)}, expected {(batch, 3, side, side)}")
    assert float(images.detach().min()) >= 0.0 and float(images.detach().max()) <= 1.0, (
        f"{where}: decode_latents must return images in [0, 1]")
    assert images.requires_grad, (
        f"{where}: decode_latents is not differentiable with respect to the latents")
    images.float().mean().backward()
    assert probe.grad is not None and bool(probe.grad.abs().sum() > 0), (
        f"{where}: decode_latents is not differentiable with respect to the latents")
    return latents.float()


def _check_student(backbone: Backbone, latents: torch.Tensor, cond: Conditioning,
                   dim: int, where: str) -> None:
    from ..consistency import guidance_scale_embedding

    takes_w = getattr(backbone, "guidance_embedding", True)
    student = backbone.build_student(time_cond_proj_dim=dim if takes_w else None)
    trainable = [n for n, p in student.named_parameters() if p.requires_grad]
    assert trainable, f"{where}: build_student returned a student with nothing to train"
    assert not any(p.requires_grad for p in backbone.unet.parameters()), (
        f"{where}: the teacher UNet must stay frozen")
    cond_proj = getattr(getattr(student, "time_embedding", None), "cond_proj", None)
    timesteps = torch.tensor([999, 259] + [500] * (latents.shape[0] - 2))[: latents.shape[0]]
    device = backbone.device
    with torch.no_grad():
        if cond_proj is not None:
            cond_proj.weight.zero_()
        w = (guidance_scale_embedding(torch.full((latents.shape[0],), 7.0), dim).to(device)
             if takes_w else None)
        teacher_out = backbone.predict(backbone.unet, latents.to(device, backbone.dtype),
                                       timesteps.to(device), cond.to(dtype=backbone.dtype))
        student_out = backbone.predict(student, latents.to(device), timesteps.to(device),
                                       cond.float(), w)
    assert student_out.shape == latents.shape, (
        f"{where}: predict returned {tuple(student_out.shape)} for latents {tuple(latents.shape)}")
    torch.testing.assert_close(
        student_out.float(), teacher_out.float(), atol=1e-3, rtol=1e-3,
        msg=lambda m: f"{where}: a student with a zero guidance embedding must predict what the "
                      f"teacher predicts ({m})")


def _check_scheduler(backbone: Backbone, where: str) -> None:
    scheduler = backbone.lcm_scheduler()
    expected = getattr(backbone, "student_scheduler", "LCMScheduler")
    assert type(scheduler).__name__ == expected, (
        f"{where}: lcm_scheduler returned a {type(scheduler).__name__}, not an {expected}")
    own = scheduler.config.get("prediction_type")
    assert own is None or own == backbone.prediction_type, (
        f"{where}: lcm_scheduler's prediction_type {own!r} is not the teacher's "
        f"{backbone.prediction_type!r}")


def load_saved_pipeline(folder: str | Path) -> Any:
    """``DiffusionPipeline.from_pretrained(folder)``, passing ``None`` for the parts the folder
    saved as ``null`` (an SD3 pipeline without T5 loads only so)."""
    import json

    from diffusers import DiffusionPipeline

    index = json.loads((Path(folder) / "model_index.json").read_text())
    absent = {name: None for name, value in index.items()
              if isinstance(value, list) and value and value[0] is None}
    return DiffusionPipeline.from_pretrained(folder, **absent)


def _check_saving(backbone: Backbone, output_dir: Path, dim: int, where: str) -> None:
    takes_w = getattr(backbone, "guidance_embedding", True)
    student = backbone.build_student(time_cond_proj_dim=dim if takes_w else None)
    folder = backbone.save_pipeline(student, output_dir / "check-backbone-pipeline")
    pipe = load_saved_pipeline(folder)
    expected = getattr(backbone, "student_scheduler", "LCMScheduler")
    assert type(pipe.scheduler).__name__ == expected, (
        f"{where}: the saved pipeline samples with {type(pipe.scheduler).__name__}, not {expected}")
    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer")
    found = getattr(denoiser.config, "time_cond_proj_dim", None)
    assert found == (dim if takes_w else None), (
        f"{where}: the saved denoiser's guidance embedding is time_cond_proj_dim {found}, "
        f"expected {dim if takes_w else None}")
