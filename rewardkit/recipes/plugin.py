"""Built-in recipes plugin: registers rewardkit's own recipes through the public hooks."""

from __future__ import annotations

from ..hookspecs import hookimpl  # noqa: F401  (implementations are added below)
