"""The hook specifications of the rewardkit plugin host.

Every component kind is registered the same way: the host calls a hook with a ``register``
callback, and the plugin calls ``register`` once per component it provides. Built-in components
use these very hooks (see ``rewardkit.plugins.DEFAULT_PLUGINS``), so a third-party plugin is a
peer of the built-ins, not a second-class extension.

``register(factory, name=None, description=None)``: ``factory`` is a class (or callable) that
builds the component from keyword parameters; its parameters and defaults (the fields of its
``Config`` dataclass where it has one, else its signature) are what ``rewardkit describe`` shows.
``name`` defaults to ``factory.name``; ``description`` to the first line of its docstring.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("rewardkit")
hookimpl = pluggy.HookimplMarker("rewardkit")
"""Marks a plugin's hook functions (``from rewardkit import hookimpl``): ``@hookimpl def
register_reward_models(register): ...``."""


# ---------------------------------------------------------------- components


@hookspec
def register_reward_models(register):
    """Register reward models: pixels (or latents) and prompts in, one score per image out.

    Each factory builds a :class:`rewardkit.rewards.RewardModel`.
    """


@hookspec
def register_proxy_models(register):
    """Register proxy reward models (the paper's latent proxy RM, LRM), trained online.

    Each factory builds a :class:`rewardkit.proxies.ProxyRewardModel`.
    """


@hookspec
def register_solvers(register):
    """Register consistency solvers: the teacher's ODE step on the skipping-step grid.

    Each factory builds a :class:`rewardkit.solvers.ConsistencySolver`.
    """


@hookspec
def register_backbones(register):
    """Register backbones: load a teacher, encode prompts and images, decode latents, save a student.

    Each factory builds a :class:`rewardkit.backbones.Backbone`.
    """


@hookspec
def register_recipes(register):
    """Register recipes: training procedures that compose the other kinds (``rewardkit run NAME``).

    Each factory is a :class:`rewardkit.recipes.Recipe` subclass with a ``Config`` dataclass.
    """


@hookspec
def register_data_sources(register):
    """Register data sources addressed by a scheme: a data spec ``SCHEME:rest`` (in
    ``train_shards_path_or_url`` or any other data key) is read by the source registered as
    ``SCHEME`` (the embedded world registers ``world``: ``world:train``).

    Each factory has a ``name`` (the scheme) and a ``from_spec(spec, resolution=None)``
    classmethod returning a :class:`rewardkit.data.SampleSource`; it raises
    :class:`rewardkit.errors.ConfigError` naming the spec when the spec is bad. With
    ``resolution=None`` it only checks the spec (nothing heavy may load then).
    """


@hookspec
def register_presets(register):
    """Register presets: the settings a recipe runs with when it is started without its
    required keys (``rewardkit run rg-lcd`` on a laptop), and what follows such a run.

    Each factory has a ``name``, ``recipes`` (the recipe names it serves), a
    ``defaults(recipe, chosen)`` method returning config overrides (``chosen``: the values the
    user gave, which win; the preset may fit its defaults to them) and optionally
    ``after_run(recipe, output_dir)`` (called on the main process when the run's ``report`` key
    is set, e.g. the world's evaluation and report). A recipe uses the first preset, by name,
    that serves it. A preset may also have ``eval_defaults()`` returning ``{"prompts": ...,
    "metrics": ...}``: what ``rewardkit eval`` uses for an option the user did not give (the
    first such preset, by name; with none, ``rewardkit eval`` asks for both).
    """


@hookspec
def register_prompt_sets(register):
    """Register prompt sets for ``rewardkit eval --prompts NAME`` (the HPSv2 benchmark,
    PartiPrompts, the embedded world's test split...).

    Each factory has a ``name`` and builds with keyword parameters (``source``: a local path or
    hub dataset id; ``limit``; ``seed``...); its ``load()`` returns a
    :class:`rewardkit.evaluation.PromptSet`: prompts, a category per prompt and, optionally,
    reference images for distribution metrics.
    """


@hookspec
def register_metrics(register):
    """Register distribution metrics for ``rewardkit eval --metrics``: FID, KID, the world's
    Frechet distance. (Every registered reward model is a per-image metric by its name already.)

    Each factory has a ``name`` and builds an object whose ``compute(generated, reference)``
    takes two ``[N, 3, H, W]`` image tensors in [0, 1] and returns ``{"name": value}``
    (:class:`rewardkit.evaluation.DistributionMetric`).
    """


# ---------------------------------------------------------------- command line


@hookspec
def register_commands(register):
    """Register command-line verbs.

    ``register(app_or_command, name, help=None)``: a ``typer.Typer`` becomes a command group
    (``rewardkit NAME ...``), a plain function a single command.
    """
