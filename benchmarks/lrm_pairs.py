"""Where does a latent proxy RM disagree with the expert? Accuracy per pair kind and judge margin.

For each saved proxy (a ``save_pretrained`` folder: ``proxy/`` of a run, or the shipped
world ``lrm``) and each preference set (the held-out set a run built, and optionally the
set the proxy was trained on), prints:

- pairwise accuracy overall, on generated-vs-generated and on generated-vs-ground-truth pairs;
- accuracy per expert margin ``|expert_a - expert_b|`` (are the misordered pairs near-ties?);
- for each candidate kind paired with the ground truth: the accuracy, how often the *expert*
  prefers the ground truth (the base rate a proxy that always picks the ground truth would
  score) and how often the *proxy* does.

``--judge-terms`` (world sets only) decodes each set with the world teacher's VAE and splits the
ground-truth pairs further by the ``world-judge`` term that decides them: the term whose
weighted difference is largest in the direction of the judge's preference.

``--ensemble`` adds the same analysis for the mean of the proxies' standardised scores (do
several proxies err on the same pairs?).

A training-set accuracy far above the held-out one on the same pair kind is a generalisation
gap, not a capacity limit.

    python benchmarks/lrm_pairs.py --proxy rewardkit/world/assets/lrm \\
        --sets runs/lrm_towers/seed-0/unet/heldout_preference_set \\
               rewardkit/world/assets/lrm/preference_set
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lrm_losses import decode, world_vae

MARGIN_EDGES = (0.0, 0.01, 0.02, 0.05, 0.1, 1.0)


def load_proxy(folder: Path):
    from rewardkit.plugins import get_host

    name = json.loads((folder / "proxy_config.json").read_text())["name"]
    return get_host().get("proxy", name).factory.from_pretrained(folder)


def ensemble_scores(proxies, pset):
    """The mean of each proxy's scores on ``pset``, standardised per proxy (their scales differ)."""
    from rewardkit.proxies.preference_set import proxy_scores

    total = 0
    for proxy in proxies:
        scores = proxy_scores(proxy, pset).double()
        total = total + (scores - scores.mean()) / scores.std().clamp_min(1e-12)
    return total / len(proxies)


def deciding_terms(pset) -> list[str]:
    """Per pair of ``pset.pairs()``: the ``world-judge`` term that decides it (world sets only;
    the candidates are decoded with the world teacher's VAE, as the judge saw them)."""
    import numpy as np

    from rewardkit.world.judge import WEIGHTS, judge

    pixels = decode(world_vae(), pset).permute(0, 2, 3, 1).numpy()
    verdicts = [judge(image, pset.captions[p]) for image, p in zip(pixels, pset.prompt_index.tolist())]
    first, second, _ = pset.pairs()
    decided = []
    for a, b in zip(first.tolist(), second.tolist()):
        sign = np.sign(verdicts[a].score - verdicts[b].score)
        decided.append(max(WEIGHTS, key=lambda term: sign * WEIGHTS[term]
                           * (verdicts[a].terms[term] - verdicts[b].terms[term])))
    return decided


def analyse(scores, pset, terms: list[str] | None = None) -> list[str]:
    """The report lines for per-candidate ``scores`` on ``pset`` (``terms``: each pair's
    deciding judge term, from :func:`deciding_terms`)."""
    import torch

    from rewardkit.proxies.preference_set import GROUND_TRUTH, agreement, scores_accuracy

    first, second, _ = pset.pairs()
    expert = pset.expert.float()
    hits = agreement(scores, expert, first, second)
    margin = (expert[first] - expert[second]).abs()
    summary = scores_accuracy(scores, pset, prefix="accuracy")
    lines = ["  " + ", ".join(f"{k.replace('accuracy_', '')}: {v:.3f}" for k, v in summary.items())
             + f" ({first.numel()} pairs)"]
    for low, high in zip(MARGIN_EDGES, MARGIN_EDGES[1:]):
        mask = (margin > low) & (margin <= high)
        if mask.any():
            lines.append(f"  expert margin ({low}, {high}]: {int(mask.sum())} pairs, accuracy "
                         f"{float(hits[mask].mean()):.3f}")
    kinds = sorted(set(pset.kinds) - {GROUND_TRUTH})
    for kind in kinds:
        rows = [(a, b, n) if pset.kinds[a] == GROUND_TRUTH else (b, a, n)
                for n, (a, b) in enumerate(zip(first.tolist(), second.tolist()))
                if {pset.kinds[a], pset.kinds[b]} == {GROUND_TRUTH, kind}]
        if not rows:
            continue
        gt = torch.tensor([r[0] for r in rows])
        other = torch.tensor([r[1] for r in rows])
        accuracy = float(agreement(scores, expert, gt, other).mean())
        lines.append(f"  ground truth vs {kind}: {len(rows)} pairs, accuracy {accuracy:.3f}, "
                     f"expert prefers the ground truth {float((expert[gt] > expert[other]).float().mean()):.3f}, "
                     f"proxy does {float((scores[gt] > scores[other]).float().mean()):.3f}")
        for term in sorted({terms[r[2]] for r in rows}) if terms else []:
            mask = torch.tensor([terms[r[2]] == term for r in rows])
            lines.append(f"    decided by {term}: {int(mask.sum())} pairs, accuracy "
                         f"{float(agreement(scores, expert, gt[mask], other[mask]).mean()):.3f}")
    return lines


def main(argv: list[str] | None = None) -> int:
    from rewardkit.proxies.preference_set import PreferenceSet

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--proxy", type=Path, nargs="+", required=True)
    parser.add_argument("--sets", type=Path, nargs="+", required=True)
    parser.add_argument("--ensemble", action="store_true",
                        help="also analyse the mean of the proxies' standardised scores")
    parser.add_argument("--judge-terms", action="store_true",
                        help="split ground-truth pairs by the world-judge term that decides them")
    args = parser.parse_args(argv)
    sets = {path: PreferenceSet.load(path) for path in args.sets}
    proxies = {folder: load_proxy(folder) for folder in args.proxy}
    for path, pset in sets.items():
        terms = deciding_terms(pset) if args.judge_terms else None
        for folder, proxy in proxies.items():
            print(f"{folder} on {path}:")
            print("\n".join(analyse(ensemble_scores([proxy], pset), pset, terms)))
        if args.ensemble and len(proxies) > 1:
            print(f"ensemble of the {len(proxies)} proxies on {path}:")
            print("\n".join(analyse(ensemble_scores(list(proxies.values()), pset), pset, terms)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
