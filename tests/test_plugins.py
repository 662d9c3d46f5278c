"""The plugin host with in-file plugins: hook discovery, registration, failure containment,
conflicts, allow/deny lists and tracing."""

from __future__ import annotations

import dataclasses
import inspect
import types

import pytest

from rewardkit import hookimpl, hookspecs
from rewardkit.components import KINDS
from rewardkit.errors import ConfigError, PluginError, UnknownComponentError
from rewardkit.plugins import (DEFAULT_PLUGINS, HOOK_NAMES, canonical_name, get_host, load_host,
                               reset_host)


class Sharp:
    """A toy reward with two parameters."""

    name = "toy-reward"

    def __init__(self, strength: float = 0.5, label: str = "x"):
        self.strength, self.label = strength, label


@dataclasses.dataclass
class ToyRecipeConfig:
    steps: int = 3
    output_dir: str = dataclasses.field(default="out", metadata={"help": "where results go"})


class ToyRecipe:
    """A toy recipe built from a Config dataclass."""

    name = "toy-recipe"
    Config = ToyRecipeConfig

    def __init__(self, config: ToyRecipeConfig):
        self.config = config


class ToyData:
    """A toy data source (scheme ``toy``)."""

    name = "toy"

    @classmethod
    def from_spec(cls, spec, resolution=None):
        return [spec, resolution]


class ToyPreset:
    """A toy preset for the toy recipe."""

    name = "toy-preset"
    recipes = ("toy-recipe",)

    def defaults(self, recipe, chosen):
        return {"steps": 3}


class ToyPrompts:
    """Two toy prompts."""

    name = "toy-prompts"

    def load(self):
        from rewardkit.evaluation import PromptSet

        return PromptSet(self.name, ["a", "b"])


class ToyMetric:
    """A toy distribution metric."""

    name = "toy-metric"

    def compute(self, generated, reference):
        return {self.name: float(generated.mean() - reference.mean())}


class AllKinds:
    """An in-file plugin implementing every hook."""

    @hookimpl
    def register_reward_models(self, register):
        register(Sharp)

    @hookimpl
    def register_proxy_models(self, register):
        register(lambda latent_channels=4: ("proxy", latent_channels), name="toy-proxy",
                 description="A toy proxy.")

    @hookimpl
    def register_solvers(self, register):
        register(lambda num_ddim_timesteps=50: num_ddim_timesteps, name="toy-solver")

    @hookimpl
    def register_backbones(self, register):
        def toy_backbone(path: str, dtype: str = "float32"):
            """A toy backbone needing a path."""
            return (path, dtype)

        register(toy_backbone, name="toy-backbone")

    @hookimpl
    def register_recipes(self, register):
        register(ToyRecipe)

    @hookimpl
    def register_data_sources(self, register):
        register(ToyData)

    @hookimpl
    def register_presets(self, register):
        register(ToyPreset)

    @hookimpl
    def register_prompt_sets(self, register):
        register(ToyPrompts)

    @hookimpl
    def register_metrics(self, register):
        register(ToyMetric)

    @hookimpl
    def register_commands(self, register):
        register(lambda: None, name="toy-command", help="Does nothing.")


def namespace(**attributes) -> types.ModuleType:
    """A module-like plugin object holding ``attributes``."""
    module = types.ModuleType("in_file_plugin")
    module.__dict__.update(attributes)
    return module


def hook_names_in_specs() -> set[str]:
    return {name for name, obj in inspect.getmembers(hookspecs, inspect.isfunction)
            if hasattr(obj, "rewardkit_spec")}


def test_one_documented_hook_per_kind_plus_commands():
    assert hook_names_in_specs() == set(HOOK_NAMES) == {*KINDS.values(), "register_commands"}
    for name in HOOK_NAMES:
        function = getattr(hookspecs, name)
        assert list(inspect.signature(function).parameters) == ["register"]
        assert inspect.getdoc(function), f"{name} has no docstring"


def test_builtin_plugins_are_discovered(fresh_host):
    host = get_host()
    for module in DEFAULT_PLUGINS:
        assert host.plugins[module].builtin
        assert host.plugins[module].status in ("ok", "conflict"), host.plugins[module].errors
    assert host.pm.get_plugin(DEFAULT_PLUGINS[0]) is not None
    assert get_host() is host  # built once per process
    reset_host()
    assert get_host() is not host


def test_in_file_plugin_registers_every_kind(fresh_host):
    host = load_host(extra_plugins=[("all-kinds", AllKinds())])
    info = host.plugins["all-kinds"]
    assert info.status == "ok" and not info.builtin and info.errors == []
    assert info.components == {"reward": ["toy-reward"], "proxy": ["toy-proxy"],
                               "solver": ["toy-solver"], "backbone": ["toy-backbone"],
                               "recipe": ["toy-recipe"], "data": ["toy"], "preset": ["toy-preset"],
                               "prompts": ["toy-prompts"], "metric": ["toy-metric"]}
    assert info.commands == ["toy-command"] and host.commands["toy-command"].help == "Does nothing."

    reward = host.get("reward", "toy-reward")
    assert (reward.kind, reward.plugin, reward.description) == ("reward", "all-kinds",
                                                                 "A toy reward with two parameters.")
    assert [(p.name, p.type, p.default, p.required) for p in reward.params] == [
        ("strength", "float", 0.5, False), ("label", "str", "x", False)]
    assert host.get("proxy", "toy-proxy").description == "A toy proxy."

    backbone = host.get("backbone", "toy-backbone")
    assert [(p.name, p.required) for p in backbone.params] == [("path", True), ("dtype", False)]
    assert backbone.build(path="p") == ("p", "float32")
    with pytest.raises(ConfigError, match=r"backbone 'toy-backbone' needs the parameter\(s\) 'path'"):
        backbone.build()

    recipe = host.get("recipe", "toy-recipe")
    assert [(p.name, p.default, p.help) for p in recipe.params] == [
        ("steps", 3, ""), ("output_dir", "out", "where results go")]
    built = recipe.build(steps=7)
    assert isinstance(built, ToyRecipe) and built.config == ToyRecipeConfig(steps=7)
    with pytest.raises(ConfigError, match=r"recipe 'toy-recipe' has no parameter 'stpes'; its "
                                          r"parameters are: output_dir, steps"):
        recipe.build(stpes=1)


def test_unknown_kind_and_name_errors_list_the_valid_ones(fresh_host):
    host = load_host(extra_plugins=[("all-kinds", AllKinds())])
    with pytest.raises(UnknownComponentError, match="unknown kind 'rewards'; kinds are: reward, "
                                                    "proxy, solver, backbone, recipe"):
        host.list("rewards")
    with pytest.raises(UnknownComponentError, match=r"no solver named 'nope'; registered solvers: "
                                                    r".*toy-solver"):
        host.get("solver", "nope")


def test_hook_that_raises_marks_only_its_plugin_broken(fresh_host):
    class Raises:
        @hookimpl
        def register_reward_models(self, register):
            register(Sharp, name="registered-before-the-error")
            raise ValueError("boom")

        @hookimpl
        def register_solvers(self, register):
            register(lambda: 1, name="fine-solver")

    host = load_host(extra_plugins=[("raises", Raises()), ("all-kinds", AllKinds())])
    info = host.plugins["raises"]
    assert info.status == "broken"
    assert info.errors == ["register_reward_models raised ValueError: boom"]
    assert "registered-before-the-error" not in host.components["reward"]
    assert host.get("solver", "fine-solver").build() == 1
    assert host.plugins["all-kinds"].status == "ok"
    assert host.get("reward", "toy-reward").plugin == "all-kinds"


@pytest.mark.parametrize("plugin, error", [
    (namespace(register_reward_models=hookimpl(lambda reg: None)),
     "could not register: PluginValidationError"),
    (namespace(register_reward_model=hookimpl(lambda register: None)),
     "implements unknown hook 'register_reward_model'"),
    (namespace(register_reward_models=hookimpl(lambda register: register(object()))),
     "is not callable"),
    (namespace(register_solvers=hookimpl(lambda register: register(lambda: 0))),
     "a solver registered by 'bad' has no name"),
])
def test_malformed_plugins_are_broken_with_a_reason(fresh_host, plugin, error):
    host = load_host(extra_plugins=[("bad", plugin), ("all-kinds", AllKinds())])
    assert host.plugins["bad"].status == "broken"
    assert error in " ".join(host.plugins["bad"].errors)
    assert host.plugins["all-kinds"].status == "ok"


def test_duplicate_component_names_name_both_plugins(fresh_host):
    class Clone:
        @hookimpl
        def register_reward_models(self, register):
            register(Sharp)

    host = load_host(extra_plugins=[("all-kinds", AllKinds()), ("clone", Clone())])
    expected = "reward 'toy-reward' is registered by several plugins: 'all-kinds', 'clone'"
    for name in ("all-kinds", "clone"):
        assert host.plugins[name].status == "conflict"
        assert host.plugins[name].errors == [expected]
    with pytest.raises(PluginError) as excinfo:
        host.get("reward", "toy-reward")
    assert "all-kinds" in str(excinfo.value) and "clone" in str(excinfo.value)
    assert "REWARDKIT_DISABLE_PLUGINS" in str(excinfo.value)
    # other components of the same plugin are unaffected
    assert host.get("solver", "toy-solver").build() == 50


def test_duplicate_command_names_break_the_second_plugin(fresh_host):
    class Commands:
        @hookimpl
        def register_commands(self, register):
            register(lambda: None, name="toy-command")

    host = load_host(extra_plugins=[("all-kinds", AllKinds()), ("again", Commands())])
    assert host.commands["toy-command"].plugin == "all-kinds"
    assert host.plugins["again"].status == "broken"
    assert host.plugins["again"].errors == [
        "command 'toy-command' is already registered by 'all-kinds'"]


def test_two_plugins_with_one_name_keep_the_first(fresh_host):
    host = load_host(extra_plugins=[("same", AllKinds()), ("same", namespace())])
    assert host.plugins["same"].status == "ok"
    assert "also calls itself 'same'" in host.plugins["same"].errors[0]
    assert host.get("reward", "toy-reward").plugin == "same"


def test_disable_list_blocks_builtins_and_in_file_plugins(fresh_host, monkeypatch):
    monkeypatch.setenv("REWARDKIT_DISABLE_PLUGINS", f"{DEFAULT_PLUGINS[-1]}, All_Kinds, not-a-plugin")
    host = load_host(extra_plugins=[("all-kinds", AllKinds())])
    assert host.plugins[DEFAULT_PLUGINS[-1]].status == "disabled"
    assert host.plugins[DEFAULT_PLUGINS[-1]].note == "in REWARDKIT_DISABLE_PLUGINS"
    assert host.pm.get_plugin(DEFAULT_PLUGINS[-1]) is None
    assert host.plugins["all-kinds"].status == "disabled"
    assert "toy-reward" not in host.components["reward"]
    assert host.unknown_names == ["not-a-plugin"]


def test_allow_list_does_not_touch_builtins_and_reports_unknown_names(fresh_host, monkeypatch):
    monkeypatch.setenv("REWARDKIT_LOAD_PLUGINS", "nothing-like-this")
    host = load_host()
    assert all(host.plugins[m].status != "disabled" for m in DEFAULT_PLUGINS)
    assert host.unknown_names == ["nothing-like-this"]


def test_unhashable_plugin_object_is_broken_not_fatal(fresh_host):
    host = load_host(extra_plugins=[("unhashable", types.SimpleNamespace()),
                                    ("all-kinds", AllKinds())])
    assert host.plugins["unhashable"].status == "broken"
    assert "hashable" in host.plugins["unhashable"].errors[0]
    assert host.plugins["all-kinds"].status == "ok"


def test_factory_without_a_constructor_takes_no_parameters(fresh_host):
    class Plain:
        """No __init__ of its own."""

        name = "plain"

    host = load_host(extra_plugins=[("plain", namespace(
        register_reward_models=hookimpl(lambda register: register(Plain))))])
    spec = host.get("reward", "plain")
    assert spec.params == () and isinstance(spec.build(), Plain)
    with pytest.raises(ConfigError, match="reward 'plain' has no parameter 'x'; its parameters "
                                          "are: \\(none\\)"):
        spec.build(x=1)


def test_canonical_names():
    assert canonical_name(" RewardKit_Example.reward ") == "rewardkit-example-reward"


def test_trace_prints_each_hook_call_with_its_implementations(fresh_host, monkeypatch, capsys):
    monkeypatch.setenv("REWARDKIT_TRACE_PLUGINS", "1")

    class Raises:
        @hookimpl
        def register_solvers(self, register):
            raise RuntimeError("traced failure")

    load_host(extra_plugins=[("all-kinds", AllKinds()), ("raises", Raises())])
    err = capsys.readouterr().err.splitlines()
    for hook in HOOK_NAMES:
        assert f"[rewardkit] hook {hook} -> all-kinds" in err
    assert "[rewardkit] hook register_solvers -> raises" in err
    assert "[rewardkit] hook register_solvers raised RuntimeError: traced failure" in err


def test_no_trace_without_the_variable(fresh_host, monkeypatch, capsys):
    monkeypatch.setenv("REWARDKIT_TRACE_PLUGINS", "0")
    load_host(extra_plugins=[("all-kinds", AllKinds())])
    assert "[rewardkit] hook" not in capsys.readouterr().err


def test_plugin_info_as_dict_is_json_ready(fresh_host):
    import json

    host = load_host(extra_plugins=[("all-kinds", AllKinds())])
    data = json.loads(json.dumps(host.plugins["all-kinds"].as_dict()))
    assert data["name"] == "all-kinds" and data["status"] == "ok"
    assert data["components"]["recipe"] == ["toy-recipe"] and data["commands"] == ["toy-command"]
    spec = json.loads(json.dumps(host.get("recipe", "toy-recipe").as_dict()))
    assert spec["params"][0] == {"name": "steps", "type": "int", "default": 3, "required": False,
                                 "help": ""}


def test_describe_reads_parameter_help_from_args_and_bullet_docstrings():
    from rewardkit.components import describe_factory

    def google(alpha: int, beta: str = "b", gamma: float = 1.0) -> None:
        """Do a thing.

        Args:
            alpha: how much of it;
                continued on the next line.
            beta (str): which one.

        Returns:
            nothing (gamma is not documented).
        """

    class Bullets:
        """A component.

        - ``width``: its width.
        - ``depth``, ``heads``: as for the other one.
        """

        def __init__(self, width: int = 1, depth: int = 2, heads: int = 3) -> None:
            pass

    helps = {p.name: p.help for p in describe_factory(google)}
    assert helps == {"alpha": "how much of it; continued on the next line.",
                     "beta": "which one.", "gamma": ""}
    helps = {p.name: p.help for p in describe_factory(Bullets)}
    assert helps == {"width": "its width.", "depth": "as for the other one.",
                     "heads": "as for the other one."}
