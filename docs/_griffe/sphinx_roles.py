"""A griffe extension for the API reference: rewardkit's docstrings use Sphinx roles
(``:class:`rewardkit.rewards.RewardModel```, ``:meth:`run```) and reST literal-block markers
(``text::``), which Markdown would print as they are. This turns a role into a code span
(``~a.b.C`` into ``C``, as Sphinx shows it) and ``text::`` into ``text:``."""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|exc|obj|const):`(~?)([^`]+)`")


def _role(match: re.Match) -> str:
    short, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


def convert(text: str) -> str:
    """Markdown for a docstring written with Sphinx roles and reST literal blocks."""
    text = ROLE.sub(_role, text)
    return re.sub(r"(?<=\S)::$", ":", re.sub(r"^::$", "", text, flags=re.M), flags=re.M)


class SphinxRoles(griffe.Extension):
    """Rewrite every docstring with :func:`convert` as it is read."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = convert(obj.docstring.value)
