"""Test a distribution as users get it: from its built wheel, installed into a clean folder.

Tests that import a package from its source tree cannot see a file that the wheel leaves out
(a JSON config, an asset, a sub-package without ``__init__``): the source tree has it, the
user's install does not. These helpers build the wheel offline, compare its contents with the
package files under version control, install it with ``--no-deps`` into an empty target and run
code against that copy in a subprocess::

    from rewardkit.testing.wheel import build_wheel, install_wheel, missing_from_wheel, run_from

    def test_the_wheel_ships_everything(tmp_path):
        wheel = build_wheel(PROJECT, tmp_path / "dist")
        assert missing_from_wheel(wheel, PROJECT, "my_package") == []
        site = install_wheel(wheel, tmp_path / "site")
        assert "ok" in run_from(site, "import my_package; print('ok')").stdout

All of it runs offline: no index, no build isolation (the build backend, e.g. setuptools, must be
installed beside the running python).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

#: Files a package directory holds under version control that a wheel need not ship.
NOT_SHIPPED = ("__pycache__", ".pyc", ".egg-info")


def _pip(*args: str, timeout: float) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pip", *args, "-q", "--no-deps", "--no-index",
               "--disable-pip-version-check"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"pip {args[0]} failed:\n{result.stdout}\n{result.stderr}")
    return result


def build_wheel(project: str | Path, out_dir: str | Path, timeout: float = 300) -> Path:
    """Build ``project``'s wheel into ``out_dir`` and return its path.

    It is built from a copy of the files git tracks (of the whole folder when ``project`` is
    not in git), so the source tree gets no ``build/`` or ``*.egg-info`` and an untracked file
    cannot hide a missing one."""
    project, out_dir = Path(project).resolve(), Path(out_dir)
    copy = out_dir / "source" / project.name
    listed = _git_files(project, ".")
    if listed is not None:  # what a clone would hold: not a venv, runs or build output
        for name in listed:
            if not (project / name).is_file():  # deleted from the work tree, or a submodule
                continue
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(project / name, copy / name)
    else:
        shutil.copytree(project, copy, ignore=shutil.ignore_patterns(
            "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".git", ".venv*"))
    _pip("wheel", "--no-build-isolation", "-w", str(out_dir), str(copy), timeout=timeout)
    wheels = sorted(out_dir.glob("*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"expected one wheel in {out_dir}, found {[w.name for w in wheels]}")
    return wheels[0]


def tracked_files(project: str | Path, package: str) -> list[str]:
    """The files under ``project/package`` that git tracks, as wheel paths (``package/...``).

    Falls back to every file on disk when ``project`` is not in a git work tree.
    """
    project = Path(project).resolve()
    names = _git_files(project, package)
    if names is None:
        names = [p.relative_to(project).as_posix() for p in (project / package).rglob("*")
                 if p.is_file()]
    return sorted(n for n in names if not any(part in n for part in NOT_SHIPPED))


def _git_files(project: Path, under: str) -> list[str] | None:
    """The files git tracks under ``project/under`` (relative to ``project``), or ``None`` when
    ``project`` is not in a git work tree or git tracks nothing there."""
    try:
        result = subprocess.run(["git", "ls-files", "-z", "--", under], cwd=project,
                                capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    names = [n for n in result.stdout.split("\0") if n]
    return names if result.returncode == 0 and names else None


def missing_from_wheel(wheel: str | Path, project: str | Path, package: str) -> list[str]:
    """The tracked files of ``project/package`` that ``wheel`` does not hold (``[]``: complete)."""
    with zipfile.ZipFile(wheel) as archive:
        shipped = set(archive.namelist())
    return [name for name in tracked_files(project, package) if name not in shipped]


def install_wheel(wheel: str | Path, target: str | Path, timeout: float = 300) -> Path:
    """``pip install --no-deps --target`` the wheel into an empty folder; return the folder."""
    target = Path(target)
    if target.exists() and any(target.iterdir()):
        raise RuntimeError(f"install target {target} is not empty")
    _pip("install", "--target", str(target), str(wheel), timeout=timeout)
    return target


def run_from(site: str | Path, code: str, timeout: float = 300,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh python with ``site`` first on ``sys.path`` (so the installed copy,
    not an editable or source one, is imported); raise with its output if it fails."""
    environment = {**os.environ, **(env or {})}
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(site)] + [p for p in environment.get("PYTHONPATH", "").split(os.pathsep) if p])
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=timeout, env=environment, cwd=str(site))
    if result.returncode != 0:
        raise AssertionError(f"code run from {site} failed:\n{result.stdout}\n{result.stderr}")
    return result


__all__ = ["build_wheel", "install_wheel", "missing_from_wheel", "run_from", "tracked_files"]
