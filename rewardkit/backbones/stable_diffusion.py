"""The ``stable-diffusion`` backbone: a Stable Diffusion 1.x / 2.x teacher loaded with diffusers.

Every part loads with ``from_pretrained(path_or_hub_id, subfolder=...)``, so a hub id such as
``stabilityai/stable-diffusion-2-1`` and a local pipeline folder take the same code path
(``revision``, ``variant`` and ``dtype`` are honoured). The teacher may predict ``epsilon`` or
``v_prediction`` (read from its scheduler config).

The student is the teacher's UNet plus a guidance-scale embedding (``time_cond_proj_dim``, the
LCM "w-conditioning"), trained in full or through peft LoRA adapters. :meth:`save_pipeline` writes
a complete diffusers folder with an ``LCMScheduler``, so::

    pipe = DiffusionPipeline.from_pretrained("out")
    pipe("a photo of a cat", num_inference_steps=4, guidance_scale=7.5)

samples the student with no rewardkit code. Note that diffusers' pipelines embed
``w = guidance_scale - 1`` for a w-conditioned UNet, matching the LCM training convention
``x0 = x0_c + w (x0_c - x0_u)``.
"""

from __future__ import annotations

import inspect
import json
import logging
import shutil
import uuid
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from ..files import replace_path
from ..models import (PIPELINE_PARTS, check_pipeline_location, check_vae_location, resolve_dtype,
                      transformers_dtype_kwarg, unwrap_model)
from .base import Backbone
from .conditioning import Conditioning

logger = logging.getLogger(__name__)

#: LoRA targets of diffusers' LCD-LoRA scripts, as module-name suffixes of an SD UNet.
DEFAULT_LORA_TARGETS: tuple[str, ...] = (
    "to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
    "conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj",
)
#: File written next to a LoRA when the student has a guidance embedding the LoRA cannot carry.
GUIDANCE_EMBEDDING_FILE = "guidance_embedding.safetensors"
LORA_WEIGHTS_FILE = "pytorch_lora_weights.safetensors"
#: Sub-folder of a saved pipeline that holds a w-conditioned student's LoRA. It is not at the top
#: level on purpose: a plain ``pipe.load_lora_weights(folder)`` onto the teacher would load it
#: silently and drop the guidance embedding (different images); there it fails loudly instead.
W_EMBEDDED_LORA_DIR = "lora_w_embedded"
#: Sub-folder of a saved pipeline with the EMA target UNet (diffusers' LCD scripts' ``unet_target``).
TARGET_UNET_DIR = "unet_target"

W_EMBEDDED_LORA_README = """\
# A LoRA of a w-conditioned LCM student

The student takes the guidance scale as an input (`time_cond_proj_dim` = {dim}): its UNet has a
guidance embedding, `time_embedding.cond_proj`, that the teacher's UNet does not have and that a
LoRA cannot add. Plain `pipe.load_lora_weights(...)` onto the teacher therefore cannot reproduce
the student. With diffusers alone:

```python
from diffusers import DiffusionPipeline, LCMScheduler, UNet2DConditionModel
from safetensors.torch import load_file

unet = UNet2DConditionModel.from_pretrained(TEACHER, subfolder="unet", time_cond_proj_dim={dim},
                                            low_cpu_mem_usage=False)  # cond_proj is new
unet.load_state_dict(load_file("{folder}/{embedding}"), strict=False)
pipe = DiffusionPipeline.from_pretrained(TEACHER, unet=unet)
pipe.load_lora_weights("{folder}")
pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
```

or, with rewardkit, `rewardkit.backbones.stable_diffusion.load_student_lora(pipe, "{folder}")`.
The merged student (no LoRA to apply) is `DiffusionPipeline.from_pretrained` of the folder above.
"""


class StableDiffusionBackbone(Backbone):
    """Stable Diffusion 1.x/2.x teacher (epsilon or v-prediction) loaded with diffusers."""

    name: ClassVar[str] = "stable-diffusion"
    #: Sub-folders a local teacher folder must have.
    pipeline_parts: ClassVar[tuple[str, ...]] = PIPELINE_PARTS

    def __init__(self, pretrained_model_name_or_path: str, revision: str | None = None,
                 variant: str | None = None, dtype: str = "float32", device: str = "cpu",
                 pretrained_vae_model_name_or_path: str | None = None) -> None:
        """Load the teacher's UNet, VAE, text encoder, tokenizer and noise scheduler.

        Args:
            pretrained_model_name_or_path: hub id or local diffusers pipeline folder.
            revision: hub revision (branch, tag or commit).
            variant: weight file variant, e.g. ``"fp16"``.
            dtype: dtype of the frozen parts (``float32``, ``float16``, ``bfloat16``).
            device: where the frozen parts live.
            pretrained_vae_model_name_or_path: a VAE to use instead of the teacher's (a hub id
                or a local ``AutoencoderKL`` folder), e.g. ``madebyollin/sdxl-vae-fp16-fix`` for
                an SDXL teacher in fp16, as diffusers' scripts take it.
        """
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import AutoTokenizer, CLIPTextModel

        check_pipeline_location(pretrained_model_name_or_path, parts=self.pipeline_parts)
        if pretrained_vae_model_name_or_path:
            check_vae_location(pretrained_vae_model_name_or_path)
        self.path = str(pretrained_model_name_or_path)
        self.revision = revision
        self.variant = variant
        self.dtype = resolve_dtype(dtype)
        self.device = torch.device(device)
        source = dict(pretrained_model_name_or_path=self.path, revision=revision)

        self.tokenizer = AutoTokenizer.from_pretrained(subfolder="tokenizer", **source)
        self.noise_scheduler = DDPMScheduler.from_pretrained(subfolder="scheduler", **source)
        self.text_encoder = CLIPTextModel.from_pretrained(
            subfolder="text_encoder", variant=variant, **source,
            **transformers_dtype_kwarg(self.dtype))
        if pretrained_vae_model_name_or_path:
            self.vae = AutoencoderKL.from_pretrained(pretrained_vae_model_name_or_path,
                                                     torch_dtype=self.dtype)
        else:
            self.vae = AutoencoderKL.from_pretrained(subfolder="vae", variant=variant,
                                                     torch_dtype=self.dtype, **source)
        self.unet = UNet2DConditionModel.from_pretrained(subfolder="unet", variant=variant,
                                                         torch_dtype=self.dtype, **source)
        for module in (self.unet, self.vae, self.text_encoder):
            module.requires_grad_(False)
            module.eval()
            module.to(self.device)

        self.prediction_type = self.noise_scheduler.config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ConfigError(f"{self.path}: scheduler prediction_type "
                              f"'{self.prediction_type}' is not supported")
        self.vae_scaling_factor = float(self.vae.config.scaling_factor)
        self.vae_shift_factor = getattr(self.vae.config, "shift_factor", None)
        self.latent_channels = int(self.unet.config.in_channels)
        self.text_embed_dim = int(self.text_encoder.config.hidden_size)
        self.sample_size = int(self.unet.config.sample_size)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self._empty_embeds: torch.Tensor | None = None

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "StableDiffusionBackbone":
        """Move (and optionally cast) the frozen parts; the student is built on this device."""
        super().to(device, dtype)
        self.device = torch.device(device)
        if dtype is not None:
            self.dtype = dtype
        self._empty_embeds = None
        return self

    # ------------------------------------------------------------ codecs

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        """The prompts' conditioning: prompt embeddings ``[B, L, D]``, the text encoder's last
        hidden state (no gradients); SD 1.x/2.x adds nothing else."""
        ids = self.tokenizer(list(prompts), padding="max_length", truncation=True,
                             max_length=self.tokenizer.model_max_length,
                             return_tensors="pt").input_ids
        return Conditioning(self.text_encoder(ids.to(self.text_encoder.device))[0])

    def empty_conditioning(self, batch: int) -> Conditioning:
        """The empty prompt's conditioning repeated ``batch`` times (encoded once, cached)."""
        cached = self._empty_embeds
        if cached is None or cached.device != self.text_encoder.device or cached.dtype != self.text_encoder.dtype:
            cached = self._empty_embeds = self.encode_prompts([""]).prompt_embeds
        return Conditioning(cached.expand(batch, -1, -1))

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Scaled latents ``latent_dist.sample() * scaling_factor`` from images in ``[-1, 1]``."""
        pixels = pixels.to(device=self.vae.device, dtype=self.vae.dtype)
        latents = self.vae.encode(pixels).latent_dist.sample(generator)
        if self.vae_shift_factor is not None:
            latents = latents - self.vae_shift_factor
        return latents * self.vae_scaling_factor

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Images in ``[0, 1]`` from scaled latents, differentiable w.r.t. ``latents``."""
        latents = latents.to(device=self.vae.device, dtype=self.vae.dtype) / self.vae_scaling_factor
        if self.vae_shift_factor is not None:
            latents = latents + self.vae_shift_factor
        images = self.vae.decode(latents).sample
        return (images / 2 + 0.5).clamp(0, 1)

    # ------------------------------------------------------------ the student

    def build_student(self, time_cond_proj_dim: int | None = 256) -> nn.Module:
        """A trainable fp32 UNet with the teacher's weights plus a ``time_cond_proj_dim`` embedding.

        Only ``time_embedding.cond_proj`` is new (``nn.Linear`` without bias, default init), so
        with a zero guidance embedding the student equals the teacher. ``time_cond_proj_dim=None``
        gives a plain copy of the teacher (LCM-LoRA style, guidance baked in by distillation).
        A half-precision teacher is re-read in fp32, so the student never inherits rounded weights.
        """
        from diffusers import UNet2DConditionModel

        config = dict(self.unet.config)
        config["time_cond_proj_dim"] = time_cond_proj_dim
        student = UNet2DConditionModel.from_config(config)
        if self.dtype == torch.float32:
            state = self.unet.state_dict()
        else:
            state = UNet2DConditionModel.from_pretrained(
                self.path, subfolder="unet", revision=self.revision, variant=self.variant,
                torch_dtype=torch.float32).state_dict()
        missing, unexpected = student.load_state_dict(state, strict=False)
        new = {"time_embedding.cond_proj.weight"} if time_cond_proj_dim else set()
        if set(missing) != new or unexpected:  # a teacher that is not a plain SD UNet
            raise ConfigError(f"{self.path}: the teacher UNet does not match the student "
                              f"(missing {sorted(set(missing) - new)}, unexpected {unexpected})")
        student.to(self.device)  # from_config built it in float32
        student.train()
        student.requires_grad_(True)
        return student

    def add_lora(self, student: nn.Module, rank: int = 64, alpha: int | None = None,
                 target_modules: Sequence[str] | None = None, train_cond_proj: bool = True) -> nn.Module:
        """Add peft LoRA adapters to ``student`` and make them (only) trainable.

        Args:
            rank: LoRA rank ``r``.
            alpha: ``lora_alpha``; ``None`` means ``rank`` (scale 1, the diffusers LCD-LoRA SD
                script's default).
            target_modules: module-name suffixes; defaults to :data:`DEFAULT_LORA_TARGETS`.
            train_cond_proj: keep the new guidance embedding ``time_embedding.cond_proj``
                trainable too (it has no pretrained weights for a LoRA to adapt).
        """
        from peft import LoraConfig

        if rank <= 0:
            raise ConfigError(f"lora rank must be positive, got {rank}")
        config = LoraConfig(r=rank, lora_alpha=rank if alpha is None else alpha,
                            target_modules=list(target_modules or DEFAULT_LORA_TARGETS),
                            init_lora_weights=True)
        student.requires_grad_(False)
        student.add_adapter(config)
        for name, param in student.named_parameters():
            param.requires_grad_("lora_" in name)
        cond_proj = getattr(student.time_embedding, "cond_proj", None)
        if train_cond_proj and cond_proj is not None:
            cond_proj.requires_grad_(True)
        return student

    def predict(self, unet: nn.Module, latents: torch.Tensor, timesteps: torch.Tensor,
                cond: Conditioning, timestep_cond: torch.Tensor | None = None) -> torch.Tensor:
        """The raw UNet output (noise, v or sample, per :attr:`prediction_type`)."""
        return unet(latents, timesteps, encoder_hidden_states=cond.prompt_embeds,
                    added_cond_kwargs=cond.added_cond_kwargs, timestep_cond=timestep_cond,
                    return_dict=False)[0]

    # ------------------------------------------------------------ saving

    def lcm_scheduler(self, original_inference_steps: int = 50, timestep_scaling: float = 10.0) -> Any:
        """An ``LCMScheduler`` derived from the teacher's scheduler (prediction type kept)."""
        from diffusers import LCMScheduler

        accepted = set(inspect.signature(LCMScheduler.__init__).parameters) - {"self"}
        config = {k: v for k, v in self.noise_scheduler.config.items() if k in accepted}
        return LCMScheduler.from_config(config, original_inference_steps=original_inference_steps,
                                        timestep_scaling=timestep_scaling)

    #: The text encoders and tokenizers a saved pipeline holds (attribute = sub-folder name).
    text_parts: ClassVar[tuple[str, ...]] = ("text_encoder", "tokenizer")

    def pipeline(self, unet: nn.Module, scheduler: Any) -> Any:
        """The diffusers pipeline of this teacher's parts with ``unet`` and ``scheduler``."""
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline(
            vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer, unet=unet,
            scheduler=scheduler, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False)

    def save_pipeline(self, student: nn.Module, output_dir: str | Path, lora: bool | None = None,
                      original_inference_steps: int = 50, timestep_scaling: float = 10.0,
                      target: nn.Module | None = None) -> Path:
        """Write a complete diffusers pipeline folder that samples the student with ``LCMScheduler``.

        The folder holds ``model_index.json``, the (online) student UNet (LoRA merged in) as
        safetensors, the teacher's VAE, text encoder and tokenizer, and an ``LCMScheduler``
        config. ``target`` (the EMA target of full fine-tuning) goes to ``unet_target/``, as
        diffusers' LCD scripts save it (load it with ``UNet2DConditionModel.from_pretrained(folder,
        subfolder="unet_target")``). With ``lora`` (default: whenever ``student`` has peft
        adapters) the folder also holds the LoRA: ``pytorch_lora_weights.safetensors`` at the top
        level for a student without guidance embedding (``pipe.load_lora_weights(folder)`` onto
        the teacher reproduces the merged UNet), and, for a w-conditioned student, the LoRA plus
        ``guidance_embedding.safetensors`` and a ``README.md`` with the diffusers-only load code in
        ``lora_w_embedded/`` (see :func:`load_student_lora`; a warning says so).
        The folder is written next to ``output_dir`` and renamed into place, so a crash never
        leaves a half-written pipeline; an existing ``output_dir`` is replaced.
        """
        output_dir = Path(output_dir)
        student = unwrap_model(student)
        has_lora = bool(getattr(student, "peft_config", None))
        if lora is None:
            lora = has_lora
        if lora and not has_lora:
            raise ConfigError("save_pipeline(lora=True): the student has no LoRA adapters")
        output_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = output_dir.parent / f".{output_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            tmp.mkdir()
            pipe = self.pipeline(student, self.lcm_scheduler(original_inference_steps,
                                                             timestep_scaling))
            pipe.save_config(tmp)  # model_index.json
            self.vae.save_pretrained(tmp / "vae", safe_serialization=True)
            for name in self.text_parts:
                part = getattr(self, name)
                if name.startswith("tokenizer"):
                    part.save_pretrained(tmp / name)
                else:
                    part.save_pretrained(tmp / name, safe_serialization=True)
            pipe.scheduler.save_pretrained(tmp / "scheduler")
            _save_merged_unet(student, tmp / "unet")
            if target is not None:
                _save_merged_unet(unwrap_model(target), tmp / TARGET_UNET_DIR)
            if lora:
                w_dim = getattr(student.config, "time_cond_proj_dim", None)
                if w_dim:
                    _save_lora(student, tmp / W_EMBEDDED_LORA_DIR, type(pipe))
                    (tmp / W_EMBEDDED_LORA_DIR / "README.md").write_text(W_EMBEDDED_LORA_README.format(
                        dim=w_dim, folder=output_dir / W_EMBEDDED_LORA_DIR,
                        embedding=GUIDANCE_EMBEDDING_FILE))
                    logger.warning(
                        "the LoRA of this w-conditioned student is in %s: plain "
                        "load_lora_weights onto the teacher cannot add its guidance embedding "
                        "(time_cond_proj_dim=%d); load it as %s/README.md shows, or use the "
                        "merged pipeline in %s", output_dir / W_EMBEDDED_LORA_DIR, w_dim,
                        output_dir / W_EMBEDDED_LORA_DIR, output_dir)
                else:
                    _save_lora(student, tmp, type(pipe))
            replace_path(tmp, output_dir)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return output_dir


# ---------------------------------------------------------------- helpers for saving


def merged_unet_state_dict(unet: nn.Module) -> dict[str, torch.Tensor]:
    """The UNet's state dict with every active LoRA adapter merged into its base weights.

    Computes ``W + scale * B @ A`` per LoRA layer without modifying ``unet`` (no copy of the
    model either); plain UNets come back unchanged.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = {name: module for name, module in unet.named_modules() if isinstance(module, BaseTunerLayer)}
    merged: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for key, tensor in unet.state_dict().items():
            if ".lora_" in key:
                continue
            if ".base_layer." in key:
                owner, param = key.split(".base_layer.", 1)
                layer = layers[owner]
                key = f"{owner}.{param}"
                if param == "weight" and not layer.merged and not layer.disable_adapters:
                    tensor = tensor.clone()
                    for adapter in layer.active_adapters:
                        if adapter in layer.lora_A:
                            tensor += layer.get_delta_weight(adapter).to(tensor.dtype)
            merged[key] = tensor.detach().to("cpu").contiguous()
    return merged


def _save_merged_unet(unet: nn.Module, folder: Path) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    unet.save_config(folder)
    save_file(merged_unet_state_dict(unet), str(folder / "diffusion_pytorch_model.safetensors"),
              metadata={"format": "pt"})


def _save_lora(unet: nn.Module, folder: Path, pipeline_class: Any) -> None:
    # Keys stay in peft's format (``lora_A``/``lora_B``), which load_lora_weights reads as is.
    # diffusers' convert_state_dict_to_diffusers renames only attention keys, and the loader then
    # sees mixed formats and silently drops the renamed ones; the adapter metadata carries alpha.
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    adapter = next(iter(unet.peft_config))
    layers = {k: v.detach().to("cpu").contiguous()
              for k, v in get_peft_model_state_dict(unet, adapter_name=adapter).items()}
    pipeline_class.save_lora_weights(
        folder, unet_lora_layers=layers, weight_name=LORA_WEIGHTS_FILE, safe_serialization=True,
        unet_lora_adapter_metadata=unet.peft_config[adapter].to_dict())
    cond_proj = getattr(unet.time_embedding, "cond_proj", None)
    if cond_proj is not None:
        save_file({"time_embedding.cond_proj.weight": cond_proj.weight.detach().to("cpu").contiguous()},
                  str(folder / GUIDANCE_EMBEDDING_FILE),
                  metadata={"format": "pt",
                            "time_cond_proj_dim": str(unet.config.time_cond_proj_dim)})


def load_student_lora(pipe: Any, lora_dir: str | Path) -> Any:
    """Apply a saved student LoRA to a teacher pipeline (``pipe``), in place; returns ``pipe``.

    ``lora_dir`` is a saved pipeline folder or the LoRA folder inside it. A LoRA of a student
    without guidance embedding is plain diffusers: this is just ``pipe.load_lora_weights``. For a
    w-conditioned student (``lora_w_embedded/``), the teacher UNet first gets the saved
    ``time_embedding.cond_proj`` (``guidance_embedding.safetensors``).
    """
    from diffusers import UNet2DConditionModel
    from safetensors import safe_open
    from safetensors.torch import load_file

    lora_dir = Path(lora_dir)
    if not (lora_dir / LORA_WEIGHTS_FILE).is_file() and (lora_dir / W_EMBEDDED_LORA_DIR).is_dir():
        lora_dir = lora_dir / W_EMBEDDED_LORA_DIR
    if not (lora_dir / LORA_WEIGHTS_FILE).is_file():
        raise ConfigError(f"'{lora_dir}' has no {LORA_WEIGHTS_FILE}")
    embedding_file = lora_dir / GUIDANCE_EMBEDDING_FILE
    if embedding_file.is_file():
        with safe_open(str(embedding_file), "pt") as handle:
            dim = int(json.loads(handle.metadata()["time_cond_proj_dim"]))
        teacher = pipe.unet
        unet = UNet2DConditionModel.from_config({**teacher.config, "time_cond_proj_dim": dim})
        state = {**teacher.state_dict(), **load_file(str(embedding_file))}
        unet.load_state_dict(state)
        unet.to(device=teacher.device)
        if teacher.dtype != unet.dtype:
            unet.to(dtype=teacher.dtype)
        pipe.unet = unet
    pipe.load_lora_weights(str(lora_dir), weight_name=LORA_WEIGHTS_FILE)
    return pipe
