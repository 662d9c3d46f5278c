"""Consistency solvers: the teacher's ODE step on the skipping-step timestep grid."""

from .base import ConsistencySolver, Denoiser

__all__ = ["ConsistencySolver", "Denoiser"]
