"""Backbones: latent diffusion teachers (load, encode, decode, build the student, save)."""

from .base import Backbone

__all__ = ["Backbone"]
