"""What the voting page does, in plain Python (no web dependency): which pair a rater sees
next, which model goes on which side, and how a choice is recorded.

- **Scheduling.** A rater is shown only pairs they have not voted on (or skipped), read from
  the votes file at every request, so several servers sharing one file, or a server started
  again after a crash, never show a rater a pair twice. Among those, pairs with the fewest
  votes so far (from anyone) come first, so a study with several raters covers every pair
  before it doubles any; the rest is random.
- **Sides.** Each time a pair is shown, a coin decides which model is on the left; the page
  gets only the two images, and the choice comes back as ``left`` / ``right`` / ``tie`` /
  ``skip``, turned into a model here.
- **Recording.** A submission becomes one vote per criterion, appended to the file in one
  write (:class:`~rewardkit.vote.log.VoteLog`). A rater voting from two tabs at once is caught
  under the file's lock: the second vote on the same pair is not recorded.

::

    session = VotingSession(study, VoteLog("votes.jsonl"), criteria=["overall"])
    shown = session.next_pair("alice")
    left, right = session.images(shown)
    session.record(shown, {"overall": "left"})
"""

from __future__ import annotations

import random
import secrets
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import ConfigError
from .log import VoteLog, Votes, winner_of
from .study import Pair, Study

#: The criteria a page may ask about, with the question the rater reads.
CRITERIA: dict[str, str] = {
    "overall": "Which image is better for the prompt, overall?",
    "alignment": "Which image matches the prompt better?",
    "quality": "Which image looks better (quality, whatever the prompt)?",
}
MAX_RATER_LENGTH = 64


def parse_criteria(text: str | Sequence[str]) -> list[str]:
    """``"overall,quality"`` -> ``["overall", "quality"]``, each one of :data:`CRITERIA`."""
    names = [c.strip() for c in (text.split(",") if isinstance(text, str) else text) if c.strip()]
    if not names:
        raise ConfigError(f"--criteria: name at least one of {', '.join(CRITERIA)}")
    unknown = [c for c in names if c not in CRITERIA]
    if unknown:
        raise ConfigError(f"--criteria: {unknown[0]!r} is not one of {', '.join(CRITERIA)}")
    return list(dict.fromkeys(names))


def clean_rater(rater: str | None) -> str:
    """The rater id as recorded: stripped, non-empty, at most 64 characters, one line."""
    rater = " ".join((rater or "").split())
    if not rater:
        raise ConfigError("type a rater id (your name or initials) first")
    if len(rater) > MAX_RATER_LENGTH:
        raise ConfigError(f"a rater id has at most {MAX_RATER_LENGTH} characters")
    return rater


@dataclass
class Shown:
    """A pair as shown to a rater: which model is on the left (kept on the server)."""

    rater: str
    pair: Pair
    left: str  # "a" or "b"
    token: str  # an opaque id of this showing


class VotingSession:
    """Schedules pairs for raters and records their votes (see the module docstring).

    Args:
        study: the study (its images already generated).
        log: the votes file.
        criteria: what each submission answers, names of :data:`CRITERIA`.
        rng: the source of sides and order (a seeded ``random.Random`` in tests).
    """

    def __init__(self, study: Study, log: VoteLog, criteria: Sequence[str] = ("overall",),
                 rng: random.Random | None = None) -> None:
        self.study, self.log = study, log
        self.criteria = parse_criteria(criteria)
        self.rng = rng or random.SystemRandom()
        self._lock = threading.Lock()
        self._showing: dict[str, dict[int, str]] = {}  # rater -> pair shown now -> token
        self.check_file()

    def check_file(self) -> None:
        """Refuse a votes file holding another study's votes (it would mix two studies)."""
        others = {v["study"] for v in self.log.read().votes} - {self.study.id}
        if others:
            raise ConfigError(f"votes file {self.log.path} holds votes of another study "
                              f"({', '.join(sorted(others))}; this one is {self.study.id}: "
                              f"{self.study.title()}); pass another -o file")

    # ------------------------------------------------------------ scheduling

    def _votes(self) -> list[dict[str, Any]]:
        return [v for v in self.log.read().votes if v["study"] == self.study.id]

    def done_by(self, rater: str) -> set[int]:
        """Pairs ``rater`` has voted on or skipped (from the file, any server)."""
        return {int(v["pair"]) for v in self._votes() if v["rater"] == rater}

    def progress(self, rater: str) -> tuple[int, int]:
        """``(pairs done by rater, pairs in the study)``."""
        return len(self.done_by(clean_rater(rater))), self.study.num_pairs

    def next_pair(self, rater: str) -> Shown | None:
        """The next pair for ``rater`` with its sides drawn, or ``None`` when they have seen
        every pair. A pair on screen in another tab of the same rater (not answered yet) comes
        only after every other pair, in case that tab was closed; :meth:`record` keeps it from
        being answered twice."""
        rater = clean_rater(rater)
        with self._lock:
            votes = self._votes()
            seen = {int(v["pair"]) for v in votes if v["rater"] == rater}
            showing = self._showing.setdefault(rater, {})
            unseen = [i for i in range(self.study.num_pairs) if i not in seen]
            open_pairs = [i for i in unseen if i not in showing] or unseen
            if not open_pairs:
                return None
            counts: dict[int, int] = {}
            for vote in votes:
                counts[int(vote["pair"])] = counts.get(int(vote["pair"]), 0) + 1
            fewest = min(counts.get(i, 0) for i in open_pairs)
            index = self.rng.choice([i for i in open_pairs if counts.get(i, 0) == fewest])
            shown = Shown(rater, self.study.pair(index), self.rng.choice("ab"),
                          secrets.token_hex(8))
            showing[index] = shown.token
            return shown

    def release(self, shown: Shown) -> None:
        """Forget that ``shown`` is on a rater's screen (a tab closed, a rater switched)."""
        with self._lock:
            showing = self._showing.get(shown.rater, {})
            if showing.get(shown.pair.index) == shown.token:
                del showing[shown.pair.index]

    # ------------------------------------------------------------ images

    def image_paths(self, shown: Shown) -> tuple[Path, Path]:
        """``(left, right)`` image files of ``shown``."""
        right = "b" if shown.left == "a" else "a"
        return (self.study.image(shown.left, shown.pair.index),
                self.study.image(right, shown.pair.index))

    def images(self, shown: Shown, side: int = 256) -> tuple[Any, Any]:
        """``(left, right)`` as fresh PIL images of one size, with nothing of the files kept
        (no name, no metadata): what the page shows."""
        from .display import blind_pair

        return blind_pair(*self.image_paths(shown), side=side)

    # ------------------------------------------------------------ recording

    def record(self, shown: Shown, choices: Mapping[str, str] | None) -> list[dict[str, Any]]:
        """Record the rater's answer to ``shown``: ``{criterion: "left"|"right"|"tie"}`` for
        every criterion, or ``None`` to skip the pair. Returns the votes written; none when
        the rater had already answered this pair (another tab, another server)."""
        if choices is None:
            choices = {criterion: "skip" for criterion in self.criteria}
        missing = [c for c in self.criteria if c not in choices]
        if missing:
            raise ConfigError(f"choose an answer for: {', '.join(CRITERIA[c] for c in missing)}")
        for criterion, choice in choices.items():
            if criterion not in self.criteria:
                raise ConfigError(f"criterion {criterion!r} is not asked in this study")
            if choice not in ("left", "right", "tie", "skip"):
                raise ConfigError(f"answer {choice!r} is not left, right, tie or skip")
        study, pair = self.study, shown.pair
        time = datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
        votes = []
        for criterion in self.criteria:
            choice = choices[criterion]
            votes.append({
                "study": study.id, "pair": pair.index, "prompt": pair.prompt,
                "category": pair.category, "seed": pair.seed,
                "model_a": study.arms[0].describe(), "model_b": study.arms[1].describe(),
                "left": shown.left, "criterion": criterion, "choice": choice,
                "winner": winner_of(choice, shown.left), "rater": shown.rater, "time": time,
                "image_a": self._relative(study.image("a", pair.index)),
                "image_b": self._relative(study.image("b", pair.index))})

        def answered(current: Votes) -> bool:
            return any(v["study"] == study.id and v["rater"] == shown.rater
                       and int(v["pair"]) == pair.index for v in current.votes)

        with self._lock:
            written = self.log.append(votes, unless=answered)
        self.release(shown)
        return votes if written else []

    def _relative(self, path: Path) -> str:
        """``path`` relative to the votes file's folder when it is inside it (a study folder
        moved as a whole still resolves), else absolute."""
        base = self.log.path.resolve().parent
        try:
            return str(path.resolve().relative_to(base))
        except ValueError:
            return str(path.resolve())


__all__ = ["CRITERIA", "Shown", "VotingSession", "clean_rater", "parse_criteria"]
