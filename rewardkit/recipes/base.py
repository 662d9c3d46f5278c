"""The recipe contract: a training procedure that composes the other component kinds.

A recipe class has a ``Config`` dataclass (its parameters, shown by ``rewardkit describe recipe``)
and is built with one ``Config`` instance; :meth:`Recipe.run` does the work.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar


@dataclass
class RecipeConfig:
    """Base for recipe configs. Override :meth:`validate` to check values before anything loads."""

    def validate(self) -> None:
        """Raise :class:`rewardkit.errors.ConfigError` naming the key of any invalid value."""


class Recipe(ABC):
    """Something ``rewardkit run NAME`` can run."""

    name: ClassVar[str] = "recipe"
    Config: ClassVar[type] = RecipeConfig

    def __init__(self, config: Any) -> None:
        config.validate()
        self.config = config

    @classmethod
    def embedded_defaults(cls, chosen: dict[str, Any] | None = None) -> dict[str, Any]:
        """Config values used when the recipe is run with no config file and without its required
        keys (``rewardkit run NAME`` on a laptop). ``chosen``: the values the user gave, which
        win over these (a recipe may fit its defaults to them). Empty: the recipe needs a
        config."""
        return {}

    @abstractmethod
    def run(self, progress: bool = True) -> Path:
        """Run the recipe; return its output folder."""
