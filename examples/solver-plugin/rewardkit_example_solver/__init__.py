"""Example rewardkit plugin: one consistency solver, ``midpoint``.

``midpoint`` is the explicit midpoint rule on the probability-flow ODE, on the same skipping-step
grid as the built-in ``ddim`` and ``heun``: second order, two teacher evaluations per step.
"""

from .midpoint import MidpointSolver

__version__ = "0.1.0"
__all__ = ["MidpointSolver"]
