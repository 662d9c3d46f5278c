"""``rewardkit vote export``: the votes as a preference set a latent proxy RM learns from.

The set is a :class:`~rewardkit.proxies.preference_set.PreferenceSet` (safetensors + JSON, what
``lrm-pretrain``'s ``preference_set`` key and ``rg-lcd``'s ``proxy_rehearsal_set`` read). Each
voted pair becomes one prompt group with two candidates, the two images encoded to scaled
latents by the teacher's VAE; their "expert" scores are the raters' shares: the share of votes
for ``a`` (a tie half) and one minus it. A pair the raters split evenly, or only tied, has no
preferred side and is left out. Pairs are kept apart even when they share a prompt, so a latent
is only ever compared with the image it was shown beside.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..errors import ConfigError
from .images import load_images, vote_image
from .stats import OUTCOME, counted

STUDY_FILE = "study.json"


@dataclass
class HumanPair:
    """One voted pair: its prompt, images, and the share of votes for ``a`` (ties half)."""

    prompt: str
    image_a: Path
    image_b: Path
    share_a: float
    votes: int
    model_a: str
    model_b: str


def human_pairs(votes_path: str | Path, votes: Sequence[dict[str, Any]],
                criterion: str = "overall") -> list[HumanPair]:
    """The pairs with a preferred side under ``criterion``, in the order first voted."""
    groups: dict[tuple[str, Any], list[dict[str, Any]]] = {}
    for vote in counted(votes):
        if vote["criterion"] == criterion:
            groups.setdefault((vote["study"], vote["pair"]), []).append(vote)
    pairs = []
    for group in groups.values():
        share = sum(OUTCOME[v["winner"]] for v in group) / len(group)
        if share == 0.5:
            continue
        first = group[0]
        pairs.append(HumanPair(first["prompt"], vote_image(votes_path, first, "a"),
                               vote_image(votes_path, first, "b"), share, len(group),
                               first["model_a"], first["model_b"]))
    return pairs


def study_teacher(votes_path: str | Path, votes: Sequence[dict[str, Any]]) -> str | None:
    """The teacher of the votes' study, read from the ``study.json`` beside its images
    (``IMAGES/images/<label>/steps-N/i.png``), or ``None`` when there is none."""
    from .study import Study

    for vote in votes[:1]:
        for folder in vote_image(votes_path, vote, "a").parents:
            if (folder / STUDY_FILE).is_file():
                try:
                    arms = Study.load(folder).arms
                except ConfigError:
                    return None
                return next((arm.location for arm in arms
                             if arm.kind == "teacher" and arm.location), None)
    return None


@torch.no_grad()
def encode_images(backbone: Any, paths: Sequence[Path], resolution: int | None,
                  generator: torch.Generator, batch_size: int = 16) -> torch.Tensor:
    """Scaled latents ``[N, C, h, w]`` (CPU, fp32) of the images at ``paths``, resized to
    ``resolution`` when given (bicubic, as the data engine reads training images)."""
    import torch.nn.functional as F

    out = []
    for start in range(0, len(paths), batch_size):
        pixels = load_images(paths[start:start + batch_size])
        if resolution is not None and tuple(pixels.shape[-2:]) != (resolution, resolution):
            pixels = F.interpolate(pixels, size=(resolution, resolution), mode="bicubic",
                                   align_corners=False).clamp(0, 1)
        latents = backbone.encode_images(pixels.to(backbone.device) * 2 - 1, generator=generator)
        out.append(latents.float().cpu())
    return torch.cat(out)


@torch.no_grad()
def votes_to_preference_set(votes_path: str | Path, votes: Sequence[dict[str, Any]],
                            backbone: Any, criterion: str = "overall",
                            resolution: int | None = None, seed: int = 0, batch_size: int = 16,
                            progress: Callable[[str], None] | None = None) -> Any:
    """The :class:`~rewardkit.proxies.preference_set.PreferenceSet` of the votes (see the
    module docstring), its latents and prompt embeddings made by ``backbone``."""
    from ..backbones.conditioning import Conditioning
    from ..proxies.preference_set import PreferenceSet

    criteria = sorted({v["criterion"] for v in votes})
    if criterion not in criteria:
        raise ConfigError(f"--criterion {criterion!r}: the votes answer {', '.join(criteria)}")
    pairs = human_pairs(votes_path, votes, criterion)
    if not pairs:
        raise ConfigError(f"no voted pair has a preferred side under {criterion!r} (every pair "
                          "was tied, skipped or split evenly); a preference set needs at least one")
    if progress:
        progress(f"encoding {len(pairs)} voted pairs")
    generator = torch.Generator().manual_seed(seed)
    latents_a = encode_images(backbone, [p.image_a for p in pairs], resolution, generator, batch_size)
    latents_b = encode_images(backbone, [p.image_b for p in pairs], resolution, generator, batch_size)
    if latents_a.shape != latents_b.shape:
        raise ConfigError(f"the two models' images encode to latents of different sizes "
                          f"({tuple(latents_a.shape[-2:])} and {tuple(latents_b.shape[-2:])}); "
                          "pass --resolution to bring both to one size")
    captions = [p.prompt for p in pairs]
    cond = Conditioning.cat([backbone.encode_prompts(captions[i:i + batch_size]).float()
                             for i in range(0, len(captions), batch_size)])
    count = len(pairs)
    shares = torch.tensor([p.share_a for p in pairs], dtype=torch.float32)
    return PreferenceSet(
        latents=torch.cat([latents_a, latents_b]),
        prompt_embeds=backbone.proxy_text(cond).float().cpu(),
        prompt_index=torch.arange(count).repeat(2),
        captions=captions,
        kinds=[f"a: {p.model_a}" for p in pairs] + [f"b: {p.model_b}" for p in pairs],
        expert=torch.cat([shares, 1 - shares]),
        meta={"source": "rewardkit vote export", "votes_file": str(votes_path),
              "criterion": criterion, "pairs": count, "votes": sum(p.votes for p in pairs),
              "expert": "share of the raters' votes for the image (a tie counts half)",
              "resolution": resolution, "seed": seed})


__all__ = ["HumanPair", "encode_images", "human_pairs", "study_teacher",
           "votes_to_preference_set"]
