"""``rewardkit demo`` for real: the command serves its page, a headless Chromium types a prompt
and clicks Generate, and the student's and teacher's images and scores appear.

Needs gradio and playwright (dev extras) and Debian's chromium (``.ci/run`` installs it). CI
sets ``REWARDKIT_REQUIRE_BROWSER=1`` so that a missing piece fails instead of skipping.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REQUIRED = os.environ.get("REWARDKIT_REQUIRE_BROWSER") == "1"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _need(condition: bool, what: str) -> None:
    if not condition:
        if REQUIRED:
            pytest.fail(f"the demo test needs {what}")
        pytest.skip(f"needs {what}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> Path:
    """A w-conditioned student of the shipped world teacher (the teacher's weights).

    ``docs/images/demo.png`` was taken with the default run's student instead:
    ``REWARDKIT_DEMO_STUDENT=rg-lcd-world/pipeline REWARDKIT_DEMO_SCREENSHOT=docs/images/demo.png
    pytest tests/test_demo.py``.
    """
    if os.environ.get("REWARDKIT_DEMO_STUDENT"):
        return Path(os.environ["REWARDKIT_DEMO_STUDENT"])
    from rewardkit.backbones.stable_diffusion import StableDiffusionBackbone
    from rewardkit.world.assets import TEACHER, asset_path

    backbone = StableDiffusionBackbone(str(asset_path(TEACHER)))
    return backbone.save_pipeline(backbone.build_student(),
                                  tmp_path_factory.mktemp("demo") / "pipeline")


def test_the_session_samples_times_and_scores_without_a_browser(student):
    from rewardkit.demo.session import DemoSession
    from rewardkit.errors import ConfigError
    from rewardkit.world.assets import TEACHER, asset_path

    session = DemoSession(str(student), str(asset_path(TEACHER)), ["world-judge"], device="cpu")
    result = session.generate("a large red circle on a white background", steps=2, seed=3,
                              teacher_steps=4)
    assert result.student.image.size == (32, 32) and result.student.ms > 0
    assert result.student.unet_evaluations == 2 and result.teacher.unet_evaluations == 8  # CFG
    assert 0.0 <= result.student.scores["world-judge"] <= 1.0
    assert "student: 2 steps" in result.student.caption("student")
    again = session.generate("a large red circle on a white background", steps=2, seed=3,
                             teacher_steps=4)
    assert list(again.student.image.getdata()) == list(result.student.image.getdata())
    with pytest.raises(ConfigError, match="between 1 and 8"):
        session.generate("a prompt", steps=9)
    with pytest.raises(ConfigError, match="type a prompt"):
        session.generate("  ")


def test_demo_page_in_a_headless_browser(student, tmp_path):
    _need(CHROMIUM is not None, "Debian's chromium (apt-get install chromium)")
    try:
        import gradio  # noqa: F401
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        _need(False, f"gradio and playwright ({exc.name})")
    from rewardkit.world.assets import TEACHER, asset_path

    port = _free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "rewardkit", "demo", str(student), "--teacher",
         str(asset_path(TEACHER)), "--metrics", "world-judge,world-scorer", "--port", str(port),
         "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    output = server.stdout.read().decode() if server.poll() is not None else ""
                    pytest.fail(f"the demo server did not come up: {output[-2000:]}")
                time.sleep(0.5)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                 args=["--no-sandbox", "--disable-dev-shm-usage"])
            page = browser.new_page(viewport={"width": 1100, "height": 760})
            page.goto(url)
            prompt = page.locator("#prompt textarea")
            prompt.fill("a large yellow triangle on a blue background")
            page.locator("#generate").click()
            page.wait_for_function(
                "document.querySelector('#teacher-info') && "
                "document.querySelector('#teacher-info').innerText.includes('world-judge')",
                timeout=60000)
            student_info = page.locator("#student-info").inner_text()
            teacher_info = page.locator("#teacher-info").inner_text()
            assert "student: 2 steps" in student_info and "world-scorer" in student_info
            assert "teacher: 50 steps" in teacher_info and "100 UNet evaluations" in teacher_info
            for side in ("student", "teacher"):
                image = page.locator(f"#{side}-image img")
                image.wait_for(timeout=30000)
                assert image.evaluate("img => img.naturalWidth") > 0
            shot = tmp_path / "demo.png"
            page.screenshot(path=str(shot), full_page=True)
            browser.close()
        assert shot.stat().st_size > 10_000
        if os.environ.get("REWARDKIT_DEMO_SCREENSHOT"):
            shutil.copy(shot, os.environ["REWARDKIT_DEMO_SCREENSHOT"])
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def test_without_gradio_the_command_says_which_extra_to_install(monkeypatch):
    from rewardkit.demo.page import _gradio
    from rewardkit.errors import ConfigError

    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio now raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'rewardkit\[demo\]'"):
        _gradio()
