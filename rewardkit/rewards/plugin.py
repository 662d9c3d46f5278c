"""Built-in rewards plugin: registers rewardkit's own rewards through the public hooks."""

from __future__ import annotations

from ..hookspecs import hookimpl  # noqa: F401  (implementations are added below)
