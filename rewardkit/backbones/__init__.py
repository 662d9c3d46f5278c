"""Backbones: latent diffusion teachers (load, encode, decode, build the student, save)."""

from .base import Backbone
from .conditioning import Conditioning

__all__ = ["Backbone", "Conditioning"]
