"""Exceptions with messages a user can act on. The CLI prints them as one red sentence."""

from __future__ import annotations


class RewardkitError(Exception):
    """Base class: an error caused by input, configuration or a plugin, not by a bug."""


class PluginError(RewardkitError):
    """A plugin failed to load, or its hook raised, or it clashes with another plugin."""


class UnknownComponentError(RewardkitError, KeyError):
    """No component of that kind and name is registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ConfigError(RewardkitError, ValueError):
    """A configuration value is invalid; the message names the key."""


class RewardModelError(RewardkitError):
    """A reward model returned something unusable (NaN, wrong shape) or was misused."""


class DataError(RewardkitError):
    """A dataset cannot be read at all (a single corrupt sample is skipped, not raised)."""
