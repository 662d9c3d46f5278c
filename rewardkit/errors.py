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


class RemoteRewardError(RewardModelError):
    """A reward server (``rewardkit serve-reward``) could not be reached, refused the request or
    answered something unusable; the message names the server's URL.

    ``url``, ``problem`` and ``hint`` are kept apart so that the training loop can say the step
    in the same sentence (:meth:`at_step`).
    """

    def __init__(self, url: str | list[str], problem: str, hint: str = "") -> None:
        self.url, self.problem, self.hint = url, problem, hint
        urls = [url] if isinstance(url, str) else list(url)
        subject = f"reward server{'s' if len(urls) > 1 else ''} {', '.join(urls)}"
        super().__init__(f"{subject} {problem}" + (f"; {hint}" if hint else ""))

    def at_step(self, step: int, after: str = "") -> "RemoteRewardError":
        """The same error saying it happened at optimiser step ``step`` (``after``: what to do
        then, e.g. the checkpoint to resume from, replacing the hint)."""
        error = RemoteRewardError(self.url, f"{self.problem} at step {step}", after or self.hint)
        error.step = step
        return error
