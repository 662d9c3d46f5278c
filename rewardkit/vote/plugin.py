"""Built-in vote plugin: ``rewardkit vote`` (a blind A/B study page, its report and export)."""

from __future__ import annotations

from ..hookspecs import hookimpl


@hookimpl
def register_commands(register):
    from .cli import app

    register(app, "vote", help="Human evaluation: a blind A/B page of two models, win rates "
             "with intervals, the votes as an LRM preference set.")
