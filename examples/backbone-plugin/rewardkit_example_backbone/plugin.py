"""The plugin module named by the ``rewardkit`` entry point: one hook, one backbone."""

from __future__ import annotations

from rewardkit import hookimpl


@hookimpl
def register_backbones(register):
    """Register ``sd-taesd`` (the name comes from the class's ``name``)."""
    from .backbone import TinyDecoderBackbone

    register(TinyDecoderBackbone)
