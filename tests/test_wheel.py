"""rewardkit and its example plugins as users install them: built wheels, installed with
--no-deps into an empty folder. A file the wheel leaves out (a world asset, a JSON config) is
invisible to every test that imports the source tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from rewardkit.testing.wheel import build_wheel, install_wheel, missing_from_wheel, run_from

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "reward-plugin"
SOLVER_EXAMPLE = REPO / "examples" / "solver-plugin"

FROM_THE_WHEEL = r'''
from pathlib import Path
import rewardkit as rk
from rewardkit.world.assets import ASSETS, LRM, TEACHER
from rewardkit.proxies.factory import build_proxy
from rewardkit.proxies.preference_set import PreferenceSet

assert ASSETS.resolve().is_relative_to(Path.cwd()), ASSETS  # the installed copy, not the source
assert {"lcd", "rg-lcd", "lrm-pretrain"} <= {spec.name for spec in rk.components("recipe")}
# the embedded world's models load from the installed assets
backbone = rk.backbone("stable-diffusion", pretrained_model_name_or_path=str(ASSETS / TEACHER))
proxy = build_proxy("lrm", {}, backbone, pretrained=str(ASSETS / LRM))
pset = PreferenceSet.load(ASSETS / LRM / "preference_set")
print("ok", type(backbone).__name__, type(proxy).__name__, len(pset))
'''


@pytest.fixture(scope="module")
def core_wheel(tmp_path_factory) -> Path:
    return build_wheel(REPO, tmp_path_factory.mktemp("dist"))


def test_the_core_wheel_holds_every_tracked_package_file(core_wheel):
    assert missing_from_wheel(core_wheel, REPO, "rewardkit") == []


def test_the_installed_core_wheel_loads_the_embedded_world(core_wheel, tmp_path):
    site = install_wheel(core_wheel, tmp_path / "site")
    result = run_from(site, FROM_THE_WHEEL)
    assert result.stdout.startswith("ok "), result.stdout


def test_the_example_plugin_wheel_holds_every_tracked_package_file(tmp_path):
    wheel = build_wheel(EXAMPLE, tmp_path / "dist")
    assert missing_from_wheel(wheel, EXAMPLE, "rewardkit_example_reward") == []


def test_the_example_backbone_wheel_holds_every_tracked_package_file(tmp_path):
    project = REPO / "examples" / "backbone-plugin"
    wheel = build_wheel(project, tmp_path / "dist")
    assert missing_from_wheel(wheel, project, "rewardkit_example_backbone") == []


def test_the_example_solver_wheel_holds_every_tracked_package_file(tmp_path):
    wheel = build_wheel(SOLVER_EXAMPLE, tmp_path / "dist")
    assert missing_from_wheel(wheel, SOLVER_EXAMPLE, "rewardkit_example_solver") == []


def test_a_file_left_out_of_the_wheel_is_reported(tmp_path):
    """The check can fail: a package-data file the project does not declare is named."""
    project = tmp_path / "leaky"
    (project / "leaky_pkg").mkdir(parents=True)
    (project / "leaky_pkg" / "__init__.py").write_text("")
    (project / "leaky_pkg" / "config.json").write_text("{}")
    (project / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=70.1"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "leaky"\nversion = "0.1"\n'
        '[tool.setuptools]\npackages = ["leaky_pkg"]\ninclude-package-data = false\n')
    wheel = build_wheel(project, tmp_path / "dist")
    assert missing_from_wheel(wheel, project, "leaky_pkg") == ["leaky_pkg/config.json"]
