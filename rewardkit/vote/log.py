"""The votes file: one JSON object per line, appended as each vote is cast.

Appending is crash-safe and shared: every vote (the lines of one submission) is written with one
``write`` on a file opened for appending, under an exclusive ``flock`` where the platform has one,
and ``fsync``-ed before the page moves on, so a killed server or a closed tab loses nothing and
several servers (or several raters of one server) can write one file. A line cut short by a crash
is never joined to the next vote: a writer that finds the file not ending in a newline starts a
new line first.

Reading is tolerant: a line that is not a vote (cut short, edited by hand) is reported by its
number and skipped; every other vote is kept.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from ..errors import ConfigError

try:  # POSIX; elsewhere a single server per file is safe, several are not
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

#: What a rater may answer, as cast (the image's side) and as counted (the model).
CHOICES = ("left", "right", "tie", "skip")
WINNERS = ("a", "b", "tie", "skip")
#: The fields every vote line has.
FIELDS = ("study", "pair", "prompt", "category", "seed", "model_a", "model_b", "left",
          "criterion", "choice", "winner", "rater", "time", "image_a", "image_b")


def winner_of(choice: str, left: str) -> str:
    """The model a side choice picks: ``"left"`` with model ``left`` shown left is ``left``."""
    if choice in ("tie", "skip"):
        return choice
    right = "b" if left == "a" else "a"
    return left if choice == "left" else right


def check_vote(vote: Any) -> str | None:
    """Why ``vote`` (a parsed line) is not a vote, or ``None`` when it is one."""
    if not isinstance(vote, dict):
        return f"a {type(vote).__name__}, not an object"
    missing = [key for key in FIELDS if key not in vote]
    if missing:
        return f"no {', '.join(missing)}"
    if vote["choice"] not in CHOICES:
        return f"choice {vote['choice']!r} is not one of {', '.join(CHOICES)}"
    if vote["left"] not in ("a", "b"):
        return f"left {vote['left']!r} is not a or b"
    if vote["winner"] != winner_of(vote["choice"], vote["left"]):
        return f"winner {vote['winner']!r} contradicts choice {vote['choice']!r} with " \
               f"{vote['left']!r} on the left"
    if not isinstance(vote["rater"], str) or not vote["rater"]:
        return "an empty rater"
    return None


@dataclass
class Votes:
    """What a votes file holds: the votes, and the lines that were not votes (number, why)."""

    votes: list[dict[str, Any]] = field(default_factory=list)
    bad_lines: list[tuple[int, str]] = field(default_factory=list)

    def warning(self, path: str | Path) -> str | None:
        """One sentence about skipped lines (``None`` when there were none)."""
        if not self.bad_lines:
            return None
        shown = ", ".join(f"{n} ({why})" for n, why in self.bad_lines[:3])
        more = f" and {len(self.bad_lines) - 3} more" if len(self.bad_lines) > 3 else ""
        return (f"{path}: skipped {len(self.bad_lines)} line(s) that are not votes: line "
                f"{shown}{more}; the other {len(self.votes)} votes are kept (fix or delete those "
                "lines to count them)")


class VoteLog:
    """A votes file: :meth:`append` votes, :meth:`read` them back (see the module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @contextlib.contextmanager
    def locked(self) -> Iterator[int]:
        """The file open for reading and appending, exclusively locked (created if missing)."""
        if self.path.is_dir():
            raise ConfigError(f"votes file {self.path} is a folder; pass a .jsonl file")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ConfigError(f"votes file {self.path} cannot be opened for writing "
                              f"({exc.strerror}); check its permissions or pass another -o") from None
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            os.close(fd)  # closing releases the lock

    def append(self, votes: Sequence[dict[str, Any]],
               unless: Callable[[Votes], bool] | None = None) -> bool:
        """Append ``votes`` as lines in one write, then ``fsync`` (see the module docstring).

        ``unless(current)``, when given, sees the file's votes under the lock, so nobody can
        append between the check and the write; when it returns True nothing is written.
        Returns whether the votes were written."""
        for vote in votes:
            problem = check_vote(vote)
            if problem:
                raise ValueError(f"not a vote ({problem}): {vote!r}")
        data = "".join(json.dumps(vote, ensure_ascii=False) + "\n" for vote in votes).encode()
        with self.locked() as fd:
            size = os.fstat(fd).st_size
            if unless is not None and unless(parse_lines(os.pread(fd, size, 0) if size else b"")):
                return False
            if size and os.pread(fd, 1, size - 1) != b"\n":
                data = b"\n" + data  # a line cut short by a crash stays a line of its own
            os.write(fd, data)
            os.fsync(fd)
        return True

    def read(self) -> Votes:
        """Every vote in the file (none if it does not exist), bad lines reported, not fatal."""
        if not self.path.exists():
            return Votes()
        try:
            raw = self.path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"votes file {self.path} cannot be read ({exc.strerror}); check "
                              "the path and its permissions") from None
        return parse_lines(raw)


def parse_lines(raw: bytes) -> Votes:
    """The votes in ``raw`` (a votes file's bytes), each bad line noted with its number."""
    out = Votes()
    for number, line in enumerate(raw.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            vote = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            out.bad_lines.append((number, "not JSON"))
            continue
        problem = check_vote(vote)
        if problem:
            out.bad_lines.append((number, problem))
        else:
            out.votes.append(vote)
    return out


__all__ = ["CHOICES", "FIELDS", "VoteLog", "Votes", "WINNERS", "check_vote", "parse_lines",
           "winner_of"]
