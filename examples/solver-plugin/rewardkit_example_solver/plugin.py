"""The plugin module named by the ``rewardkit`` entry point: one hook, one solver."""

from __future__ import annotations

from rewardkit import hookimpl

from .midpoint import MidpointSolver


@hookimpl
def register_solvers(register):
    """Register ``midpoint`` (name and description come from the class)."""
    register(MidpointSolver)
