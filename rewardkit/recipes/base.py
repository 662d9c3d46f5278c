"""The recipe contract: a training procedure that composes the other component kinds.

A recipe class has a ``Config`` dataclass (its parameters, shown by ``rewardkit describe recipe``)
and is built with one ``Config`` instance; :meth:`Recipe.run` does the work.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping

from ..errors import ConfigError


@dataclass
class RecipeConfig:
    """Base for recipe configs. Override :meth:`validate` to check values before anything loads."""

    def validate(self) -> None:
        """Raise :class:`rewardkit.errors.ConfigError` naming the key of any invalid value."""


class Recipe(ABC):
    """Something ``rewardkit run NAME`` can run."""

    name: ClassVar[str] = "recipe"
    Config: ClassVar[type] = RecipeConfig
    #: Config keys that name a component: key -> (kind, base class). From Python, such a key
    #: also takes a built instance (``rk.recipe("rg-lcd", reward=my_rm)``; see
    #: :mod:`rewardkit.recipes.given`).
    component_keys: ClassVar[dict[str, tuple[str, type]]] = {}

    def __init__(self, config: Any, components: Mapping[str, Any] | None = None) -> None:
        """``components``: built objects for some of :attr:`component_keys`, used instead of
        building the registered component the config names."""
        from .given import mark_given

        self.components = dict(components or {})
        unknown = sorted(set(self.components) - set(self.component_keys))
        if unknown:
            raise ConfigError(f"recipe '{self.name}' takes no built component for "
                              f"{', '.join(unknown)}; it takes {', '.join(self.component_keys) or 'none'}")
        if self.components:
            mark_given(config, self.components)
        config.validate()
        self.config = config

    @classmethod
    def embedded_defaults(cls, chosen: dict[str, Any] | None = None) -> dict[str, Any]:
        """Config values used when the recipe is run with no config file and without its required
        keys (``rewardkit run NAME`` on a laptop): those of the registered preset that serves
        this recipe (:mod:`rewardkit.recipes.presets`). ``chosen``: the values the user gave,
        which win over these (a preset may fit its defaults to them). Empty: the recipe needs a
        config."""
        from .presets import preset_defaults

        return preset_defaults(cls.name, chosen)

    @abstractmethod
    def run(self, progress: bool = True) -> Path:
        """Run the recipe; return its output folder."""
