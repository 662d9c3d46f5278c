"""The Python API (``import rewardkit as rk``): components resolved through the plugin host."""

from __future__ import annotations

import dataclasses
import json

import pytest

import rewardkit as rk
from rewardkit import cli, hookimpl
from rewardkit.errors import ConfigError, PluginError, UnknownComponentError
from rewardkit.plugins import load_host, reset_host


class Reward:
    """A reward with a required and an optional parameter."""

    name = "api-reward"

    def __init__(self, model: str, scale: float = 1.0):
        self.model, self.scale = model, scale


class Proxy:
    """A proxy."""

    name = "api-proxy"

    def __init__(self, latent_channels: int = 4):
        self.latent_channels = latent_channels


class Solver:
    """A solver."""

    name = "api-solver"

    def __init__(self, alphas_cumprod=None, num_ddim_timesteps: int = 50):
        self.num_ddim_timesteps = num_ddim_timesteps


class Backbone:
    """A backbone."""

    name = "api-backbone"

    def __init__(self, pretrained_model_name_or_path: str, dtype: str = "float32"):
        self.path, self.dtype = pretrained_model_name_or_path, dtype


@dataclasses.dataclass
class RecipeConfig:
    learning_rate: float = 1e-4
    w_min: float = 3.0
    w_max: float = 15.0
    reward: str = "api-reward"

    def validate(self) -> None:
        if self.w_min > self.w_max:
            raise ConfigError(f"'w_min' ({self.w_min}) must not exceed 'w_max' ({self.w_max})")


class Recipe:
    """A recipe."""

    name = "api-recipe"
    Config = RecipeConfig

    def __init__(self, config: RecipeConfig):
        self.config = config


class NoConfigRecipe:
    """A recipe that forgot its Config."""

    name = "no-config"

    def __init__(self, **anything):
        pass


class ApiPlugin:
    @hookimpl
    def register_reward_models(self, register):
        register(Reward)

    @hookimpl
    def register_proxy_models(self, register):
        register(Proxy)

    @hookimpl
    def register_solvers(self, register):
        register(Solver)

    @hookimpl
    def register_backbones(self, register):
        register(Backbone)

    @hookimpl
    def register_recipes(self, register):
        register(Recipe)
        register(NoConfigRecipe)


@pytest.fixture
def api_host(fresh_host, monkeypatch):
    monkeypatch.setenv("REWARDKIT_LOAD_PLUGINS", "")
    host = load_host(extra_plugins=[("api-plugin", ApiPlugin())])
    reset_host(host)
    return host


def test_every_kind_resolves_through_the_host(api_host):
    rm = rk.reward_model("api-reward", model="hub/id", scale=2.0)
    assert isinstance(rm, Reward) and (rm.model, rm.scale) == ("hub/id", 2.0)
    assert rk.proxy_model("api-proxy", latent_channels=16).latent_channels == 16
    assert rk.solver("api-solver").num_ddim_timesteps == 50
    assert rk.backbone("api-backbone", pretrained_model_name_or_path="/tiny").path == "/tiny"
    recipe = rk.recipe("api-recipe", w_min=2)
    assert isinstance(recipe, Recipe) and recipe.config == RecipeConfig(w_min=2.0)


def test_the_api_uses_the_current_host(api_host, fresh_host):
    assert rk.reward_model("api-reward", model="m").model == "m"
    reset_host(load_host())  # without the plugin
    with pytest.raises(UnknownComponentError):
        rk.reward_model("api-reward", model="m")


def test_unknown_names_and_parameters(api_host):
    with pytest.raises(UnknownComponentError, match="no reward named 'nope'; registered rewards: "
                                                    ".*api-reward"):
        rk.reward_model("nope")
    with pytest.raises(KeyError):  # UnknownComponentError is also a KeyError
        rk.solver("nope")
    with pytest.raises(ConfigError, match="reward 'api-reward' has no parameter 'scael'; its "
                                          "parameters are: model, scale"):
        rk.reward_model("api-reward", model="m", scael=2)
    with pytest.raises(ConfigError, match=r"needs the parameter\(s\) 'model'"):
        rk.reward_model("api-reward")


def test_recipe_from_file_mapping_and_overrides(api_host, tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("learning_rate: 1.0e-5\nw-min: 4\n")
    recipe = rk.recipe("api-recipe", path, w_max="20")
    assert recipe.config == RecipeConfig(learning_rate=1e-5, w_min=4.0, w_max=20.0)
    recipe = rk.recipe("api-recipe", {"w_min": 5, "w_max": 6}, w_max=7)
    assert (recipe.config.w_min, recipe.config.w_max) == (5.0, 7.0)
    with pytest.raises(ConfigError, match="'w_min' \\(9.0\\) must not exceed 'w_max' \\(8.0\\)"):
        rk.recipe("api-recipe", w_min=9, w_max=8)
    with pytest.raises(ConfigError, match="unknown config key 'lerning_rate'; did you mean "
                                          "'learning_rate'?"):
        rk.recipe("api-recipe", lerning_rate=1)
    with pytest.raises(PluginError, match="recipe 'no-config' from plugin 'api-plugin' has no "
                                          "Config dataclass"):
        rk.recipe("no-config")


def test_conflicted_names_raise_naming_both_plugins(fresh_host, monkeypatch):
    monkeypatch.setenv("REWARDKIT_LOAD_PLUGINS", "")
    reset_host(load_host(extra_plugins=[("first", ApiPlugin()), ("second", ApiPlugin())]))
    with pytest.raises(PluginError, match=r"reward 'api-reward' is registered by several plugins "
                                          r"\(first, second\)"):
        rk.reward_model("api-reward", model="m")


def test_plugins_components_and_describe_match_the_cli(api_host, capsys):
    plugins = rk.plugins()
    assert {"api-plugin", "rewardkit.rewards.plugin"} <= {p["name"] for p in plugins}
    assert cli.run(["plugins", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == plugins

    assert [s.name for s in rk.components("recipe") if s.plugin == "api-plugin"] == [
        "api-recipe", "no-config"]
    spec = rk.describe("backbone", "api-backbone")
    assert spec.plugin == "api-plugin" and spec.description == "A backbone."
    assert [(p.name, p.required) for p in spec.params] == [
        ("pretrained_model_name_or_path", True), ("dtype", False)]
    with pytest.raises(UnknownComponentError, match="unknown kind 'model'"):
        rk.components("model")


def test_public_names():
    for name in ("plugins", "components", "describe", "reward_model", "proxy_model", "solver",
                 "backbone", "recipe", "hookimpl", "RewardkitError", "ConfigError",
                 "PluginError", "UnknownComponentError", "__version__"):
        assert name in rk.__all__ and hasattr(rk, name)
