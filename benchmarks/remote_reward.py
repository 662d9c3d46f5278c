"""Throughput of a reward model served by `rewardkit serve-reward` against the same RM in process.

    python benchmarks/remote_reward.py [--rewards world-judge,rule-judge] [--batch 12]
        [--side 64] [--rounds 20] [--clients 1,4] [--encodings float32,uint8,png] [--json out.json]

For each RM: images per second and milliseconds per call of ``--batch`` images (what one
rg-lcd step asks its expert: ``3 * proxy_batch_size`` candidates), in process and through a
server on 127.0.0.1 (started here, ``--max-batch`` = batch x clients), with 1 and 4 concurrent
clients (threads of this process, each with its own ``remote`` RM; in process, each with its own
RM). ``added_ms_per_step`` is the remote call's time minus the in-process one at one client:
what a training step waits longer. Numbers depend on the machine's free cores.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path

import torch

import rewardkit as rk
from rewardkit.testing.reward_server import RewardServer

CAPTIONS = ["a small red circle on a black background", "two large blue squares on a white "
            "background", "a large green triangle on a gray background"]


def images_and_prompts(batch: int, side: int) -> tuple[torch.Tensor, list[str]]:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, side, side, generator=generator) * 0.3
    images[:, 0, side // 4: side // 2, side // 4: side // 2] += 0.7
    return images.clamp(0, 1), [CAPTIONS[i % len(CAPTIONS)] for i in range(batch)]


def timed(make_rm, clients: int, rounds: int, images: torch.Tensor, prompts: list[str]) -> dict:
    """``clients`` threads, each with its own RM, each scoring ``rounds`` batches."""
    models = [make_rm() for _ in range(clients)]
    for model in models:  # warm-up: connections, caches
        model(images, prompts)
    barrier = threading.Barrier(clients + 1)
    calls: list[float] = []
    lock = threading.Lock()

    def client(model) -> None:
        barrier.wait()
        for _ in range(rounds):
            started = time.perf_counter()
            model(images, prompts)
            with lock:
                calls.append(time.perf_counter() - started)

    threads = [threading.Thread(target=client, args=(m,)) for m in models]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    total = clients * rounds * images.shape[0]
    calls.sort()
    return {"clients": clients, "images_per_s": total / elapsed,
            "ms_per_call_median": 1000 * calls[len(calls) // 2]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rewards", default="world-judge,rule-judge")
    parser.add_argument("--batch", type=int, default=12)
    parser.add_argument("--side", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--clients", default="1,4")
    parser.add_argument("--encodings", default="float32,uint8,png")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, both sides")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clients = [int(c) for c in args.clients.split(",")]
    images, prompts = images_and_prompts(args.batch, args.side)
    results = {"batch": args.batch, "side": args.side, "rounds": args.rounds,
               "cpu_count": os.cpu_count(), "rewards": {}}
    for name in args.rewards.split(","):
        rows = []
        for count in clients:
            rows.append({"where": "in process", "encoding": "-",
                         **timed(lambda: rk.reward_model(name), count, args.rounds, images,
                                 prompts)})
        with RewardServer(name, args=["--max-batch", str(args.batch * max(clients))],
                          env={"OMP_NUM_THREADS": str(args.threads)}) as server:
            for encoding in args.encodings.split(","):
                for count in clients:
                    rows.append({"where": "remote", "encoding": encoding, **timed(
                        lambda: rk.reward_model("remote", url=server.url, encoding=encoding),
                        count, args.rounds, images, prompts)})
        local = next(r for r in rows if r["where"] == "in process" and r["clients"] == 1)
        for row in rows:
            if row["where"] == "remote" and row["clients"] == 1:
                row["added_ms_per_step"] = row["ms_per_call_median"] - local["ms_per_call_median"]
        results["rewards"][name] = rows
        print(f"\n{name}: {args.batch} images of {args.side}x{args.side} per call")
        print(f"{'where':<11}{'encoding':<10}{'clients':>8}{'images/s':>10}{'ms/call':>9}"
              f"{'added ms/step':>15}")
        for row in rows:
            added = row.get("added_ms_per_step")
            print(f"{row['where']:<11}{row['encoding']:<10}{row['clients']:>8}"
                  f"{row['images_per_s']:>10.1f}{row['ms_per_call_median']:>9.2f}"
                  f"{'' if added is None else f'{added:.2f}':>15}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
