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
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from ..files import replace_path
from ..models import (PIPELINE_PARTS, check_pipeline_location, check_vae_location,
                      naming_load_errors, pipeline_class_name, resolve_dtype,
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
#: The student's weights in a training checkpoint (``accelerate.save_state``'s first model).
CHECKPOINT_WEIGHTS = "model.safetensors"
#: The two kinds of folder :meth:`StableDiffusionBackbone.load_student` reads (said when it
#: refuses one).
STUDENT_PIPELINE = ("a distilled pipeline folder (model_index.json and a unet/ with a guidance "
                    "embedding or a student LoRA, as save_pipeline writes it)")
STUDENT_CHECKPOINT = "a training checkpoint folder (checkpoint-N/ with model.safetensors)"
_CHECKPOINT_NAME = re.compile(r"^checkpoint-\d+$")

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
        kind = pipeline_class_name(pretrained_model_name_or_path) or ""
        if "XL" in kind and "text_encoder_2" not in self.pipeline_parts:
            raise ConfigError(f"pretrained_teacher_model '{pretrained_model_name_or_path}' is an "
                              f"SDXL pipeline ({kind}), which backbone '{self.name}' cannot "
                              "read; pass --backbone stable-diffusion-xl")
        if pretrained_vae_model_name_or_path:
            check_vae_location(pretrained_vae_model_name_or_path)
        self.path = str(pretrained_model_name_or_path)
        self.revision = revision
        self.variant = variant
        self.dtype = resolve_dtype(dtype)
        self.device = torch.device(device)
        source = dict(pretrained_model_name_or_path=self.path, revision=revision)

        teacher = f"pretrained_teacher_model '{self.path}'"
        with naming_load_errors(f"{teacher} (its tokenizer)"):
            self.tokenizer = AutoTokenizer.from_pretrained(subfolder="tokenizer", **source)
        with naming_load_errors(f"{teacher} (its scheduler)"):
            self.noise_scheduler = DDPMScheduler.from_pretrained(subfolder="scheduler", **source)
        with naming_load_errors(f"{teacher} (its text_encoder)"):
            self.text_encoder = CLIPTextModel.from_pretrained(
                subfolder="text_encoder", variant=variant, **source,
                **transformers_dtype_kwarg(self.dtype))
        if pretrained_vae_model_name_or_path:
            with naming_load_errors("pretrained_vae_model_name_or_path "
                                    f"'{pretrained_vae_model_name_or_path}'"):
                self.vae = AutoencoderKL.from_pretrained(pretrained_vae_model_name_or_path,
                                                         torch_dtype=self.dtype)
        else:
            with naming_load_errors(f"{teacher} (its vae)"):
                self.vae = AutoencoderKL.from_pretrained(subfolder="vae", variant=variant,
                                                         torch_dtype=self.dtype, **source)
        with naming_load_errors(f"{teacher} (its unet)"):
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

        own_dim = getattr(self.unet.config, "time_cond_proj_dim", None)
        if own_dim:
            raise ConfigError(f"{self.path}: the teacher UNet already has a guidance embedding "
                              f"(time_cond_proj_dim={own_dim}), so it is a distilled student, not a "
                              "teacher; load the backbone from the original teacher and read the "
                              "student with load_student(path)")
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

    # ------------------------------------------------------------ a saved student

    def load_student(self, path: str | Path, *, lora: bool | None = None,
                     train_cond_proj: bool = True) -> nn.Module:
        """A trainable fp32 student read back from a distilled pipeline folder or a checkpoint.

        ``path`` is either

        - a pipeline folder as :meth:`save_pipeline` writes it: ``model_index.json`` and a
          ``unet/`` that has a guidance embedding (``time_cond_proj_dim``), an ``LCMScheduler``,
          or a student LoRA (``pytorch_lora_weights.safetensors``, or ``lora_w_embedded/`` for a
          w-conditioned one). The UNet is read with ``UNet2DConditionModel.from_pretrained``, as
          diffusers reads it; or
        - a training checkpoint folder ``checkpoint-N/`` of the ``lcd`` / ``rg-lcd`` recipes
          (its ``model.safetensors``; a LoRA checkpoint reads its ``lora_alpha`` from the run's
          ``config.json`` next to it).

        The student comes back as :meth:`build_student` and :meth:`add_lora` built it for
        training, on this backbone's device, in train mode: a full student with every weight
        trainable; a LoRA student as this teacher's weights plus its guidance embedding and
        adapters, only the adapters (and, with ``train_cond_proj``, the guidance embedding)
        trainable. ``lora=False`` returns a LoRA student merged into a plain UNet (every weight
        trainable), ``lora=True`` refuses a folder without a LoRA. A LoRA is checked against the
        merged UNet saved next to it, so a backbone loaded from another teacher is refused.

        Raises :class:`~rewardkit.errors.ConfigError`, naming ``path``, for anything else (a
        teacher folder, a run's output folder, a missing path) or weights that do not fit this
        backbone's teacher.
        """
        folder = Path(os.path.expanduser(str(path)))
        if not folder.is_dir():
            what = "is a file" if folder.exists() else "does not exist"
            raise ConfigError(f"load_student: '{path}' {what}; expected {STUDENT_PIPELINE} or "
                              f"{STUDENT_CHECKPOINT}")
        if (folder / CHECKPOINT_WEIGHTS).is_file():
            student = self._student_from_checkpoint(folder, lora, train_cond_proj)
        elif (folder / "model_index.json").is_file() and (folder / "unet" / "config.json").is_file():
            student = self._student_from_pipeline(folder, lora, train_cond_proj)
        else:
            inside = sorted(p.name + "/" for p in folder.iterdir() if p.is_dir() and (
                p.name == "pipeline" or _CHECKPOINT_NAME.match(p.name)))
            hint = f"; it holds {', '.join(inside)}: pass one of those" if inside else ""
            raise ConfigError(f"load_student: '{path}' is neither {STUDENT_PIPELINE} nor "
                              f"{STUDENT_CHECKPOINT}{hint}")
        student.to(self.device)
        student.train()
        if not getattr(student, "peft_config", None):
            student.requires_grad_(True)
        return student

    def _empty_student(self, time_cond_proj_dim: int | None) -> nn.Module:
        """A float32 UNet of the teacher's architecture with ``time_cond_proj_dim``, weights
        left as initialised (they are loaded next)."""
        from diffusers import UNet2DConditionModel

        return UNet2DConditionModel.from_config(
            {**dict(self.unet.config), "time_cond_proj_dim": time_cond_proj_dim})

    def _student_from_pipeline(self, folder: Path, lora: bool | None,
                               train_cond_proj: bool) -> nn.Module:
        from diffusers import UNet2DConditionModel

        dim = json.loads((folder / "unet" / "config.json").read_text()).get("time_cond_proj_dim")
        if (folder / W_EMBEDDED_LORA_DIR / LORA_WEIGHTS_FILE).is_file():
            lora_dir: Path | None = folder / W_EMBEDDED_LORA_DIR
        else:
            lora_dir = folder if (folder / LORA_WEIGHTS_FILE).is_file() else None
        scheduler_file = folder / "scheduler" / "scheduler_config.json"
        scheduler = (json.loads(scheduler_file.read_text()).get("_class_name")
                     if scheduler_file.is_file() else None)
        if not dim and lora_dir is None and scheduler != "LCMScheduler":
            raise ConfigError(f"load_student: '{folder}' is a teacher pipeline (its UNet has no "
                              "guidance embedding, it holds no student LoRA and its scheduler is "
                              f"{scheduler or 'missing'}, not LCMScheduler), not a distilled "
                              "student; start a new student from a teacher with build_student")
        if lora and lora_dir is None:
            raise ConfigError(f"load_student(lora=True): '{folder}' holds no student LoRA "
                              f"({LORA_WEIGHTS_FILE} or {W_EMBEDDED_LORA_DIR}/)")
        if lora_dir is not None and lora is not False:
            return self._student_from_lora(folder, lora_dir, dim, train_cond_proj)
        try:
            student = UNet2DConditionModel.from_pretrained(str(folder), subfolder="unet",
                                                           torch_dtype=torch.float32)
        except (OSError, ValueError, RuntimeError) as exc:
            raise ConfigError(f"load_student: the UNet of '{folder}' cannot be read "
                              f"({type(exc).__name__}: {str(exc)[:200]})") from None
        teacher = {k: tuple(v.shape) for k, v in self.unet.state_dict().items()
                   if not k.startswith("time_embedding.cond_proj.")}
        own = {k: tuple(v.shape) for k, v in student.state_dict().items()
               if not k.startswith("time_embedding.cond_proj.")}
        if own != teacher:
            differ = sorted(set(own.items()) ^ set(teacher.items()))
            raise ConfigError(f"load_student: the UNet in '{folder / 'unet'}' does not fit this "
                              f"backbone's teacher '{self.path}' ({len(differ)} tensor shapes "
                              f"differ, e.g. {differ[0][0]})")
        return student

    def _student_from_lora(self, folder: Path, lora_dir: Path, dim: int | None,
                           train_cond_proj: bool) -> nn.Module:
        from safetensors import safe_open
        from safetensors.torch import load_file

        weights = lora_dir / LORA_WEIGHTS_FILE
        try:
            with safe_open(str(weights), "pt") as handle:
                metadata = handle.metadata() or {}
            layers = load_file(str(weights))
        except Exception as exc:  # truncated or not safetensors
            raise ConfigError(f"load_student: '{weights}' cannot be read "
                              f"({type(exc).__name__}: {exc})") from None
        settings = {k.split(".", 1)[1]: v for k, v in
                    json.loads(metadata.get("lora_adapter_metadata", "{}")).items()
                    if k.startswith("unet.")}
        if "r" not in settings:
            raise ConfigError(f"load_student: '{weights}' has no LoRA settings (rank, alpha) in "
                              "its metadata, so it was not written by save_pipeline")
        student = self.build_student(time_cond_proj_dim=dim)  # this teacher's weights, fp32
        if dim:
            embedding_file = lora_dir / GUIDANCE_EMBEDDING_FILE
            if not embedding_file.is_file():
                raise ConfigError(f"load_student: '{lora_dir}' has no {GUIDANCE_EMBEDDING_FILE} "
                                  f"for the guidance embedding of its w-conditioned student")
            embedding = load_file(str(embedding_file))["time_embedding.cond_proj.weight"]
            with torch.no_grad():
                student.time_embedding.cond_proj.weight.copy_(embedding)
        student = self.add_lora(student, rank=int(settings["r"]), alpha=settings.get("lora_alpha"),
                                target_modules=settings.get("target_modules"),
                                train_cond_proj=train_cond_proj)
        adapter = next(iter(student.peft_config))
        state = {}
        for key, value in layers.items():
            if not key.startswith("unet.") or ".lora_" not in key:
                raise ConfigError(f"load_student: '{weights}' holds '{key}', not a UNet LoRA tensor")
            module, rest = key[len("unet."):].rsplit(".lora_", 1)
            which, param = rest.split(".", 1)
            state[f"{module}.lora_{which}.{adapter}.{param}"] = value
        expected = {k for k in student.state_dict() if ".lora_" in k}
        if set(state) != expected:
            differ = sorted(set(state) ^ expected)
            raise ConfigError(f"load_student: the LoRA in '{weights}' does not fit this "
                              f"backbone's teacher '{self.path}' ({len(differ)} tensors missing or "
                              f"extra, e.g. {differ[0]})")
        try:
            student.load_state_dict(state, strict=False)
        except RuntimeError as exc:
            raise ConfigError(f"load_student: the LoRA in '{weights}' does not fit this "
                              f"backbone's teacher '{self.path}' ({str(exc)[:200]})") from None
        self._check_lora_base(student, folder, lora_dir)
        return student

    def _check_lora_base(self, student: nn.Module, folder: Path, lora_dir: Path) -> None:
        """Refuse a LoRA whose base is not this teacher: the merged UNet saved next to it must
        equal this teacher's weights where no adapter is (``conv_in``) and teacher plus LoRA
        on the first adapted layer."""
        from peft.tuners.tuners_utils import BaseTunerLayer
        from safetensors import safe_open

        merged_file = folder / "unet" / "diffusion_pytorch_model.safetensors"
        if not merged_file.is_file():
            return
        name, layer = next((n, m) for n, m in student.named_modules()
                           if isinstance(m, BaseTunerLayer))
        with torch.no_grad():
            ours = layer.base_layer.weight.detach().clone()
            for adapter in layer.active_adapters:
                if adapter in layer.lora_A:
                    ours += layer.get_delta_weight(adapter).to(ours.dtype)
            with safe_open(str(merged_file), "pt") as handle:
                keys = set(handle.keys())
                pairs = [(key, student.state_dict()[key], handle.get_tensor(key))
                         for key in ("conv_in.weight",) if key in keys]
                if f"{name}.weight" in keys:
                    pairs.append((f"{name}.weight", ours, handle.get_tensor(f"{name}.weight")))
        for key, mine, saved in pairs:
            if mine.shape != saved.shape or not torch.allclose(mine.float().cpu(), saved.float(),
                                                                rtol=1e-4, atol=1e-5):
                raise ConfigError(f"load_student: the LoRA in '{lora_dir}' was not trained on "
                                  f"this backbone's teacher '{self.path}' (the merged UNet in "
                                  f"'{folder / 'unet'}' differs at {key}); load the backbone from "
                                  "the teacher the student was distilled from")

    def _student_from_checkpoint(self, folder: Path, lora: bool | None,
                                 train_cond_proj: bool) -> nn.Module:
        from safetensors.torch import load_file
        from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

        weights = folder / CHECKPOINT_WEIGHTS
        try:
            state = load_file(str(weights))
        except Exception as exc:  # truncated or not safetensors
            raise ConfigError(f"load_student: '{weights}' cannot be read "
                              f"({type(exc).__name__}: {exc})") from None
        for prefix in ("module.", "_orig_mod."):  # saved from a DDP- or compile-wrapped student
            consume_prefix_in_state_dict_if_present(state, prefix)
        embedding = state.get("time_embedding.cond_proj.weight")
        dim = int(embedding.shape[1]) if embedding is not None else None
        lora_keys = [k for k in state if ".lora_A." in k]
        if lora and not lora_keys:
            raise ConfigError(f"load_student(lora=True): '{folder}' holds a fully fine-tuned "
                              "student, not a LoRA")
        student = self._empty_student(dim)
        if lora_keys:
            run_config = folder.parent / "config.json"
            settings = json.loads(run_config.read_text()) if run_config.is_file() else {}
            if "lora_alpha" not in settings:
                raise ConfigError(f"load_student: '{folder}' holds a LoRA student, but no run "
                                  f"config next to it ('{run_config}') gives its lora_alpha; "
                                  "load the checkpoint from inside its run's output folder")
            student = self.add_lora(student, rank=int(state[lora_keys[0]].shape[0]),
                                    alpha=settings["lora_alpha"],
                                    target_modules=settings.get("lora_target_modules"),
                                    train_cond_proj=train_cond_proj)
        try:
            student.load_state_dict(state)
        except RuntimeError as exc:
            raise ConfigError(f"load_student: the weights in '{weights}' do not fit this "
                              f"backbone's teacher '{self.path}' ({str(exc)[:200]})") from None
        if lora_keys and lora is False:
            merged = self._empty_student(dim)
            merged.load_state_dict(merged_unet_state_dict(student))
            return merged
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
