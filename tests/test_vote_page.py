"""``rewardkit vote`` for real: the command serves its page, a headless Chromium types a rater
id, answers and skips pairs; the votes file holds them; nothing in the page or its image URLs
names a model; the server is killed mid-study and started again, and the study continues with
no pair repeated and no vote lost.

Needs gradio and playwright (dev extras) and Debian's chromium, as ``tests/test_demo.py``; CI
sets ``REWARDKIT_REQUIRE_BROWSER=1`` so that a missing piece fails instead of skipping. The
screenshot in docs/images/vote.png is this test's, with the world's distilled student:
``REWARDKIT_VOTE_STUDENT=lcd-world/pipeline REWARDKIT_VOTE_SCREENSHOT=docs/images/vote.png
pytest tests/test_vote_page.py``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_vote import fake_study

REQUIRED = os.environ.get("REWARDKIT_REQUIRE_BROWSER") == "1"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PROMPTS = ["a large red circle on a white background", "a small blue square on a yellow background",
           "two green triangles on a black background"]


def _need(condition: bool, what: str) -> None:
    if not condition:
        if REQUIRED:
            pytest.fail(f"the vote page test needs {what}")
        pytest.skip(f"needs {what}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _world_student(folder: Path) -> Path:
    """A w-conditioned student of the shipped world teacher (its weights), or the one
    ``REWARDKIT_VOTE_STUDENT`` names (the screenshot's: the world's lcd-world/pipeline)."""
    if os.environ.get("REWARDKIT_VOTE_STUDENT"):
        target = folder / "distilled" / "pipeline"
        shutil.copytree(os.environ["REWARDKIT_VOTE_STUDENT"], target)
        return target
    from rewardkit.backbones.stable_diffusion import StableDiffusionBackbone
    from rewardkit.world.assets import TEACHER, asset_path

    backbone = StableDiffusionBackbone(str(asset_path(TEACHER)))
    return backbone.save_pipeline(backbone.build_student(), folder / "distilled" / "pipeline")


class Server:
    """``rewardkit vote ...`` in a subprocess, up once its page answers."""

    def __init__(self, args: list[str], port: int) -> None:
        env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1"}
        self.url = f"http://127.0.0.1:{port}/"
        self.process = subprocess.Popen([sys.executable, "-m", "rewardkit", *args, "--port",
                                         str(port)], stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(self.url, timeout=2)
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.kill()
                    output = self.process.stdout.read().decode()
                    pytest.fail(f"the vote server did not come up: {output[-2000:]}")
                time.sleep(0.5)

    def kill(self) -> None:
        """As a crash would: SIGKILL, no clean-up."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=20)


def _cast(page, answer: str | None, done: int) -> str:
    """Answer the pair on screen (``None``: skip) and wait for the page to count ``done``
    pairs; the prompt that was shown."""
    prompt = _prompt(page)
    if answer is None:
        page.locator("#skip").click()
    else:
        page.locator(f"#criterion-overall label:has-text('{answer}')").click()
        page.locator("#submit").click()
    _wait_status(page, f"{done} of 6 pairs done" if done < 6 else "all 6 pairs done")
    return prompt


def _wait_status(page, text: str) -> None:
    page.wait_for_function("text => { const s = document.querySelector('#status'); "
                           "return s && s.innerText.includes(text) && "
                           "!s.innerText.includes('processing'); }", arg=text, timeout=30000)


def _prompt(page) -> str:
    """The prompt on screen, once the page shows one (not a loading timer)."""
    page.wait_for_function("prompts => prompts.includes(document.querySelector('#prompt')"
                           ".innerText.trim())", arg=PROMPTS, timeout=30000)
    return page.locator("#prompt").inner_text().strip()


def _start(page, url: str, rater: str, done: int) -> None:
    page.goto(url)
    page.locator("#rater textarea, #rater input").first.fill(rater)
    page.locator("#start").click()
    _wait_status(page, f"{rater}: {done} of 6 pairs done")


def _image_sources(page) -> list[str]:
    sources = []
    for side in ("left", "right"):
        image = page.locator(f"#{side}-image img")
        image.wait_for(timeout=30000)
        page.wait_for_function(f"document.querySelector('#{side}-image img').naturalWidth > 0",
                               timeout=30000)
        sources.append(image.get_attribute("src"))
    return sources


def test_the_page_hides_the_models_and_records_votes(tmp_path):
    """Without a browser: the page's configuration (what the browser is sent) names no model."""
    _need(importlib.util.find_spec("gradio") is not None, "gradio")
    from rewardkit.vote.log import VoteLog
    from rewardkit.vote.page import build_page
    from rewardkit.vote.session import VotingSession

    study = fake_study(tmp_path / "images")
    page = build_page(VotingSession(study, VoteLog(tmp_path / "votes.jsonl"),
                                    criteria=["overall", "quality"]))
    config = json.dumps(page.get_config_file() if hasattr(page, "get_config_file")
                        else page.config, default=str)
    for secret in ("student", "teacher", str(tmp_path), "steps-"):
        assert secret not in config
    assert "Which image looks better" in config


def test_votes_through_the_page_in_a_headless_browser_survive_a_killed_server(tmp_path):
    _need(CHROMIUM is not None, "Debian's chromium (apt-get install chromium)")
    _need(importlib.util.find_spec("gradio") is not None, "gradio")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _need(False, "playwright")
    from rewardkit.world.assets import TEACHER, asset_path

    student = _world_student(tmp_path)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    votes = tmp_path / "votes.jsonl"
    args = ["vote", str(student), str(asset_path(TEACHER)), "--prompts", str(prompts),
            "--steps", "2,8", "-k", "2", "-o", str(votes), "--device", "cpu"]
    secrets = ("distilled", "teacher", "student", "steps-", str(tmp_path))
    shot = tmp_path / "vote.png"
    shown: list[str] = []
    server = Server(args, _free_port())
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                 args=["--no-sandbox", "--disable-dev-shm-usage"])
            page = browser.new_page(viewport={"width": 1000, "height": 820})
            _start(page, server.url, "ada", 0)
            sources = _image_sources(page)
            html = page.content()
            for secret in secrets:
                assert secret not in html and all(secret not in s for s in sources)
            assert _prompt(page) in PROMPTS
            page.screenshot(path=str(shot), full_page=True)
            shown.append(_cast(page, "Left", 1))
            _image_sources(page)
            shown.append(_cast(page, "Tie", 2))
            shown.append(_cast(page, None, 3))
            browser.close()
        recorded = [json.loads(line) for line in votes.read_text().splitlines()]
        assert [v["choice"] for v in recorded] == ["left", "tie", "skip"]
        assert [v["prompt"] for v in recorded] == shown
        assert all(v["rater"] == "ada" and v["model_a"] == "distilled (2 steps)"
                   and v["model_b"] == "teacher (8 steps)" for v in recorded)

        server.kill()  # mid-study, a pair on screen and unanswered
        server = Server(args, _free_port())
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                 args=["--no-sandbox", "--disable-dev-shm-usage"])
            page = browser.new_page()
            _start(page, server.url, "ada", 3)  # where the killed server left off
            for done, answer in enumerate(("Right", "Left", "Right"), 4):
                _image_sources(page)
                shown.append(_cast(page, answer, done))
            browser.close()
    finally:
        server.kill()
    recorded = [json.loads(line) for line in votes.read_text().splitlines()]
    assert len(recorded) == 6 and sorted(v["pair"] for v in recorded) == list(range(6))
    assert [v["choice"] for v in recorded] == ["left", "tie", "skip", "right", "left", "right"]
    # the image a vote names as left is the one whose file the model's folder holds
    for vote in recorded:
        left = vote["image_a"] if vote["left"] == "a" else vote["image_b"]
        assert Path(tmp_path / left).is_file()
    with Image.open(shot) as image:
        assert image.size[0] >= 1000 and np.asarray(image).std() > 10
    if os.environ.get("REWARDKIT_VOTE_SCREENSHOT"):
        shutil.copy(shot, os.environ["REWARDKIT_VOTE_SCREENSHOT"])
