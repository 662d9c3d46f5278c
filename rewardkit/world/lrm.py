"""The world's pretrained latent proxy RM: ``lrm-pretrain`` on world data with ``world-judge``.

``rewardkit world build`` trains it after the teacher (its latents and prompt embeddings come
from that teacher's VAE and text encoder) and ships it as the asset ``lrm``; the default
``rewardkit run rg-lcd`` starts its LRM from it. Two stages, as ``lrm-pretrain`` runs them:
contrastive (multi-positive InfoNCE) on ``world:train`` (latent, caption) pairs, then
Bradley-Terry pairs on a preference set of ``world:train`` prompts scored once by the judge.
Its held-out accuracy is measured on ``world:validation`` candidates; neither the judge nor the
test prompts are touched.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

#: The LRM of the world: small, for 8x8x4 latents and the world's 32-wide prompt embeddings.
WORLD_LRM_PARAMS: dict[str, Any] = {
    "embed_dim": 64, "image_widths": [32, 64], "blocks_per_stage": 1,
    "text_width": 64, "text_depth": 1, "text_heads": 4, "trainable": "all",
}

#: The diffusion-native LRM of the world (``lrm-unet``): the teacher's encoder, world-sized heads.
WORLD_UNET_LRM_PARAMS: dict[str, Any] = {
    "embed_dim": 64, "text_width": 64, "text_depth": 1, "text_heads": 4, "trainable": "all",
}

#: World-sized parameters of the built-in proxies (another proxy keeps its own defaults).
PROXY_PARAMS_FOR_WORLD: dict[str, dict[str, Any]] = {
    "lrm": WORLD_LRM_PARAMS, "lrm-unet": WORLD_UNET_LRM_PARAMS,
}


def proxy_params_for_world(proxy: str) -> dict[str, Any]:
    """``proxy_params`` that size ``proxy`` for the world (empty for a third-party proxy)."""
    return dict(PROXY_PARAMS_FOR_WORLD.get(proxy, {}))


def world_lrm_overrides(teacher: str | Path, output_dir: str | Path, *, contrastive_steps: int,
                        preference_prompts: int, preference_steps: int, eval_prompts: int,
                        seed: int = 0, proxy: str = "lrm") -> dict[str, Any]:
    """``lrm-pretrain`` config values for the world (every one an ordinary recipe key).

    ``lrm-unet`` skips the contrastive stage: its image side is the teacher's text-aligned
    encoder, and it has no prompt-free image embedding to contrast.
    """
    if proxy == "lrm-unet":
        contrastive_steps = 0
    return {
        "pretrained_teacher_model": str(teacher),
        "train_shards_path_or_url": "world:train",
        "output_dir": str(output_dir),
        "resolution": 32,
        "proxy": proxy,
        "proxy_params": proxy_params_for_world(proxy),
        "train_batch_size": 64,
        "contrastive_steps": contrastive_steps,
        "learning_rate": 1e-3,
        "lr_warmup_steps": 20,
        "reward": "world-judge",
        "preference_num_prompts": preference_prompts,
        "preference_steps": preference_steps,
        "preference_batch_size": 256,
        "preference_learning_rate": 1e-3,
        "preference_build_batch_size": 64,
        "eval_shards_path_or_url": "world:validation",
        "eval_num_prompts": eval_prompts,
        "validation_steps": max(contrastive_steps, preference_steps, 1),
        "checkpointing_steps": 0,
        "seed": seed,
        "report_to": "none",
    }


def pretrain_world_lrm(teacher: str | Path, out: str | Path, work: str | Path, *,
                       contrastive_steps: int, preference_prompts: int, preference_steps: int,
                       eval_prompts: int, seed: int = 0, progress: bool = False) -> dict[str, Any]:
    """Pretrain the world LRM into ``out`` (a ``save_pretrained`` folder, plus the expert-scored
    ``preference_set/`` it was trained on, for rg-lcd's ``proxy_rehearsal_set``); returns its
    summary.

    ``work`` holds the run (metrics, preference sets) and is removed afterwards. The summary has
    the steps and the held-out accuracy measured at the end (``proxy_heldout_accuracy*``).
    """
    from ..recipes.lrm_pretrain import PREFERENCE_SET_DIR, PROXY_DIR, LRMPretrainRecipe
    from ..recipes.lrm_pretrain_config import LRMPretrainConfig
    from ..config import load_config
    from ..training.metrics import read_metrics

    work = Path(work)
    overrides = world_lrm_overrides(
        teacher, work, contrastive_steps=contrastive_steps, preference_prompts=preference_prompts,
        preference_steps=preference_steps, eval_prompts=eval_prompts, seed=seed)
    overrides["overwrite_output_dir"] = True  # ``work`` is this function's scratch folder
    saved = LRMPretrainRecipe(load_config(LRMPretrainConfig, None, overrides)).run(
        progress=progress) / PROXY_DIR
    rows = [r for r in read_metrics(work / "metrics.jsonl") if "proxy_heldout_accuracy" in r]
    summary: dict[str, Any] = {
        "contrastive_steps": contrastive_steps, "preference_prompts": preference_prompts,
        "preference_steps": preference_steps, "eval_prompts": eval_prompts,
        "heldout": {k: round(v, 4) for k, v in (rows[-1] if rows else {}).items()
                    if k.startswith("proxy_heldout_accuracy")},
        "heldout_before": {k: round(v, 4) for k, v in (rows[0] if rows else {}).items()
                           if k.startswith("proxy_heldout_accuracy")},
    }
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(saved, out)
    # the expert-scored training pairs ship too: the default run rehearses them online
    shutil.copytree(work / PREFERENCE_SET_DIR, out / PREFERENCE_SET_DIR)
    (out / "pretrain.json").write_text(json.dumps(summary, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return summary
