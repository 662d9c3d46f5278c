"""``python -m rewardkit.plan.regenerate [CONFIG ...]``: measure the activation profiles the
example configs' plans need (and those of the alternatives they suggest, on 1 and 8 processes)
and write the shipped table, ``rewardkit/plan/activations.json``. Profiles already in the table
are kept; only missing ones are measured (fake tensors: minutes for the SDXL ones)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from .plan import GiB, plan_file
from .suggest import suggestions
from .table import TABLE_FILE, Profiles

#: The GPU memory the alternatives are planned for.
GPU_MEMORY = 80 * GiB


def regenerate(configs: list[Path], output: Path) -> Profiles:
    """Plan every config in ``configs`` with its alternatives, measuring missing profiles; write
    the profiles those plans used to ``output`` after each config."""
    profiles = Profiles()
    for path in configs:
        for processes in (1, 8):
            began = time.perf_counter()
            plan = plan_file(path, num_processes=processes, profiles=profiles)
            suggestions(plan, GPU_MEMORY, profiles)
            print(f"{path} ({processes} processes): {time.perf_counter() - began:.0f} s",
                  file=sys.stderr)
            output.write_text(json.dumps(profiles.as_table(used_only=True), indent=0) + "\n")
    return profiles


def main() -> None:
    """Regenerate the table from the example configs (or the configs given)."""
    root = Path(__file__).resolve().parents[2]
    configs = [Path(a) for a in sys.argv[1:]] or sorted(
        (root / "examples" / "configs").glob("*.toml"))
    regenerate(configs, Path(__file__).with_name(TABLE_FILE))


if __name__ == "__main__":
    main()
