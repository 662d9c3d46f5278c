"""Expert-scored candidate sets: held-out evidence that a proxy agrees with the expert RM.

A :class:`PreferenceSet` holds several candidate latents per prompt, each scored **once** by the
expert RM. Its pairs (two candidates of the same prompt whose expert scores differ) measure how
often a proxy orders them as the expert does (:func:`preference_accuracy`), overall and per pair
type:

- ``generated_vs_generated``: neither candidate is the prompt's ground-truth latent;
- ``generated_vs_ground_truth``: one of them is.

The candidates (:func:`build_preference_set`) are deliberately varied, so the set measures
whether the proxy has learned the expert's notion of quality rather than the one distribution
the training loop shows it: the ground-truth latent ``z0``; the teacher sampled with DDIM at
several step counts and guidance scales; the student at one step; and ``z0`` degraded with
Gaussian noise. The in-batch ``proxy_accuracy`` of the online update is measured on the very
candidates the proxy is about to train on (and that the student has just been pushed towards
the proxy on), so it is no evidence of learning; this set is built from data the proxy never
trains on, before training starts.

The same builder makes preference-pretraining data for ``lrm-pretrain`` (from training data).
Sets are saved as safetensors + JSON (:meth:`PreferenceSet.save`), never pickles.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..backbones.conditioning import Conditioning
from ..errors import ConfigError

GROUND_TRUTH = "ground-truth"
GEN_VS_GEN = "generated_vs_generated"
GEN_VS_GT = "generated_vs_ground_truth"
#: (steps, guidance scale) of the teacher's DDIM samples in a default set.
DEFAULT_TEACHER_SETTINGS: tuple[tuple[int, float], ...] = ((2, 1.0), (4, 7.5), (16, 1.5), (16, 7.5))
#: Noise levels (std of the added noise, in scaled-latent units) of the degraded ground truths.
DEFAULT_NOISE_LEVELS: tuple[float, ...] = (0.5,)
#: Expert score differences below this are ties and make no pair.
TIE_TOLERANCE = 1e-6
SET_WEIGHTS = "preference_set.safetensors"
SET_META = "preference_set.json"

#: ``expert(latents [B, C, h, w], captions) -> scores [B]`` (decoding is the caller's business).
ExpertFn = Callable[[torch.Tensor, Sequence[str]], torch.Tensor]


@dataclass
class PreferenceSet:
    """Candidate latents of ``P`` prompts, their expert scores and kinds.

    ``latents[n]`` (scaled latents) belongs to prompt ``prompt_index[n]`` (``captions[p]``,
    ``prompt_embeds[p]``); ``kinds[n]`` says how it was made (``"ground-truth"``,
    ``"teacher-ddim-4-cfg7.5"``, ``"student-lcm-1"``, ``"noised-gt-0.5"``); ``expert[n]`` is the
    expert RM's score.
    """

    latents: torch.Tensor
    prompt_embeds: torch.Tensor
    prompt_index: torch.Tensor
    captions: list[str]
    kinds: list[str]
    expert: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.latents.shape[0]
        if not (self.prompt_index.shape[0] == len(self.kinds) == self.expert.shape[0] == n):
            raise ConfigError(f"preference set: {n} latents but {self.prompt_index.shape[0]} "
                              f"prompt indices, {len(self.kinds)} kinds, {self.expert.shape[0]} "
                              "scores")
        if self.prompt_embeds.shape[0] != len(self.captions):
            raise ConfigError(f"preference set: {self.prompt_embeds.shape[0]} prompt embeddings "
                              f"for {len(self.captions)} captions")
        if not torch.isfinite(self.expert).all():
            raise ConfigError("preference set: the expert's scores contain NaN or inf")

    def __len__(self) -> int:
        return self.latents.shape[0]

    @property
    def num_prompts(self) -> int:
        return len(self.captions)

    def pairs(self) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """``(first, second, types)``: every same-prompt pair whose expert scores differ.

        ``first``/``second`` index :attr:`latents`; the expert prefers ``first`` when
        ``expert[first] > expert[second]`` (the order is the candidates' order, not the winner).
        """
        firsts: list[int] = []
        seconds: list[int] = []
        types: list[str] = []
        index = self.prompt_index.tolist()
        by_prompt: dict[int, list[int]] = {}
        for n, p in enumerate(index):
            by_prompt.setdefault(p, []).append(n)
        for members in by_prompt.values():
            for a_pos, a in enumerate(members):
                for b in members[a_pos + 1:]:
                    if abs(float(self.expert[a] - self.expert[b])) <= TIE_TOLERANCE:
                        continue
                    firsts.append(a)
                    seconds.append(b)
                    gt = GROUND_TRUTH in (self.kinds[a], self.kinds[b])
                    types.append(GEN_VS_GT if gt else GEN_VS_GEN)
        return torch.tensor(firsts, dtype=torch.long), torch.tensor(seconds, dtype=torch.long), types

    def subset(self, prompts: Sequence[int]) -> "PreferenceSet":
        """The candidates of the given prompts (re-indexed)."""
        keep_prompts = list(dict.fromkeys(int(p) for p in prompts))
        remap = {p: i for i, p in enumerate(keep_prompts)}
        rows = [n for n, p in enumerate(self.prompt_index.tolist()) if p in remap]
        rows_t = torch.tensor(rows, dtype=torch.long)
        return PreferenceSet(
            latents=self.latents[rows_t], prompt_embeds=self.prompt_embeds[keep_prompts],
            prompt_index=torch.tensor([remap[int(self.prompt_index[n])] for n in rows]),
            captions=[self.captions[p] for p in keep_prompts],
            kinds=[self.kinds[n] for n in rows], expert=self.expert[rows_t], meta=dict(self.meta))

    # -------------------------------------------------------------- persistence

    def save(self, directory: str | Path) -> Path:
        """Write ``preference_set.safetensors`` (tensors) and ``preference_set.json`` (the rest)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({"latents": self.latents.contiguous().cpu().float(),
                   "prompt_embeds": self.prompt_embeds.contiguous().cpu().float(),
                   "prompt_index": self.prompt_index.contiguous().cpu().long(),
                   "expert": self.expert.contiguous().cpu().float()},
                  str(directory / SET_WEIGHTS))
        (directory / SET_META).write_text(json.dumps(
            {"captions": self.captions, "kinds": self.kinds, "meta": self.meta}, indent=1))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "PreferenceSet":
        """Read :meth:`save` output; a missing or unreadable file is named in the error."""
        from safetensors.torch import load_file

        directory = Path(directory)
        weights, meta_path = directory / SET_WEIGHTS, directory / SET_META
        for path in (weights, meta_path):
            if not path.is_file():
                raise ConfigError(f"no preference set in '{directory}' (missing {path.name})")
        try:
            tensors = load_file(str(weights))
            meta = json.loads(meta_path.read_text())
        except Exception as error:  # corrupt or truncated
            raise ConfigError(f"preference set in '{directory}' is unreadable ({error}); "
                              "rebuild it") from None
        return cls(latents=tensors["latents"], prompt_embeds=tensors["prompt_embeds"],
                   prompt_index=tensors["prompt_index"], captions=list(meta["captions"]),
                   kinds=list(meta["kinds"]), expert=tensors["expert"],
                   meta=dict(meta.get("meta", {})))


def check_saved_set(key: str, folder: str, fix: str) -> None:
    """Before anything loads: config key ``key``'s ``folder`` holds a saved preference set
    (``fix`` says what to pass instead)."""
    if not (Path(os.path.expanduser(folder)) / SET_META).is_file():
        raise ConfigError(f"{key}: '{folder}' holds no saved preference set ({SET_META}); {fix}")


def load_for_teacher(key: str, folder: str, text_width: int) -> PreferenceSet:
    """The saved set of config key ``key``, refused when its prompt embeddings are not the
    teacher's ``text_width`` wide (a set exported with another teacher)."""
    pset = PreferenceSet.load(os.path.expanduser(folder))
    found = pset.prompt_embeds.shape[-1]
    if found != text_width:
        raise ConfigError(f"{key}: its prompt embeddings are {found}-wide but the teacher's are "
                          f"{text_width}; build it with this teacher (lrm-pretrain, or rewardkit "
                          "vote export --teacher)")
    return pset


def other_latent_size(latents: torch.Tensor, side: int) -> str | None:
    """``"HxW"`` of saved ``latents [..., h, w]`` when they are not ``side x side`` (a set or
    buffer made at another resolution than the run reusing it); ``None`` when they are."""
    height, width = (int(n) for n in latents.shape[-2:])
    return None if (height, width) == (side, side) else f"{height}x{width}"


# ---------------------------------------------------------------- measuring a proxy


@torch.no_grad()
def proxy_scores(proxy: torch.nn.Module, pset: PreferenceSet, batch_size: int = 256) -> torch.Tensor:
    """The proxy's scores ``[N]`` of every candidate (in eval mode; the mode is restored)."""
    device = next(proxy.parameters()).device
    was_training = proxy.training
    proxy.eval()
    try:
        out = []
        for start in range(0, len(pset), batch_size):
            rows = slice(start, start + batch_size)
            embeds = pset.prompt_embeds[pset.prompt_index[rows]]
            out.append(proxy(pset.latents[rows].to(device), embeds.to(device)).float().cpu())
    finally:
        proxy.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


def agreement(scores: torch.Tensor, expert: torch.Tensor, first: torch.Tensor,
              second: torch.Tensor) -> torch.Tensor:
    """Per pair: 1 where ``scores`` orders the pair as ``expert`` does (a proxy tie counts 0.5)."""
    expert_sign = torch.sign(expert[first] - expert[second])
    proxy_sign = torch.sign(scores[first] - scores[second])
    return torch.where(proxy_sign == 0, torch.full_like(expert_sign, 0.5),
                       (proxy_sign == expert_sign).float())


def preference_accuracy(proxy: torch.nn.Module, pset: PreferenceSet, prefix: str = "proxy_heldout_accuracy",
                        batch_size: int = 256) -> dict[str, float]:
    """Pairwise agreement of ``proxy`` with the expert on ``pset``: overall and per pair type.

    Keys: ``{prefix}``, ``{prefix}_generated_vs_generated``, ``{prefix}_generated_vs_ground_truth``
    (a type without pairs is left out).
    """
    return scores_accuracy(proxy_scores(proxy, pset, batch_size), pset, prefix)


def scores_accuracy(scores: torch.Tensor, pset: PreferenceSet,
                    prefix: str = "proxy_heldout_accuracy") -> dict[str, float]:
    """:func:`preference_accuracy` of given per-candidate ``scores`` ``[N]`` (e.g. an ensemble's)."""
    first, second, types = pset.pairs()
    if first.numel() == 0:
        raise ConfigError("preference set has no pairs with different expert scores; it cannot "
                          "measure a proxy")
    hits = agreement(scores, pset.expert.float(), first, second)
    result = {prefix: float(hits.mean())}
    kinds = torch.tensor([t == GEN_VS_GT for t in types])
    for name, mask in ((GEN_VS_GEN, ~kinds), (GEN_VS_GT, kinds)):
        if mask.any():
            result[f"{prefix}_{name}"] = float(hits[mask].mean())
    return result


# ---------------------------------------------------------------- building a set


@torch.no_grad()
def teacher_ddim_latents(backbone: Any, cond: Conditioning, uncond: Conditioning,
                         steps: int, guidance_scale: float, generator: torch.Generator,
                         latent_size: int | Sequence[int] | None = None) -> torch.Tensor:
    """Scaled latents sampled from the frozen teacher with diffusers' ``DDIMScheduler`` + CFG
    (``cond``/``uncond``: the prompts' and the empty prompt's conditioning) at ``latent_size``
    (a side or ``(h, w)``; default: the teacher's native ``sample_size``). The scheduler is the
    backbone's ``teacher_scheduler()`` (a flow teacher's: ``FlowMatchEulerDiscreteScheduler``)."""
    from ..sampling import latent_shape

    make_scheduler = getattr(backbone, "teacher_scheduler", None)
    if make_scheduler is None:  # a duck-typed backbone without the method
        from diffusers import DDIMScheduler

        scheduler = DDIMScheduler.from_config(backbone.noise_scheduler.config)
    else:
        scheduler = make_scheduler()
    device = cond.prompt_embeds.device
    scheduler.set_timesteps(steps, device=device)
    unet = backbone.unet
    dtype = next(unet.parameters()).dtype
    batch = len(cond)
    height, width = latent_shape(backbone, latent_size)
    latents = torch.randn((batch, backbone.latent_channels, height, width), generator=generator)
    latents = latents * getattr(scheduler, "init_noise_sigma", 1.0)  # flow schedulers have none
    latents = latents.to(device=device, dtype=dtype)
    both = (Conditioning.cat([uncond, cond]) if guidance_scale != 1.0 else cond).to(dtype=dtype)
    for t in scheduler.timesteps:
        model_in = torch.cat([latents, latents]) if guidance_scale != 1.0 else latents
        out = backbone.predict(unet, model_in, t.expand(model_in.shape[0]).to(device), both)
        if guidance_scale != 1.0:
            uncond_out, cond_out = out.chunk(2)
            out = uncond_out + guidance_scale * (cond_out - uncond_out)
        latents = scheduler.step(out, t, latents, return_dict=False)[0].to(dtype)
    return latents.float()


def noised_latents(latents: torch.Tensor, level: float, generator: torch.Generator) -> torch.Tensor:
    """``z0 + level * eps``: a ground truth degraded with Gaussian noise."""
    noise = torch.randn(latents.shape, generator=generator).to(latents.device, latents.dtype)
    return latents + level * noise


@torch.no_grad()
def build_preference_set(backbone: Any, expert: ExpertFn, latents: torch.Tensor,
                         captions: Sequence[str], *, student: torch.nn.Module | None = None,
                         student_guidance_scale: float = 7.5, time_cond_proj_dim: int | None = None,
                         student_steps: Sequence[int] = (1,),
                         teacher_settings: Sequence[tuple[int, float]] = DEFAULT_TEACHER_SETTINGS,
                         noise_levels: Sequence[float] = DEFAULT_NOISE_LEVELS,
                         seed: int = 0, batch_size: int = 32,
                         progress: Callable[[str], None] | None = None) -> PreferenceSet:
    """Candidates for every prompt of ``(latents, captions)``, scored once by ``expert``.

    ``latents`` are the prompts' ground-truth scaled latents ``[P, C, h, w]``. Each prompt gets:
    its ground truth; one DDIM sample of the teacher per ``(steps, guidance)`` in
    ``teacher_settings``; one LCM sample of ``student`` per entry of ``student_steps`` (if a
    student is given); one noised ground truth per entry of ``noise_levels``. Every sample is
    drawn at the ground truths' ``h x w`` (the training resolution, which need not be the
    teacher's native one), so all candidates of a prompt are comparable. All sampling uses a
    generator seeded with ``seed`` (not the training stream).
    """
    from ..sampling import sample_lcm_latents

    if latents.shape[0] != len(captions) or not captions:
        raise ConfigError(f"preference set needs one caption per latent; got {latents.shape[0]} "
                          f"latents and {len(captions)} captions")
    generator = torch.Generator().manual_seed(seed)
    device = backbone.device
    captions = list(captions)
    count = len(captions)
    cond = Conditioning.cat([backbone.encode_prompts(captions[i:i + batch_size]).float()
                             for i in range(0, count, batch_size)])
    prompt_embeds = backbone.proxy_text(cond)  # what the proxies read
    gt = latents.float().to(device)
    size = tuple(gt.shape[-2:])  # candidates are sampled at the ground truths' size
    groups: list[tuple[str, torch.Tensor]] = [(GROUND_TRUTH, gt)]

    def chunked(make: Callable[[slice], torch.Tensor]) -> torch.Tensor:
        return torch.cat([make(slice(i, i + batch_size)) for i in range(0, count, batch_size)])

    for steps, scale in teacher_settings:
        if progress:
            progress(f"teacher DDIM {steps} steps, guidance {scale}")
        groups.append((f"teacher-ddim-{steps}-cfg{scale:g}", chunked(lambda rows: teacher_ddim_latents(
            backbone, cond.index(rows).to(device),
            backbone.empty_conditioning(len(captions[rows])).float(), steps, scale, generator,
            latent_size=size))))
    if student is not None:
        for steps in student_steps:
            if progress:
                progress(f"student LCM {steps} step(s)")
            groups.append((f"student-lcm-{steps}", chunked(lambda rows: sample_lcm_latents(
                backbone, student, cond.index(rows).to(device), steps=steps,
                seed=int(torch.randint(0, 2**31 - 1, (1,), generator=generator)),
                guidance_scale=student_guidance_scale, time_cond_proj_dim=time_cond_proj_dim,
                latent_size=size))))
    for level in noise_levels:
        groups.append((f"noised-gt-{level:g}", noised_latents(gt, level, generator)))

    all_latents = torch.cat([g.float().cpu() for _, g in groups])
    kinds = [kind for kind, g in groups for _ in range(g.shape[0])]
    index = torch.arange(count).repeat(len(groups))
    all_captions = [captions[int(i)] for i in index]
    if progress:
        progress(f"expert scores of {all_latents.shape[0]} candidates")
    with torch.no_grad():
        scores = torch.cat([expert(all_latents[i:i + batch_size].to(device),
                                   all_captions[i:i + batch_size]).detach().float().cpu().reshape(-1)
                            for i in range(0, all_latents.shape[0], batch_size)])
    if not torch.isfinite(scores).all():
        bad = sorted({kinds[n] for n in torch.nonzero(~torch.isfinite(scores)).flatten().tolist()})
        raise ConfigError(f"the expert RM returned NaN or inf for preference-set candidates of "
                          f"kind {', '.join(bad)}; check the reward model")
    return PreferenceSet(latents=all_latents, prompt_embeds=prompt_embeds.cpu(), prompt_index=index,
                         captions=captions, kinds=kinds, expert=scores,
                         meta={"seed": seed, "teacher_settings": [list(s) for s in teacher_settings],
                               "noise_levels": list(noise_levels),
                               "student_steps": list(student_steps) if student is not None else []})


__all__ = ["PreferenceSet", "build_preference_set", "check_saved_set", "load_for_teacher",
           "preference_accuracy", "proxy_scores", "agreement", "scores_accuracy", "other_latent_size", "teacher_ddim_latents", "GEN_VS_GEN", "GEN_VS_GT", "GROUND_TRUTH"]
