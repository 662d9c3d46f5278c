"""Consistency solvers: the teacher's ODE step on the skipping-step timestep grid."""

from .base import ConsistencySolver, Denoiser
from .ddim import DDIMSolver
from .guidance import make_guided_denoiser, make_two_call_guided_denoiser, teacher_denoiser
from .heun import HeunSolver

__all__ = ["ConsistencySolver", "Denoiser", "DDIMSolver", "HeunSolver", "make_guided_denoiser",
           "make_two_call_guided_denoiser", "teacher_denoiser"]
