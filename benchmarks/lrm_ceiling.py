"""Is the LRM's held-out ceiling the latent input or the data? The same pairs, scored from pixels.

The world LRM orders the ground truth above good teacher samples no better than the judge's
base rate (``docs/lrm-online.md``). This benchmark asks whether a scorer that sees the decoded
*images* does better when it learns from exactly the same expert-scored pairs. Both sets (the
preference set the LRM trains on, and a run's held-out set) are decoded once with the world
teacher's VAE; then, per seed:

- ``latent BT``: the world LRM from a random init, Bradley-Terry on the latents (what
  ``lrm-pretrain``'s preference stage does; ``lrm_losses.py``'s ``bt`` row);
- ``pixel BT``: the world's pixel-space scorer (``WorldScorerNet``: a conv trunk on the image and
  embeddings of the caption's attributes) from a random init, the same loss, steps, batch and
  learning rate on the decoded images;
- ``pixel BT from world-scorer``: the same, starting from the shipped ``world-scorer`` (trained by
  ``rewardkit world build`` to regress the judge on 12,000 rendered and spoiled images).

and, once: ``world-scorer`` as shipped (no training on the pairs), and the judge re-run on the
decoded held-out images (1.0 unless decoding is not deterministic: a check of the set itself).

If the pixel scorers stop where the LRM does, the ceiling is the data (the judge's near-ties do
not generalise from these prompts), not the latent input.

    python benchmarks/lrm_ceiling.py --heldout rg-lcd-world/proxy_heldout --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json

import torch

from lrm_losses import accuracies, common_arguments, decode, table_row, train_one, world_vae


def pixel_scores(net, images: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    net.eval()
    with torch.no_grad():
        return torch.cat([net(images[i:i + 512], codes[i:i + 512]) for i in range(0, len(images), 512)])


def train_pixel(train, train_images, seed: int, steps: int, batch: int, init=None) -> torch.nn.Module:
    """``WorldScorerNet`` trained with lrm-pretrain's Bradley-Terry loss on decoded images.

    The net has no logit scale of its own, so its score difference is multiplied by a fixed 14:
    about the ``exp(logit_scale)`` the LRM learns in ``lrm-pretrain`` (over scores of a similar
    range), so both see the loss at the same sharpness.
    """
    from rewardkit.proxies.pretrain_losses import pairwise_logistic_loss
    from rewardkit.world.nets import WorldScorerNet
    from rewardkit.world.scene_codes import encode_captions

    torch.manual_seed(seed)
    net = WorldScorerNet()
    if init is not None:
        net.load_state_dict(init.state_dict())
    net.train().requires_grad_(True)
    scale = torch.tensor(14.0)
    codes = encode_captions(train.captions)[train.prompt_index]
    optimiser = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    first, second, _ = train.pairs()
    for _ in range(steps):
        rows = torch.randint(0, first.numel(), (batch,), generator=generator)
        both = torch.cat([first[rows], second[rows]])
        scores = net(train_images[both], codes[both])
        loss = pairwise_logistic_loss(scores[:batch], scores[batch:], train.expert[first[rows]].float(),
                                      train.expert[second[rows]].float(), scale)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return net


def main() -> None:
    parser = common_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--prompts", type=int, default=0,
                        help="use only the first N prompts of each set (0: all; for a quick check)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from rewardkit.proxies.preference_set import PreferenceSet
    from rewardkit.world.assets import SCORER, asset_path, load_net
    from rewardkit.world.nets import WorldScorerNet
    from rewardkit.world.rewards import judge_scores
    from rewardkit.world.scene_codes import encode_captions

    train, held = PreferenceSet.load(args.train), PreferenceSet.load(args.heldout)
    if args.prompts:
        train, held = (s.subset(range(min(args.prompts, s.num_prompts))) for s in (train, held))
    vae = world_vae()
    train_images, held_images = decode(vae, train), decode(vae, held)
    held_codes = encode_captions(held.captions)[held.prompt_index]
    held_captions = [held.captions[p] for p in held.prompt_index.tolist()]
    shipped = load_net(WorldScorerNet, asset_path(SCORER))
    print("| scorer | seeds | held-out all | gen vs gt | gt vs 16-step teacher |")
    print("|---|---:|---:|---:|---:|")
    rows: dict[str, list[dict]] = {}

    def report(name: str, runs: list[dict]) -> None:
        rows[name] = runs
        print(table_row(name, runs), flush=True)

    report("judge on the decoded held-out images",
           [accuracies(torch.from_numpy(judge_scores(held_images, held_captions)), held)])
    report("world-scorer as shipped (no pair training)",
           [accuracies(pixel_scores(shipped, held_images, held_codes), held)])
    report("latent BT (the LRM)",
           [train_one(train, held, seed, args.steps, args.batch) for seed in args.seeds])
    report("pixel BT", [accuracies(pixel_scores(
        train_pixel(train, train_images, seed, args.steps, args.batch), held_images, held_codes), held)
        for seed in args.seeds])
    report("pixel BT from world-scorer", [accuracies(pixel_scores(
        train_pixel(train, train_images, seed, args.steps, args.batch, init=shipped),
        held_images, held_codes), held) for seed in args.seeds])
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "runs": rows}, indent=2))


if __name__ == "__main__":
    main()
