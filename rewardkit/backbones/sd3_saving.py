"""Saving an SD3 student as a diffusers pipeline folder, and reading one (or a checkpoint) back.

The folder :func:`save_sd3_pipeline` writes is a complete ``StableDiffusion3Pipeline``
(``model_index.json``, ``transformer/`` with any LoRA merged in, the teacher's VAE, text encoders
and tokenizers, and its ``FlowMatchEulerDiscreteScheduler``), so::

    pipe = DiffusionPipeline.from_pretrained("out")     # text_encoder_3=None, tokenizer_3=None
    pipe("a photo of a cat", num_inference_steps=4, guidance_scale=1.0)   # when trained without T5

samples the student with no rewardkit code (a student trained with another
``max_sequence_length`` than diffusers' 256 records it in ``sampling.json``, see
:mod:`rewardkit.call_defaults`: pass it to the call). ``transformer_target/`` holds the EMA target of full
fine-tuning. A LoRA student also gets ``pytorch_lora_weights.safetensors`` (peft key format,
alpha in the metadata): the student has no guidance embedding, so plain
``teacher_pipe.load_lora_weights(out)`` reproduces the merged transformer.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..call_defaults import DIFFUSERS_MAX_SEQUENCE_LENGTH, write_call_defaults
from ..errors import ConfigError
from ..files import replace_path
from ..models import unwrap_model
from .stable_diffusion import CHECKPOINT_WEIGHTS, LORA_WEIGHTS_FILE, merged_unet_state_dict

#: The text parts a saved pipeline holds (T5's only when the teacher has it).
TEXT_PARTS = ("text_encoder", "text_encoder_2", "text_encoder_3", "tokenizer", "tokenizer_2",
              "tokenizer_3")


def _save_merged(model: nn.Module, folder: Path) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    model.save_config(folder)
    save_file(merged_unet_state_dict(model), str(folder / "diffusion_pytorch_model.safetensors"),
              metadata={"format": "pt"})


def save_sd3_pipeline(backbone: Any, student: nn.Module, output_dir: str | Path,
                      lora: bool | None = None, target: nn.Module | None = None) -> Path:
    """Write the student of ``backbone`` (an SD3 backbone) as a pipeline folder at ``output_dir``.

    ``lora`` (default: whenever the student has peft adapters) adds the LoRA file; ``target``
    goes to ``transformer_target/``. The folder is written next to ``output_dir`` and renamed
    into place, so a crash never leaves a half-written pipeline; an existing one is replaced.
    """
    from diffusers import StableDiffusion3Pipeline
    from peft.utils import get_peft_model_state_dict

    output_dir = Path(output_dir)
    student = unwrap_model(student)
    has_lora = bool(getattr(student, "peft_config", None))
    lora = has_lora if lora is None else lora
    if lora and not has_lora:
        raise ConfigError("save_pipeline(lora=True): the student has no LoRA adapters")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = output_dir.parent / f".{output_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        pipe = backbone.pipeline(student, backbone.lcm_scheduler())
        pipe.save_config(tmp)  # model_index.json (T5 as [null, null] when it was dropped)
        backbone.vae.save_pretrained(tmp / "vae", safe_serialization=True)
        for name in TEXT_PARTS:
            part = getattr(backbone, name)
            if part is None:
                continue
            if name.startswith("tokenizer"):
                part.save_pretrained(tmp / name)
            else:
                part.save_pretrained(tmp / name, safe_serialization=True)
        pipe.scheduler.save_pretrained(tmp / "scheduler")
        if backbone.max_sequence_length != DIFFUSERS_MAX_SEQUENCE_LENGTH:
            write_call_defaults(tmp, {"max_sequence_length": backbone.max_sequence_length})
        _save_merged(student, tmp / "transformer")
        if target is not None:
            _save_merged(unwrap_model(target), tmp / backbone.target_dir)
        if lora:
            adapter = next(iter(student.peft_config))
            layers = {k: v.detach().to("cpu").contiguous() for k, v in
                      get_peft_model_state_dict(student, adapter_name=adapter).items()}
            StableDiffusion3Pipeline.save_lora_weights(
                tmp, transformer_lora_layers=layers, weight_name=LORA_WEIGHTS_FILE,
                safe_serialization=True,
                transformer_lora_adapter_metadata=student.peft_config[adapter].to_dict())
        replace_path(tmp, output_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return output_dir


def load_sd3_student(backbone: Any, path: str | Path, lora: bool | None = None) -> nn.Module:
    """A trainable fp32 student of ``backbone`` read back from ``path``: a pipeline folder
    :func:`save_sd3_pipeline` wrote (its ``transformer/``, or this teacher plus its LoRA) or a
    training checkpoint ``checkpoint-N/`` (``model.safetensors``; a LoRA one reads its rank from
    the weights and its alpha from the run's ``config.json``). ``lora=False`` merges a LoRA,
    ``True`` insists on one. Anything else raises :class:`~rewardkit.errors.ConfigError` naming
    ``path``."""
    folder = Path(os.path.expanduser(str(path)))
    if (folder / CHECKPOINT_WEIGHTS).is_file():
        student = _from_checkpoint(backbone, folder, lora)
    elif ((folder / "model_index.json").is_file()
          and (folder / "transformer" / "config.json").is_file()):
        student = _from_pipeline(backbone, folder, lora)
    else:
        raise ConfigError(f"load_student: '{path}' is neither an SD3 pipeline folder "
                          "(model_index.json and transformer/) nor a training checkpoint "
                          "(checkpoint-N/ with model.safetensors)")
    student.to(backbone.device)
    student.train()
    if not getattr(student, "peft_config", None):
        student.requires_grad_(True)
    return student


def _load_state(student: nn.Module, state: dict, where: Path, strict: bool = True) -> None:
    try:
        student.load_state_dict(state, strict=strict)
    except RuntimeError as exc:
        raise ConfigError(f"load_student: the weights in '{where}' do not fit the teacher's "
                          f"transformer ({str(exc)[:200]})") from None


def _merged(backbone: Any, student: nn.Module) -> nn.Module:
    merged = backbone.build_student()
    merged.load_state_dict(merged_unet_state_dict(student))
    return merged


def _from_checkpoint(backbone: Any, folder: Path, lora: bool | None) -> nn.Module:
    from safetensors.torch import load_file
    from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

    weights = folder / CHECKPOINT_WEIGHTS
    try:
        state = load_file(str(weights))
    except Exception as exc:  # truncated or not safetensors
        raise ConfigError(f"load_student: '{weights}' cannot be read "
                          f"({type(exc).__name__}: {exc})") from None
    for prefix in ("module.", "_orig_mod."):
        consume_prefix_in_state_dict_if_present(state, prefix)
    lora_keys = [k for k in state if ".lora_A." in k]
    if lora and not lora_keys:
        raise ConfigError(f"load_student(lora=True): '{folder}' holds a fully fine-tuned student")
    student = backbone.build_student()
    if lora_keys:
        run_config = folder.parent / "config.json"
        settings = json.loads(run_config.read_text()) if run_config.is_file() else {}
        if "lora_alpha" not in settings:
            raise ConfigError(f"load_student: '{folder}' holds a LoRA student, but no run config "
                              f"next to it ('{run_config}') gives its lora_alpha")
        student = backbone.add_lora(student, rank=int(state[lora_keys[0]].shape[0]),
                                    alpha=settings["lora_alpha"],
                                    target_modules=settings.get("lora_target_modules"))
    _load_state(student, state, weights)
    return _merged(backbone, student) if lora_keys and lora is False else student


def _from_pipeline(backbone: Any, folder: Path, lora: bool | None) -> nn.Module:
    from diffusers import SD3Transformer2DModel
    from safetensors import safe_open
    from safetensors.torch import load_file

    lora_file = folder / LORA_WEIGHTS_FILE
    if lora and not lora_file.is_file():
        raise ConfigError(f"load_student(lora=True): '{folder}' holds no {LORA_WEIGHTS_FILE}")
    if lora_file.is_file() and lora is not False:
        with safe_open(str(lora_file), "pt") as handle:
            metadata = handle.metadata() or {}
        settings = {k.split(".", 1)[1]: v for k, v in
                    json.loads(metadata.get("lora_adapter_metadata", "{}")).items()
                    if k.startswith("transformer.")}
        if "r" not in settings:
            raise ConfigError(f"load_student: '{lora_file}' has no LoRA settings (rank, alpha) "
                              "in its metadata, so it was not written by save_pipeline")
        student = backbone.add_lora(backbone.build_student(), rank=int(settings["r"]),
                                    alpha=settings.get("lora_alpha"),
                                    target_modules=settings.get("target_modules"))
        adapter = next(iter(student.peft_config))
        state = {}
        for key, value in load_file(str(lora_file)).items():
            module, rest = key[len("transformer."):].rsplit(".lora_", 1)
            which, param = rest.split(".", 1)
            state[f"{module}.lora_{which}.{adapter}.{param}"] = value
        _load_state(student, state, lora_file, strict=False)
        return student
    try:
        student = SD3Transformer2DModel.from_pretrained(str(folder), subfolder="transformer",
                                                        torch_dtype=torch.float32)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"load_student: the transformer of '{folder}' cannot be read "
                          f"({type(exc).__name__}: {str(exc)[:200]})") from None
    teacher = {k: tuple(v.shape) for k, v in backbone.transformer.state_dict().items()}
    if {k: tuple(v.shape) for k, v in student.state_dict().items()} != teacher:
        raise ConfigError(f"load_student: the transformer in '{folder / 'transformer'}' does not "
                          f"fit this backbone's teacher '{backbone.path}'")
    return student


__all__ = ["save_sd3_pipeline", "load_sd3_student"]
