"""Built-in world plugin: registers rewardkit's own world through the public hooks."""

from __future__ import annotations

from ..hookspecs import hookimpl  # noqa: F401  (implementations are added below)
