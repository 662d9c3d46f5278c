"""The reward-hacking guard: is the trained reward still the thing we want?

Reward over-optimisation (saturated colours, repeated textures, collapsed variety) shows in
the trained reward as *progress*. The guard watches what the training reward cannot see, on a
fixed set of samples (``guard_prompts`` x ``guard_seeds``, the same noise at every validation):

- a **gold panel**: reward models the recipe does not train on (``gold_panel``). Their mean is
  ``gold_panel``; each RM's mean is logged as ``gold_<name>``;
- the trained RM's own score of those samples (``guard_reward``), for comparison;
- the **Frechet distance** of the samples to the teacher's samples of the same prompts and
  seeds (``guard_fd``, any registered distribution metric: ``guard_fd_metric``);
- **diversity**: the mean pairwise distance between one prompt's samples over the seeds (RMS
  pixel difference in [0, 1], averaged over prompts; ``guard_diversity``).

:meth:`HackingGuard.verdict` calls a run *hacked* when, for ``hacking_patience`` validations in
a row, ``guard_reward`` rose while ``gold_panel`` fell. The loop then stops the run
(``stop_on_hacking``), and keeps the samples' best checkpoint by the panel (``keep_best``), and
says so in one sentence.

Written here rather than taken from a library: the pieces (RMs, metrics) are rewardkit's own
plugins, and the rule is a few comparisons.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch


def diversity(images: torch.Tensor, groups: int) -> float:
    """Mean pairwise RMS distance between the images of each group (``groups`` consecutive
    runs of equal length: one prompt's samples over the seeds), averaged over groups."""
    per_group = images.float().reshape(groups, -1, *images.shape[1:]).flatten(2)
    if per_group.shape[1] < 2:
        return 0.0
    distances = torch.cdist(per_group, per_group) / per_group.shape[-1] ** 0.5
    count = per_group.shape[1]
    return float(distances.sum() / (groups * count * (count - 1)))


@dataclass
class HackingGuard:
    """Measures fixed samples with the gold panel, the FD to the teacher and diversity, and
    tells when the training reward and the panel part ways."""

    prompts: Sequence[str]
    seeds: Sequence[int]
    panel: dict[str, Any]  #: name -> reward model (``model(images, prompts) -> [N]``)
    trained: Any = None  #: the RM the recipe trains on (its score of the samples), or None
    fd_metric: Any = None  #: a distribution metric (``compute(images, reference) -> dict``)
    reference: torch.Tensor | None = None  #: the teacher's samples, ``[N, 3, H, W]`` in [0, 1]
    patience: int = 3
    history: list[dict[str, float]] = field(default_factory=list)
    said: bool = False  #: a verdict was reported (it is said once)

    @property
    def sample_prompts(self) -> list[str]:
        """One prompt per sample: every prompt, repeated for each seed (prompt-major)."""
        return [p for p in self.prompts for _ in self.seeds]

    @torch.no_grad()
    def measure(self, step: int, images: torch.Tensor) -> dict[str, float]:
        """The guard's numbers of this validation's samples (``[N, 3, H, W]`` in [0, 1], in
        :attr:`sample_prompts` order), remembered for :meth:`verdict`."""
        prompts = self.sample_prompts
        row: dict[str, float] = {}
        for name, rm in self.panel.items():
            row[f"gold_{name}"] = float(rm(images.to(_device(rm)), prompts).float().mean())
        if self.panel:
            row["gold_panel"] = sum(row[f"gold_{n}"] for n in self.panel) / len(self.panel)
        if self.trained is not None:
            row["guard_reward"] = float(self.trained(images.to(_device(self.trained)),
                                                     prompts).float().mean())
        if self.fd_metric is not None and self.reference is not None:
            values = self.fd_metric.compute(images.float().cpu(), self.reference.float().cpu())
            row["guard_fd"] = float(next(iter(values.values())))
        row["guard_diversity"] = diversity(images, len(self.prompts))
        self.history.append({"step": step, **row})
        return row

    def verdict(self) -> str | None:
        """A sentence when the last ``patience`` validations each saw ``guard_reward`` rise and
        ``gold_panel`` fall; else None."""
        rows = [r for r in self.history if "gold_panel" in r and "guard_reward" in r]
        if len(rows) <= self.patience:
            return None
        window = rows[-self.patience - 1:]
        pairs = list(zip(window, window[1:]))
        if all(b["guard_reward"] > a["guard_reward"] and b["gold_panel"] < a["gold_panel"]
               for a, b in pairs):
            first, last = window[0], window[-1]
            return (f"reward hacking at step {last['step']}: over the last {self.patience} "
                    f"validations the trained reward rose ({first['guard_reward']:.4g} -> "
                    f"{last['guard_reward']:.4g}) while the gold panel fell "
                    f"({first['gold_panel']:.4g} -> {last['gold_panel']:.4g})")
        return None

    def best(self) -> dict[str, float] | None:
        """The validation with the highest ``gold_panel`` so far (the latest of ties)."""
        rows = [r for r in self.history if "gold_panel" in r]
        return max(reversed(rows), key=lambda r: r["gold_panel"]) if rows else None

    def state_dict(self) -> dict[str, Any]:
        """The measurements so far (a resumed run keeps counting)."""
        return {"history": [dict(r) for r in self.history], "said": self.said}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.history = [dict(r) for r in state.get("history", [])]
        self.said = bool(state.get("said", False))


def guard_report(rows: Sequence[dict[str, Any]]) -> str:
    """A markdown section of a run's guard measurements (``metrics.jsonl`` rows); empty when
    the run had no guard."""
    measured = [r for r in rows if "guard_diversity" in r]
    if not measured:
        return ""
    keys = [k for k in measured[0] if k.startswith(("guard_reward", "gold_", "guard_fd"))]
    keys.append("guard_diversity")
    lines = ["## Reward-hacking guard", "",
             "Fixed samples (the same prompts and seeds at every validation) scored by the trained "
             "RM (`guard_reward`) and by a gold panel it does not train on (`gold_*`), with their "
             "Frechet distance to the teacher's samples (`guard_fd`) and their diversity.", "",
             "| step | " + " | ".join(f"`{k}`" for k in keys) + " |",
             "|---:|" + "---:|" * len(keys)]
    for row in measured:
        cells = [f"{row[k]:.4g}" if isinstance(row.get(k), (int, float)) else "-" for k in keys]
        lines.append(f"| {row['step']} | " + " | ".join(cells) + " |")
    verdicts = [r["guard_verdict"] for r in rows if r.get("guard_verdict")]
    lines += ["", verdicts[0] + "." if verdicts else
              "No reward hacking seen: the trained reward and the gold panel did not part ways "
              "for the configured number of validations in a row."]
    return "\n".join(lines)


def _device(module: Any) -> torch.device:
    try:
        return next(module.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


__all__ = ["HackingGuard", "diversity", "guard_report"]
