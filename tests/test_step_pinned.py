"""Pins what SD 1.x/2.x training computes, bit for bit, so a refactor of the step (the
conditioning object, the noise schedule, SDXL) can prove it changed nothing.

Two optimiser steps of ``lcd`` (full and LoRA) and ``rg-lcd`` (direct and through the LRM) on
the tiny offline teacher, one thread, fixed seeds; the fingerprint is every logged metric and,
per trained tensor, its float64 sum and sum of squares (any changed bit changes them). The
numbers are in ``tests/golden/sd_steps.json``; to regenerate them after an intended change run
``python tests/test_step_pinned.py`` (it keeps only this platform's entry: the others are stale
then) and say why in the commit; ``python tests/test_step_pinned.py --add-platform`` pins one
more platform from unchanged code and keeps the others.

Bit-for-bit results hold on one platform only: CPU kernels differ between instruction sets
(AVX2 and AVX-512 give the same step-1 loss to 4e-6, not to the bit), and Adam turns those
last-bit differences into +-lr moves of weights whose gradient is near zero. So the goldens are
kept per platform (torch version, CPU capability, CPU vendor). On a platform that has its own
golden the test is bit-exact; on one that has none it checks every logged metric against the
stored platforms to a relative 1e-3 (an algorithmic change moves them by far more), then skips
with a message naming the command that pins the platform: the weights' sums cannot be compared
across platforms.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import pytest
import torch

GOLDEN = Path(__file__).parent / "golden" / "sd_steps.json"
#: Relative tolerance of the metrics on a platform without its own golden (observed: 2e-4).
CROSS_PLATFORM_RTOL = 1e-3
SMALL_LRM = dict(embed_dim=16, image_widths=[8, 16], text_width=16, text_heads=2)
RUNS = {
    "lcd": ("lcd", {}),
    "lcd-lora": ("lcd", {"use_lora": True, "lora_rank": 4}),
    "rg-lcd-direct": ("rg-lcd", {"proxy": "none"}),
    "rg-lcd-lrm": ("rg-lcd", {"proxy": "lrm", "proxy_params": SMALL_LRM,
                              "proxy_eval_num_prompts": 0}),
}


def redness():
    """A differentiable expert with no weights to download: red minus the other channels."""
    from rewardkit.rewards.base import RewardModel

    class Redness(RewardModel):
        name = "pinned-redness"
        differentiable = True

        def score(self, images, prompts):
            channels = images.mean((2, 3))
            return channels[:, 0] - 0.5 * (channels[:, 1] + channels[:, 2])

    return Redness()


def _fingerprint(module: torch.nn.Module) -> dict[str, list[float]]:
    return {name: [float(p.detach().double().sum()), float(p.detach().double().pow(2).sum())]
            for name, p in module.named_parameters() if p.requires_grad}


def fingerprints(root: Path) -> dict:
    import rewardkit as rk
    from rewardkit.testing.tiny_sd import build_tiny_sd_pipeline
    from rewardkit.training.metrics import read_metrics
    from rewardkit.testing.tiny_training import write_tiny_image_folder

    torch.set_num_threads(1)
    teacher = build_tiny_sd_pipeline(root / "teacher")
    data = write_tiny_image_folder(root / "data", count=8, size=16)
    base = dict(pretrained_teacher_model=str(teacher), train_shards_path_or_url=str(data),
                resolution=16, train_batch_size=2, max_train_steps=2, learning_rate=1e-3,
                unet_time_cond_proj_dim=32, validation_steps=0, checkpointing_steps=0,
                report_to="none", seed=0)
    rg = dict(proxy_batch_size=2, vae_decode_batch_size=4, reward_scale=1.0)
    out = {}
    for label, (recipe_name, extra) in RUNS.items():
        values = {**base, **(rg if recipe_name == "rg-lcd" else {}), **extra,
                  "output_dir": str(root / label)}
        built = {"reward": redness()} if recipe_name == "rg-lcd" else {}
        recipe = rk.recipe(recipe_name, values, **built)
        recipe.run(progress=False)
        rows = read_metrics(root / label / "metrics.jsonl")
        out[label] = {
            "metrics": [{k: v for k, v in row.items() if k != "step_time"} for row in rows],
            "student": _fingerprint(recipe.unwrapped_student),
        }
        if getattr(recipe, "proxy_model", None) is not None:
            out[label]["proxy"] = {n: [float(p.detach().double().sum())]
                                   for n, p in recipe.proxy_model.named_parameters()}
    return out


def platform_key() -> str:
    """``torch version/CPU capability/CPU vendor``, the platform a golden holds bit for bit on."""
    vendor = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("vendor_id"):
                vendor = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{torch.__version__}/{torch.backends.cpu.get_cpu_capability()}/{vendor}"


def golden_for(key: str, goldens: dict) -> dict | None:
    """The golden of platform ``key`` (a stored ``?`` vendor matches any vendor)."""
    if key in goldens:
        return goldens[key]
    version, capability, _ = key.split("/")
    return goldens.get(f"{version}/{capability}/?")


def metrics_close(got: list[dict], golden: list[dict], rtol: float) -> bool:
    if len(got) != len(golden) or any(a.keys() != b.keys() for a, b in zip(got, golden)):
        return False
    return all(abs(a[k] - b[k]) <= rtol * abs(b[k]) for a, b in zip(got, golden) for k in b)


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    threads = torch.get_num_threads()
    try:
        return fingerprints(tmp_path_factory.mktemp("pinned"))
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("label", list(RUNS))
def test_sd_training_steps_are_bit_identical_to_the_pinned_ones(measured, label):
    goldens = json.loads(GOLDEN.read_text())
    got = measured[label]
    golden = golden_for(platform_key(), goldens)
    if golden is None:
        close = [key for key, stored in goldens.items()
                 if metrics_close(got["metrics"], stored[label]["metrics"], CROSS_PLATFORM_RTOL)]
        assert close, (f"{label}: no stored platform's metrics within {CROSS_PLATFORM_RTOL} of "
                       f"{got['metrics']}")
        pytest.skip(f"no golden for platform {platform_key()}: metrics match {close[0]}'s to "
                    f"{CROSS_PLATFORM_RTOL}; the bit-exact check needs `python "
                    "tests/test_step_pinned.py --add-platform` run once on this platform")
    golden = golden[label]
    assert got["metrics"] == golden["metrics"]
    assert got["student"].keys() == golden["student"].keys()
    changed = [n for n in golden["student"] if got["student"][n] != golden["student"][n]]
    assert not changed, f"{len(changed)} trained tensors changed, e.g. {changed[:3]}"
    assert got.get("proxy") == golden.get("proxy")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as folder:
        result = fingerprints(Path(folder))
    keep_others = "--add-platform" in sys.argv[1:] and GOLDEN.is_file()
    goldens = json.loads(GOLDEN.read_text()) if keep_others else {}
    goldens[platform_key()] = result
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(goldens, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN} for platform {platform_key()}", file=sys.stderr)
