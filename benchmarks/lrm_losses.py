"""Which offline training signal makes the world LRM generalise? Loss variants over seeds.

Trains the world's LRM (``WORLD_LRM_PARAMS``, from a random init) on a fixed expert-scored
preference set (default: the shipped ``lrm/preference_set``, 512 ``world:train`` prompts
x 6 judged candidates) and measures pairwise agreement with the judge on a held-out set it never
sees (default: the held-out set a default ``rewardkit run rg-lcd`` writes to
``rg-lcd-world/proxy_heldout``, 64 ``world:validation`` prompts). Variants:

- ``bt``: Bradley-Terry on hard labels, ``BCE(s * (r_a - r_b), 1[e_a > e_b])`` (what
  ``lrm-pretrain``'s preference stage does);
- ``soft``: the same with soft labels ``sigmoid((e_a - e_b) / T)``, so near-ties count less;
- ``regression``: ``bt`` plus ``MSE(r, e)`` on each candidate's cosine (a pointwise term that
  compares candidates across prompts too);
- ``ema``: ``bt``, evaluated with an exponential moving average of the weights (decay 0.99);
- ``noise``: ``bt`` on latents with Gaussian noise of 0.1 x their std added (augmentation);
- ``all``: ``soft`` + ``regression`` + ``ema``;
- ``small``: ``bt`` with an LRM of half the widths (does less capacity generalise better on the
  judge's near-ties?);
- ``renders``: ``bt``, after a first stage of ``--renders-steps`` steps of ``bt`` + the pointwise
  term on many more judged latents: per ``world:train`` prompt (``--renders`` of them, drawn
  with another seed than the preference set's) the VAE-encoded render and five spoiled copies
  of it (noise, blur, a pattern, a colour cast), each scored by the judge on its decoded image
  (a latent analogue of ``world-scorer``'s 12,000 judged images).

Prints, per variant, mean ± std over seeds of the held-out accuracy overall, on
generated-vs-ground-truth pairs and on the hardest pairs (the ground truth against the two
16-step teacher samples), after ``--steps`` steps of ``--batch`` pairs (lr 1e-3, AdamW).

    python benchmarks/lrm_losses.py --heldout rg-lcd-world/proxy_heldout --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

VARIANTS = {
    "bt": {},
    "soft": {"soft": 0.05},
    "regression": {"regression": 1.0},
    "ema": {"ema": 0.99},
    "noise": {"noise": 0.1},
    "all": {"soft": 0.05, "regression": 1.0, "ema": 0.99},
    "small": {"lrm_params": {"embed_dim": 32, "image_widths": [16, 32], "text_width": 32}},
    "renders": {"first_stage": "renders"},
}
DEFAULT_TRAIN = Path(__file__).resolve().parents[1] / "rewardkit/world/assets/lrm/preference_set"
TEACHER = Path(__file__).resolve().parents[1] / "rewardkit/world/assets/teacher"


def common_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options every preference-set benchmark here shares: the sets, seeds, steps, batch,
    threads and the JSON output."""
    parser.add_argument("--train", type=Path, default=DEFAULT_TRAIN)
    parser.add_argument("--heldout", type=Path, required=True,
                        help="a held-out preference set (a run's proxy_heldout/)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    return parser


def world_vae():
    """The world teacher's VAE (the one the world's latents and the judge's images come from)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(TEACHER, subfolder="vae").eval()


@torch.no_grad()
def decode(vae, pset, batch: int = 256) -> torch.Tensor:
    """Images ``[N, 3, H, W]`` in [0, 1] of a preference set's latents."""
    chunks = [vae.decode(pset.latents[i:i + batch] / vae.config.scaling_factor).sample
              for i in range(0, len(pset), batch)]
    return (torch.cat(chunks) / 2 + 0.5).clamp(0, 1)


def pair_masks(pset, first, second, types):
    """Boolean masks over the pairs: generated-vs-ground-truth, and the ground truth against a
    16-step teacher sample (the hardest kind)."""
    from rewardkit.proxies.preference_set import GEN_VS_GT

    with_gt = [kind == GEN_VS_GT for kind in types]
    hardest = [gt and any(pset.kinds[k].startswith("teacher-ddim-16") for k in (i, j))
               for gt, i, j in zip(with_gt, first.tolist(), second.tolist())]
    return torch.tensor(with_gt), torch.tensor(hardest)


def judged_renders(prompts: int, spoils: int = 5, seed: int = 7):
    """A :class:`PreferenceSet` of ``prompts`` ``world:train`` renders and ``spoils`` spoiled
    copies of each, encoded by the world teacher's VAE and scored by the judge on the decoded
    images (what the held-out set's expert scores are computed from)."""
    import numpy as np

    from rewardkit import api
    from rewardkit.proxies.preference_set import GROUND_TRUTH, PreferenceSet
    from rewardkit.world.rewards import judge_scores
    from rewardkit.world.source import WorldSource
    from rewardkit.world.train_judges import spoil_image

    backbone = api.backbone("stable-diffusion", pretrained_model_name_or_path=str(TEACHER),
                            dtype="float32", device="cpu")
    source, rng = WorldSource("train", size=prompts, side=32, seed=seed), np.random.default_rng(seed)
    images, captions = [], []
    for index in range(prompts):
        sample = source.load(index)
        captions.append(sample.caption)
        images += [sample.image] + [spoil_image(sample.image, rng) for _ in range(spoils)]
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
    prompt_index = torch.arange(prompts).repeat_interleave(spoils + 1)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        latents = torch.cat([backbone.encode_images(pixels[i:i + 512], generator)
                             for i in range(0, len(pixels), 512)])
        decoded = torch.cat([backbone.decode_latents(latents[i:i + 512]) for i in range(0, len(latents), 512)])
        embeds = torch.cat([backbone.proxy_text(backbone.encode_prompts(captions[i:i + 256]).float())
                            for i in range(0, prompts, 256)])
    scores = judge_scores(decoded, [captions[p] for p in prompt_index.tolist()])
    kinds = [GROUND_TRUTH if n % (spoils + 1) == 0 else "spoiled" for n in range(len(prompt_index))]
    return PreferenceSet(latents=latents, prompt_embeds=embeds, prompt_index=prompt_index,
                         captions=captions, kinds=kinds, expert=torch.from_numpy(scores).float())


def train_one(train, held, seed: int, steps: int, batch: int, soft: float = 0.0,
              regression: float = 0.0, ema: float = 0.0, noise: float = 0.0,
              lrm_params: dict | None = None, first_stage: str = "", stages: dict | None = None) -> dict:
    from rewardkit.consistency import EMAUpdater
    from rewardkit.proxies.lrm import LatentRewardModel
    from rewardkit.proxies.preference_set import proxy_scores
    from rewardkit.proxies.pretrain_losses import pairwise_logistic_loss
    from rewardkit.world.lrm import WORLD_LRM_PARAMS

    torch.manual_seed(seed)
    model = LatentRewardModel(latent_channels=train.latents.shape[1], text_dim=train.prompt_embeds.shape[-1],
                              **{**WORLD_LRM_PARAMS, **(lrm_params or {})})
    model.unfreeze().train()
    averaged = copy.deepcopy(model) if ema else model
    averager = EMAUpdater(averaged, model) if ema else None
    optimiser = torch.optim.AdamW(list(model.trainable_parameters()), lr=1e-3, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    plan = [(train, steps, regression)]
    if first_stage:  # (set, steps) of a stage before the preference set, from ``stages``
        first_set, first_steps = stages[first_stage]
        plan.insert(0, (first_set, first_steps, 1.0))
    for pset, stage_steps, pointwise in plan:
        first, second, _ = pset.pairs()
        latent_std = float(pset.latents.std())
        for _ in range(stage_steps):
            rows = torch.randint(0, first.numel(), (batch,), generator=generator)
            a, b = first[rows], second[rows]
            both = torch.cat([a, b])
            latents = pset.latents[both]
            if noise:
                latents = latents + noise * latent_std * torch.randn(latents.shape, generator=generator)
            scores = model(latents, pset.prompt_embeds[pset.prompt_index[both]]).float()
            expert_a, expert_b = pset.expert[a].float(), pset.expert[b].float()
            if soft:  # near-ties count less
                logits = model.logit_scale_value() * (scores[:batch] - scores[batch:])
                loss = F.binary_cross_entropy_with_logits(logits, torch.sigmoid((expert_a - expert_b) / soft))
            else:  # lrm-pretrain's preference loss
                loss = pairwise_logistic_loss(scores[:batch], scores[batch:], expert_a, expert_b,
                                              model.logit_scale_value())
            if pointwise:
                loss = loss + pointwise * F.mse_loss(scores, torch.cat([expert_a, expert_b]))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            if averager is not None:
                with torch.no_grad():
                    averager.update(ema)
    return accuracies(proxy_scores(averaged, held), held)


def accuracies(scores: torch.Tensor, pset) -> dict[str, float]:
    """Agreement of per-candidate ``scores`` with the expert: all pairs, generated-vs-ground-truth,
    and the ground truth against the 16-step teacher samples."""
    from rewardkit.proxies.preference_set import agreement

    first, second, types = pset.pairs()
    with_gt, hardest = pair_masks(pset, first, second, types)
    hits = agreement(scores.float(), pset.expert.float(), first, second)
    return {"all": float(hits.mean()), "gen_vs_gt": float(hits[with_gt].mean()),
            "gt_vs_16_step_teacher": float(hits[hardest].mean())}


def table_row(name: str, runs: list[dict]) -> str:
    """A markdown row: mean ± std over ``runs`` of each :func:`accuracies` figure."""
    cells = []
    for key in ("all", "gen_vs_gt", "gt_vs_16_step_teacher"):
        values = [r[key] for r in runs]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        cells.append(f"{statistics.mean(values):.3f} ± {spread:.3f}")
    return f"| {name} | {len(runs)} | " + " | ".join(cells) + " |"


def main() -> None:
    parser = common_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--renders", type=int, default=2000,
                        help="world:train prompts of the renders variant's first stage (x 6 latents)")
    parser.add_argument("--renders-steps", type=int, default=800)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from rewardkit.proxies.preference_set import PreferenceSet

    train, held = PreferenceSet.load(args.train), PreferenceSet.load(args.heldout)
    stages = {}
    if "renders" in args.variants:
        stages["renders"] = (judged_renders(args.renders), args.renders_steps)
    results: dict[str, list[dict]] = {}
    print("| variant | seeds | held-out all | gen vs gt | gt vs 16-step teacher |")
    print("|---|---:|---:|---:|---:|")
    for name in args.variants:
        runs = [train_one(train, held, seed, args.steps, args.batch, stages=stages, **VARIANTS[name])
                for seed in args.seeds]
        results[name] = runs
        print(table_row(name, runs), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "runs": results}, indent=2))


if __name__ == "__main__":
    main()
