"""The activation table: profiles measured once per architecture and call, shipped in
``activations.json``, and measured on the spot for anything the table lacks.

A profile's key is the model's fingerprint (its structural config fields), the call (``unet``,
``vae-decode``, ``vae-encode``, ``reward``, ``proxy``) and the call's settings (dtypes,
checkpointing, trained or frozen, LoRA). The shipped entries cover the example configs
(``examples/configs``) and the alternatives their plans suggest; regenerate them with::

    python -m rewardkit.plan.regenerate       # measures what is missing (fake tensors, minutes)

A model the table lacks (a tiny test teacher, a custom UNet) is measured when planned: under
fake tensors for a large model, on real CPU tensors for a small one (faster there, same bytes).
"""

from __future__ import annotations

import json
import time
from importlib import resources
from typing import Any, Callable

from .modules import ModelSpec, parameter_count
from .profiles import Profile, Run, compact, measure

#: Latent side the shipped profiles were measured at (and twice it); any other side is scaled.
REFERENCE_SIDE = 32
#: Models up to this many parameters are measured on real CPU tensors rather than fake ones,
#: at a smaller latent side (real arithmetic costs with the side squared; fake tensors do not).
REAL_TENSORS_BELOW = 20_000_000
REAL_REFERENCE_SIDE = 16
TABLE_FILE = "activations.json"


class Profiles:
    """Profiles by key: from the shipped table, else measured (and kept for this process)."""

    def __init__(self, table: dict[str, Any] | None = None, measure_missing: bool = True,
                 reference_side: int = REFERENCE_SIDE) -> None:
        self.entries: dict[str, dict[str, Any]] = dict(
            (table if table is not None else shipped_table()).get("profiles", {}))
        self.measure_missing = measure_missing
        #: Latent side new profiles are measured at (and twice it).
        self.reference_side = reference_side
        #: Keys measured in this process (not from the shipped table), with their seconds.
        self.measured: dict[str, float] = {}
        #: Keys asked for in this process.
        self.used: set[str] = set()

    def get(self, spec: ModelSpec, key: str, setup: Callable[[], Callable[[], Run]]) -> Profile:
        """The profile of call ``key`` on model ``spec``; ``setup()`` gives the run's builder."""
        full_key = f"{spec.fingerprint()}|{key}"
        self.used.add(full_key)
        if full_key not in self.entries:
            if not self.measure_missing:
                raise KeyError(full_key)
            began = time.perf_counter()
            fake = parameter_count(spec) >= REAL_TENSORS_BELOW
            side = self.reference_side if fake else min(self.reference_side, REAL_REFERENCE_SIDE)
            self.entries[full_key] = measure(setup(), side, fake=fake).as_dict()
            self.measured[full_key] = time.perf_counter() - began
        return Profile.from_dict(self.entries[full_key])

    def as_table(self, used_only: bool = False) -> dict[str, Any]:
        """The entries as the shipped file holds them (only those asked for, if ``used_only``)."""
        import diffusers
        import torch
        import transformers

        return {"_comment": "Activation profiles of rewardkit.plan (see rewardkit/plan/table.py; "
                            "regenerate with python -m rewardkit.plan.regenerate)",
                "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                             "transformers": transformers.__version__},
                "reference_side": REFERENCE_SIDE,
                "profiles": {key: _compacted(value) for key, value in sorted(self.entries.items())
                             if key in self.used or not used_only}}


def _compacted(entry: dict[str, Any]) -> dict[str, Any]:
    profile = Profile.from_dict(entry)
    profile.front = compact(profile.front)
    return profile.as_dict()


def shipped_table() -> dict[str, Any]:
    """The shipped ``activations.json`` (empty if absent)."""
    path = resources.files(__package__).joinpath(TABLE_FILE)
    if not path.is_file():
        return {}
    return json.loads(path.read_text())
