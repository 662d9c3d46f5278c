"""Counting the samples a loader skipped, by reason, with a few examples of each."""

from __future__ import annotations

from typing import Any

MAX_EXAMPLES = 3


class SkipLog:
    """Counts of skipped samples per reason (``"truncated image": 2``) plus example keys.

    A sample that is corrupt is met again every epoch; each meeting counts once, so the counts
    say how many batches' worth of reads were lost, and ``examples`` say where to look.
    """

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.examples: dict[str, list[str]] = {}
        self.loaded = 0

    def add(self, reason: str, where: str) -> None:
        """Record one skipped sample."""
        self.counts[reason] = self.counts.get(reason, 0) + 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < MAX_EXAMPLES and where not in examples:
            examples.append(where)

    @property
    def total(self) -> int:
        """All skipped samples, every reason together."""
        return sum(self.counts.values())

    def summary(self, source: str) -> str:
        """A few lines for a log or a terminal."""
        lines = [f"data from {source}: {self.loaded} samples loaded, {self.total} skipped"]
        for reason in sorted(self.counts, key=lambda r: (-self.counts[r], r)):
            where = "; ".join(self.examples.get(reason, []))
            lines.append(f"  {reason}: {self.counts[reason]} (e.g. {where})")
        return "\n".join(lines)

    def reasons(self) -> str:
        """The skip reasons on one line: ``"truncated image: 8, e.g. a.png, b.png; ..."``."""
        if not self.counts:
            return "nothing was skipped"
        parts = []
        for reason in sorted(self.counts, key=lambda r: (-self.counts[r], r)):
            examples = ", ".join(self.examples.get(reason, []))
            parts.append(f"{reason}: {self.counts[reason]}" + (f", e.g. {examples}" if examples else ""))
        return "skipped " + "; ".join(parts)

    def state_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable state."""
        return {"counts": dict(self.counts),
                "examples": {k: list(v) for k, v in self.examples.items()},
                "loaded": self.loaded}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.counts = {str(k): int(v) for k, v in state.get("counts", {}).items()}
        self.examples = {str(k): list(v) for k, v in state.get("examples", {}).items()}
        self.loaded = int(state.get("loaded", 0))
