"""The documentation site's API reference covers the public API: every name the public packages
export and every component a built-in plugin registers has a ``:::`` directive in docs/api/ and a
docstring, and every guide in docs/ is in the site's nav. (`make docs` builds the site with
``mkdocs build --strict``, which fails on a directive that names nothing and on broken links.)"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
import yaml

import rewardkit
from rewardkit.components import KINDS
from rewardkit.plugins import DEFAULT_PLUGINS, get_host

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
DIRECTIVES = {match for page in (DOCS / "api").glob("*.md")
              for match in re.findall(r"^::: ([\w.]+)", page.read_text(), re.M)}
PACKAGES = ("rewardkit.rewards", "rewardkit.proxies", "rewardkit.solvers", "rewardkit.backbones",
            "rewardkit.recipes", "rewardkit.training", "rewardkit.data", "rewardkit.evaluation",
            "rewardkit.testing")

#: Exported names that are objects without a ``__module__`` of their own: where they are defined.
DEFINED_AT = {"rewardkit.hookimpl": "rewardkit.hookspecs.hookimpl",
              "rewardkit.solvers.Denoiser": "rewardkit.solvers.base.Denoiser"}


def documented(obj) -> bool:
    """Whether ``obj`` has a directive of its own, or is a member of a documented module."""
    module = getattr(obj, "__module__", None)
    return f"{module}.{getattr(obj, '__qualname__', '')}" in DIRECTIVES or module in DIRECTIVES


def exported() -> list[tuple[str, object]]:
    names = [(f"rewardkit.{name}", getattr(rewardkit, name)) for name in rewardkit.__all__
             if name != "__version__"]
    for package in PACKAGES:
        module = importlib.import_module(package)
        names += [(f"{package}.{name}", getattr(module, name)) for name in module.__all__]
    return names


@pytest.mark.parametrize("name, obj", exported(), ids=lambda value: value if isinstance(value, str) else "")
def test_every_public_name_is_in_the_api_reference(name, obj):
    if name in DEFINED_AT:  # not a class or function: no __module__ of rewardkit's
        assert DEFINED_AT[name] in DIRECTIVES, f"{name} has no ::: directive in docs/api/"
        return
    assert documented(obj), f"{name} ({obj.__module__}.{obj.__qualname__}) has no ::: directive in docs/api/"
    assert (obj.__doc__ or "").strip(), f"{name} has no docstring"


def test_the_recipe_api_named_in_training_md_is_in_the_api_reference():
    section = (DOCS / "training.md").read_text().split(
        "### The public API for recipes", 1)[1].split("and the backbone's methods", 1)[0]
    names = set(re.findall(r"`(rewardkit[\w.]*)`", section))
    assert "rewardkit.training.TrainingLoop" in names
    missing = []
    for name in sorted(names):
        if name in DEFINED_AT:
            found = DEFINED_AT[name] in DIRECTIVES
        else:
            module, _, attr = name.rpartition(".")
            obj = getattr(importlib.import_module(module), attr)
            found = documented(obj) or name in DIRECTIVES  # constants: by their own name
        if not found:
            missing.append(name)
    assert not missing, f"named in docs/training.md but missing from docs/api/: {missing}"


def test_every_built_in_component_is_in_the_api_reference():
    missing = [f"{kind} {spec.name}: {spec.factory.__module__}.{spec.factory.__qualname__}"
               for kind in KINDS for spec in get_host().list(kind)
               if spec.plugin in DEFAULT_PLUGINS and not documented(spec.factory)]
    assert not missing, f"built-in components missing from docs/api/: {missing}"


def test_every_guide_is_in_the_nav():
    def pages(entries):
        for entry in entries:
            value = next(iter(entry.values())) if isinstance(entry, dict) else entry
            yield from pages(value) if isinstance(value, list) else [value]

    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    in_nav = set(pages(config["nav"]))
    on_disk = {str(path.relative_to(DOCS)) for path in DOCS.rglob("*.md")}
    assert on_disk - in_nav == set(), "pages missing from mkdocs.yml's nav"
    assert in_nav - on_disk == set(), "nav entries with no page"
