"""The activation table: profiles measured once per architecture and call, shipped in
``activations.json``, and measured on the spot for anything the table lacks.

A profile's key is the model's fingerprint (its structural config fields), the call (``unet``,
``vae-decode``, ``vae-encode``, ``reward``, ``proxy``) and the call's settings (dtypes,
checkpointing, trained or frozen, LoRA). The shipped entries cover the example configs
(``examples/configs``) and the alternatives their plans suggest; regenerate them with::

    python -m rewardkit.plan.table            # measures what is missing (fake tensors, minutes)

A model the table lacks (a tiny test teacher, a custom UNet) is measured when planned: under
fake tensors for a large model, on real CPU tensors for a small one (faster there, same bytes).
"""

from __future__ import annotations

import json
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from .modules import ModelSpec, parameter_count
from .profiles import Profile, measure, Run

#: Latent side the shipped profiles were measured at (and twice it); any other side is scaled.
REFERENCE_SIDE = 32
#: Models up to this many parameters are measured on real CPU tensors rather than fake ones.
REAL_TENSORS_BELOW = 20_000_000
TABLE_FILE = "activations.json"


class Profiles:
    """Profiles by key: from the shipped table, else measured (and kept for this process)."""

    def __init__(self, table: dict[str, Any] | None = None, measure_missing: bool = True) -> None:
        self.entries: dict[str, dict[str, Any]] = dict(
            (table if table is not None else shipped_table()).get("profiles", {}))
        self.measure_missing = measure_missing
        #: Keys measured in this process (not from the shipped table), with their seconds.
        self.measured: dict[str, float] = {}

    def get(self, spec: ModelSpec, key: str, setup: Callable[[], Callable[[], Run]]) -> Profile:
        """The profile of call ``key`` on model ``spec``; ``setup()`` gives the run's builder."""
        full_key = f"{spec.fingerprint()}|{key}"
        if full_key not in self.entries:
            if not self.measure_missing:
                raise KeyError(full_key)
            began = time.perf_counter()
            fake = parameter_count(spec) >= REAL_TENSORS_BELOW
            self.entries[full_key] = measure(setup(), REFERENCE_SIDE, fake=fake).as_dict()
            self.measured[full_key] = time.perf_counter() - began
        return Profile.from_dict(self.entries[full_key])

    def as_table(self) -> dict[str, Any]:
        """The entries as the shipped file holds them."""
        import diffusers
        import torch
        import transformers

        return {"_comment": "Activation profiles of rewardkit.plan (see rewardkit/plan/table.py; "
                            "regenerate with python -m rewardkit.plan.table)",
                "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                             "transformers": transformers.__version__},
                "reference_side": REFERENCE_SIDE,
                "profiles": dict(sorted(self.entries.items()))}


def shipped_table() -> dict[str, Any]:
    """The shipped ``activations.json`` (empty if absent)."""
    path = resources.files(__package__).joinpath(TABLE_FILE)
    if not path.is_file():
        return {}
    return json.loads(path.read_text())


def regenerate(configs: list[Path], output: Path) -> Profiles:
    """Plan every config in ``configs`` (with the alternatives its plan suggests, on 1 and 8
    processes), measuring whatever profile is missing; write the table to ``output``."""
    from .plan import plan_file

    profiles = Profiles()
    for path in configs:
        for processes in (1, 8):
            began = time.perf_counter()
            plan_file(path, num_processes=processes, gpu_memory=80 * 2**30, profiles=profiles,
                      suggest=True)
            print(f"{path} ({processes} processes): {time.perf_counter() - began:.0f} s",
                  file=sys.stderr)
            output.write_text(json.dumps(profiles.as_table(), indent=0) + "\n")
    return profiles


def main() -> None:
    """``python -m rewardkit.plan.table [CONFIG ...]``: regenerate the shipped table from the
    example configs (or the given ones)."""
    root = Path(__file__).resolve().parents[2]
    configs = [Path(a) for a in sys.argv[1:]] or sorted(
        (root / "examples" / "configs").glob("*.toml"))
    regenerate(configs, Path(__file__).with_name(TABLE_FILE))


if __name__ == "__main__":
    main()
