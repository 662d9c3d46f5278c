"""Which offline training signal makes the world LRM generalise? Loss variants over seeds.

Trains the world's LRM (``WORLD_LRM_PARAMS``, from a random init) on a fixed expert-scored
preference set (default: the shipped ``latent-rm/preference_set``, 512 ``world:train`` prompts
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
- ``all``: ``soft`` + ``regression`` + ``ema``.

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
}
DEFAULT_TRAIN = Path(__file__).resolve().parents[1] / "rewardkit/world/assets/latent-rm/preference_set"


def pair_masks(pset, first, second, types):
    """Boolean masks over the pairs: generated-vs-ground-truth, and the ground truth against a
    16-step teacher sample (the hardest kind)."""
    from rewardkit.proxies.preference_set import GEN_VS_GT

    with_gt = [kind == GEN_VS_GT for kind in types]
    hardest = [gt and any(pset.kinds[k].startswith("teacher-ddim-16") for k in (i, j))
               for gt, i, j in zip(with_gt, first.tolist(), second.tolist())]
    return torch.tensor(with_gt), torch.tensor(hardest)


def train_one(train, held, seed: int, steps: int, batch: int, soft: float = 0.0,
              regression: float = 0.0, ema: float = 0.0, noise: float = 0.0) -> dict:
    from rewardkit.consistency import EMAUpdater
    from rewardkit.proxies.lrm import LatentRewardModel
    from rewardkit.proxies.preference_set import proxy_scores
    from rewardkit.proxies.pretrain_losses import pairwise_logistic_loss
    from rewardkit.world.latent_rm import WORLD_LRM_PARAMS

    torch.manual_seed(seed)
    model = LatentRewardModel(latent_channels=train.latents.shape[1],
                              text_dim=train.prompt_embeds.shape[-1], **WORLD_LRM_PARAMS)
    model.unfreeze().train()
    averaged = copy.deepcopy(model) if ema else model
    averager = EMAUpdater(averaged, model) if ema else None
    optimiser = torch.optim.AdamW(list(model.trainable_parameters()), lr=1e-3, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    first, second, _ = train.pairs()
    latent_std = float(train.latents.std())
    for _ in range(steps):
        rows = torch.randint(0, first.numel(), (batch,), generator=generator)
        a, b = first[rows], second[rows]
        both = torch.cat([a, b])
        latents = train.latents[both]
        if noise:
            latents = latents + noise * latent_std * torch.randn(latents.shape, generator=generator)
        scores = model(latents, train.prompt_embeds[train.prompt_index[both]]).float()
        expert_a, expert_b = train.expert[a].float(), train.expert[b].float()
        if soft:  # near-ties count less
            logits = model.logit_scale_value() * (scores[:batch] - scores[batch:])
            loss = F.binary_cross_entropy_with_logits(logits, torch.sigmoid((expert_a - expert_b) / soft))
        else:  # lrm-pretrain's preference loss
            loss = pairwise_logistic_loss(scores[:batch], scores[batch:], expert_a, expert_b,
                                          model.logit_scale_value())
        if regression:
            loss = loss + regression * F.mse_loss(scores, torch.cat([expert_a, expert_b]))
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=Path, default=DEFAULT_TRAIN)
    parser.add_argument("--heldout", type=Path, required=True,
                        help="a held-out preference set (a run's proxy_heldout/)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from rewardkit.proxies.preference_set import PreferenceSet

    train, held = PreferenceSet.load(args.train), PreferenceSet.load(args.heldout)
    results: dict[str, list[dict]] = {}
    print("| variant | seeds | held-out all | gen vs gt | gt vs 16-step teacher |")
    print("|---|---:|---:|---:|---:|")
    for name in args.variants:
        runs = [train_one(train, held, seed, args.steps, args.batch, **VARIANTS[name])
                for seed in args.seeds]
        results[name] = runs
        print(table_row(name, runs), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "runs": results}, indent=2))


if __name__ == "__main__":
    main()
