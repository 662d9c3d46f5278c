"""Third-party plugins loaded from real, pip-installed distributions (entry-point group
``rewardkit``): good, broken on import, broken in a hook, clashing, and several entry points."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from rewardkit import cli
from rewardkit.errors import PluginError
from rewardkit.plugins import get_host, load_host


def test_entry_point_plugin_registers_its_reward_and_command(plugin_site, on_sys_path, monkeypatch):
    on_sys_path(plugin_site)
    monkeypatch.setenv("REWARDKIT_LOAD_PLUGINS", "rk-test-good")
    host = get_host()
    info = host.plugins["rk-test-good"]
    assert (info.status, info.version, info.builtin) == ("ok", "1.2.3", False)
    assert info.components == {"reward": ["test-brightness"]}
    assert info.commands == ["test-hello"]
    spec = host.get("reward", "test-brightness")
    assert spec.plugin == "rk-test-good"
    assert spec.description == "Mean brightness of the image (a test reward)."
    assert [(p.name, p.default) for p in spec.params] == [("gain", 1.0)]
    rm = spec.build(gain=2.0)
    images = torch.full((2, 3, 4, 4), 0.25)
    assert torch.allclose(rm(images, ["a", "b"]), torch.tensor([0.5, 0.5]))


def test_allow_list_loads_only_named_distributions(plugin_site, on_sys_path, monkeypatch):
    on_sys_path(plugin_site)
    # Names are normalised like PEP 503: case, dots and underscores don't matter.
    monkeypatch.setenv("REWARDKIT_LOAD_PLUGINS", "RK_Test.Good, no-such-plugin")
    host = load_host()
    assert host.plugins["rk-test-good"].status == "ok"
    for other in ("rk-test-broken-import", "rk-test-broken-hook", "rk-test-duplicate"):
        assert host.plugins[other].status == "disabled"
        assert host.plugins[other].note == "not in REWARDKIT_LOAD_PLUGINS"
        assert host.plugins[other].errors == []
    assert host.unknown_names == ["no-such-plugin"]
    # built-ins are not distributions: the allow-list leaves them loaded
    assert all(info.status != "disabled" for info in host.plugins.values() if info.builtin)


def test_empty_allow_list_loads_no_third_party_plugin(plugin_site, on_sys_path, monkeypatch):
    on_sys_path(plugin_site)
    monkeypatch.setenv("REWARDKIT_LOAD_PLUGINS", "")
    host = load_host()
    third_party = [info for info in host.plugins.values() if not info.builtin]
    assert third_party and all(info.status == "disabled" for info in third_party)
    with pytest.raises(Exception, match="no reward named 'test-brightness'"):
        host.get("reward", "test-brightness")


def test_broken_plugins_are_reported_and_the_rest_works(plugin_site, on_sys_path, monkeypatch):
    on_sys_path(plugin_site)
    monkeypatch.setenv("REWARDKIT_DISABLE_PLUGINS", "rk-test-duplicate")
    host = get_host()

    broken_import = host.plugins["rk-test-broken-import"]
    assert broken_import.status == "broken"
    assert broken_import.version == "1.2.3"
    assert broken_import.errors == [
        "import of rk_test_broken_import failed: ImportError: this plugin is broken on purpose"]

    broken_hook = host.plugins["rk-test-broken-hook"]
    assert broken_hook.status == "broken"
    assert broken_hook.errors == [
        "register_reward_models raised RuntimeError: hook failed on purpose"]
    # what the failing hook registered is dropped; its other, healthy hook still counts
    assert "test-half-registered" not in host.components["reward"]
    assert broken_hook.components == {"solver": ["test-solver-from-broken"]}

    assert host.plugins["rk-test-duplicate"].status == "disabled"
    assert host.plugins["rk-test-good"].status == "ok"
    assert host.get("reward", "test-brightness").plugin == "rk-test-good"


def test_two_distributions_registering_one_name_conflict(plugin_site, on_sys_path, monkeypatch):
    on_sys_path(plugin_site)
    monkeypatch.setenv("REWARDKIT_LOAD_PLUGINS", "rk-test-good,rk-test-duplicate")
    host = get_host()
    message = "reward 'test-brightness' is registered by several plugins: 'rk-test-duplicate', 'rk-test-good'"
    for name in ("rk-test-good", "rk-test-duplicate"):
        assert host.plugins[name].status == "conflict"
        assert host.plugins[name].errors == [message]
    with pytest.raises(PluginError, match=r"several plugins \(rk-test-duplicate, rk-test-good\)"):
        host.get("reward", "test-brightness")
    assert host.owners("reward", "test-brightness") == ["rk-test-duplicate", "rk-test-good"]


def test_distribution_with_two_entry_points(plugin_site, on_sys_path, monkeypatch):
    on_sys_path(plugin_site)
    monkeypatch.setenv("REWARDKIT_LOAD_PLUGINS", "rk-test-multi")
    monkeypatch.setenv("REWARDKIT_DISABLE_PLUGINS", "second")  # an entry-point name works too
    host = load_host()
    assert host.plugins["rk-test-multi:first"].components == {"solver": ["test-first"]}
    assert host.plugins["rk-test-multi:second"].status == "disabled"
    assert host.get("solver", "test-first").build() == "first"
    assert host.unknown_names == []


def test_cli_plugins_shows_broken_plugins_with_errors(plugin_site, on_sys_path, monkeypatch, capsys):
    on_sys_path(plugin_site)
    monkeypatch.setenv("COLUMNS", "250")
    assert cli.run(["plugins", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["rk-test-broken-import"]["status"] == "broken"
    assert "broken on purpose" in rows["rk-test-broken-import"]["errors"][0]
    assert rows["rk-test-broken-hook"]["status"] == "broken"
    assert rows["rk-test-good"]["commands"] == ["test-hello"]

    assert cli.run(["plugins"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.startswith("│")}
    line = rows["rk-test-broken-import"]
    assert "1.2.3" in line and "broken" in line and "ImportError: this plugin is broken on purpose" in line
    good = rows["rk-test-good"]
    assert "conflict" in good and "reward: test-brightness" in good and "commands: test-hello" in good

    # everything else keeps working, including the good plugin's command
    assert cli.run(["test-hello", "--who", "tests"]) == 0
    assert "hello tests from rk-test-good" in capsys.readouterr().out


def test_end_to_end_console_script_with_env_vars(plugin_site, on_sys_path, rewardkit_command):
    """The installed ``rewardkit`` script, in a subprocess, honours the plugin env vars."""
    on_sys_path(plugin_site)
    env = {**os.environ, "REWARDKIT_LOAD_PLUGINS": "rk-test-good,rk-test-broken-import",
           "REWARDKIT_TRACE_PLUGINS": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([*rewardkit_command, "plugins", "--json"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["rk-test-good"]["status"] == "ok"
    assert rows["rk-test-broken-import"]["status"] == "broken"
    assert rows["rk-test-duplicate"]["status"] == "disabled"
    assert "[rewardkit] hook register_reward_models -> rk-test-good" in result.stderr

    env.pop("REWARDKIT_TRACE_PLUGINS")
    result = subprocess.run([*rewardkit_command, "test-hello"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stdout.strip()) == (0, "hello world from rk-test-good")
