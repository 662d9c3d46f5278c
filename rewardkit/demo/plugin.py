"""Built-in demo plugin: ``rewardkit demo`` (gradio, an optional extra)."""

from __future__ import annotations

from ..hookspecs import hookimpl


@hookimpl
def register_commands(register):
    from .cli import demo_command

    register(demo_command, "demo", help="A local web page comparing a student with its teacher.")
