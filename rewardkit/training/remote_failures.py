"""Saying the step of a reward server's failure during training, and what to do next."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from ..errors import RemoteRewardError
from .checkpoint import list_checkpoints


@contextlib.contextmanager
def naming_the_step_of_remote_failures(step: int, output_dir: str | Path) -> Iterator[None]:
    """A reward server failing inside the block (optimiser step ``step``) is said with the
    step and what to do: the newest checkpoint in ``output_dir`` (untouched: the failed step
    saved nothing) and the resume option."""
    try:
        yield
    except RemoteRewardError as error:
        if getattr(error, "step", None) is not None:
            raise
        found = list_checkpoints(output_dir)
        after = ("start the server again and continue from the newest checkpoint, "
                 f"{found[-1][1]} (step {found[-1][0]}), with --resume_from_checkpoint latest"
                 if found else "no checkpoint was written yet; start the server again and run "
                 "the same command")
        raise error.at_step(step, after) from None
