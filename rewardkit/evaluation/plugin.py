"""Built-in evaluation plugin: the papers' prompt sets, FID and KID, and ``rewardkit eval``."""

from __future__ import annotations

from ..hookspecs import hookimpl
from .builtin_sets import BUILTIN_PROMPT_SETS
from .metrics import BUILTIN_METRICS


@hookimpl
def register_prompt_sets(register):
    for factory in BUILTIN_PROMPT_SETS:
        register(factory)


@hookimpl
def register_metrics(register):
    for factory in BUILTIN_METRICS:
        register(factory)


@hookimpl
def register_commands(register):
    from .cli import eval_command

    register(eval_command, "eval", help="Evaluate students (and a teacher) on a prompt set: "
             "reward models, FID, win rates, a report.")
