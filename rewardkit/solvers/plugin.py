"""Built-in solvers plugin: registers rewardkit's own solvers through the public hooks."""

from __future__ import annotations

from ..hookspecs import hookimpl


@hookimpl
def register_solvers(register):
    """The skipping-step DDIM solver of the paper and a second-order Heun solver on the same grid."""
    from .ddim import DDIMSolver
    from .heun import HeunSolver

    register(DDIMSolver)
    register(HeunSolver)
