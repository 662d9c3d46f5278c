"""Shared fixtures: a fresh plugin host per test that needs one, thread limits, and real plugin
distributions (built from source and ``pip install --target``-ed into a temp folder, offline)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
PLUGIN_ENV_VARS = ("REWARDKIT_LOAD_PLUGINS", "REWARDKIT_DISABLE_PLUGINS", "REWARDKIT_TRACE_PLUGINS")


@pytest.fixture
def fresh_host(monkeypatch):
    """Reset the process-wide plugin host before and after the test (env vars take effect).

    The plugin environment variables start unset; a test sets them with ``monkeypatch.setenv``.
    """
    from rewardkit.plugins import reset_host

    for variable in PLUGIN_ENV_VARS:
        monkeypatch.delenv(variable, raising=False)
    reset_host()
    yield
    reset_host()


# ------------------------------------------------------------------ plugin distributions


def write_distribution(root: Path, dist: str, module: str, code: str,
                       entry_points: dict[str, str] | None = None) -> Path:
    """Write a minimal setuptools project ``dist`` with one module and ``rewardkit`` entry points.

    ``entry_points`` maps entry-point names to ``module[:attr]`` (default: ``{dist: module}``).
    """
    project = root / dist
    (project / module).mkdir(parents=True)
    (project / module / "__init__.py").write_text(textwrap.dedent(code))
    entry_points = entry_points or {dist: module}
    points = "\n".join(f'"{name}" = "{target}"' for name, target in entry_points.items())
    (project / "pyproject.toml").write_text(textwrap.dedent(f"""\
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{dist}"
        version = "1.2.3"
        description = "a rewardkit test plugin"

        [tool.setuptools]
        packages = ["{module}"]

        [project.entry-points.rewardkit]
        """) + points + "\n")
    return project


def pip_install_target(sources: list[Path], target: Path) -> Path:
    """``pip install --no-deps --target`` local projects, offline (no index, no build isolation)."""
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
               "--no-build-isolation", "--disable-pip-version-check", "--target", str(target),
               *map(str, sources)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"pip install failed:\n{result.stdout}\n{result.stderr}")
    return target


GOOD_PLUGIN = '''
    """A well-behaved third-party plugin: a reward model and a CLI verb."""
    import torch
    import typer
    from rewardkit import hookimpl
    from rewardkit.rewards import RewardModel


    class Brightness(RewardModel):
        """Mean brightness of the image (a test reward)."""

        name = "test-brightness"

        def __init__(self, gain: float = 1.0):
            self.gain = gain

        def score(self, images, prompts):
            return self.gain * images.mean(dim=(1, 2, 3))


    def hello(who: str = "world"):
        """Say hello (a plugin-provided command)."""
        typer.echo(f"hello {who} from rk-test-good")


    @hookimpl
    def register_reward_models(register):
        register(Brightness)


    @hookimpl
    def register_commands(register):
        register(hello, name="test-hello", help="Say hello from a plugin.")
'''

BROKEN_IMPORT_PLUGIN = '''
    raise ImportError("this plugin is broken on purpose")
'''

BROKEN_HOOK_PLUGIN = '''
    from rewardkit import hookimpl


    class HalfDone:
        """Registered before the hook fails; must not survive."""

        name = "test-half-registered"


    @hookimpl
    def register_reward_models(register):
        register(HalfDone)
        raise RuntimeError("hook failed on purpose")


    @hookimpl
    def register_solvers(register):
        register(lambda **kw: None, name="test-solver-from-broken")
'''

DUPLICATE_PLUGIN = '''
    from rewardkit import hookimpl


    class OtherBrightness:
        """Another plugin's reward with a taken name."""

        name = "test-brightness"


    @hookimpl
    def register_reward_models(register):
        register(OtherBrightness)
'''

MULTI_PLUGIN = '''
    from rewardkit import hookimpl


    class First:
        """Registers a solver."""

        @hookimpl
        def register_solvers(self, register):
            register(lambda: "first", name="test-first")


    class Second:
        """Registers another solver."""

        @hookimpl
        def register_solvers(self, register):
            register(lambda: "second", name="test-second")


    first, second = First(), Second()
'''

#: dist name -> (module, code, entry points)
TEST_DISTRIBUTIONS = {
    "rk-test-good": ("rk_test_good", GOOD_PLUGIN, None),
    "rk-test-broken-import": ("rk_test_broken_import", BROKEN_IMPORT_PLUGIN, None),
    "rk-test-broken-hook": ("rk_test_broken_hook", BROKEN_HOOK_PLUGIN, None),
    "rk-test-duplicate": ("rk_test_duplicate", DUPLICATE_PLUGIN, None),
    "rk-test-multi": ("rk_test_multi", MULTI_PLUGIN,
                      {"first": "rk_test_multi:first", "second": "rk_test_multi:second"}),
}


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory) -> Path:
    """A folder with the TEST_DISTRIBUTIONS pip-installed into it (put it on sys.path to use)."""
    root = tmp_path_factory.mktemp("plugin-sources")
    sources = [write_distribution(root, dist, module, code, eps)
               for dist, (module, code, eps) in TEST_DISTRIBUTIONS.items()]
    return pip_install_target(sources, tmp_path_factory.mktemp("plugin-site"))


def install_example(tmp_path_factory, folder: str) -> Path:
    """``examples/<folder>`` pip-installed into a temp folder (built from a copy, so parallel
    workers never write build files into the repository)."""
    source = tmp_path_factory.mktemp("example-source") / folder
    shutil.copytree(REPO_ROOT / "examples" / folder, source,
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__",
                                                  ".pytest_cache"))
    return pip_install_target([source], tmp_path_factory.mktemp("example-site"))


@pytest.fixture(scope="session")
def example_plugin_site(tmp_path_factory) -> Path:
    """``examples/reward-plugin`` pip-installed into a temp folder (put it on sys.path to use)."""
    return install_example(tmp_path_factory, "reward-plugin")


@pytest.fixture(scope="session")
def example_backbone_site(tmp_path_factory) -> Path:
    """``examples/backbone-plugin`` pip-installed into a temp folder (put it on sys.path to use)."""
    return install_example(tmp_path_factory, "backbone-plugin")


@pytest.fixture(scope="session")
def example_solver_site(tmp_path_factory) -> Path:
    """``examples/solver-plugin`` pip-installed into a temp folder (put it on sys.path to use)."""
    return install_example(tmp_path_factory, "solver-plugin")


@pytest.fixture
def on_sys_path(monkeypatch, fresh_host):
    """Put a folder on ``sys.path`` (and ``PYTHONPATH`` for subprocesses) for one test.

    ``PYTHONPATH`` also gets the repository root, so subprocesses import this rewardkit.
    """
    import os

    def add(folder: Path) -> Path:
        monkeypatch.syspath_prepend(str(folder))
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
            filter(None, [str(folder), str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])))
        return folder

    return add


@pytest.fixture(scope="session")
def rewardkit_command() -> list[str]:
    """The ``rewardkit`` console script of this interpreter's environment, else
    ``python -m rewardkit`` (same code path: :func:`rewardkit.cli.main`)."""
    script = Path(sys.executable).parent / "rewardkit"
    return [str(script)] if script.exists() else [sys.executable, "-m", "rewardkit"]


@pytest.fixture(scope="session")
def example_recipe_site(tmp_path_factory) -> Path:
    """``examples/recipe-plugin`` pip-installed into a temp folder (put it on sys.path to use)."""
    return install_example(tmp_path_factory, "recipe-plugin")
