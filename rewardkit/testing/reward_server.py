"""A real ``rewardkit serve-reward`` process for tests and benchmarks, on a free local port.

>>> with RewardServer("world-judge") as server:                      # doctest: +SKIP
...     rm = rewardkit.reward_model("remote", url=server.url)

The server runs as ``python -m rewardkit serve-reward NAME --port 0 --ready-file ...`` with
``python`` any interpreter (another venv's, for an RM whose dependencies live there); its
output goes to :attr:`RewardServer.log`. ``token`` is handed over in the environment, as a user
would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from ..secrets import TOKEN_ENV


class RewardServer:
    """Starts ``serve-reward NAME`` (``params``: its ``--reward_params``; ``args``: more
    options) and waits until it serves; :meth:`stop` ends it gracefully, :meth:`kill` at once.

    ``port``: 0 picks a free one (:attr:`url` says which); a fixed port restarts a server
    where clients already point.
    """

    def __init__(self, name: str, params: dict[str, Any] | None = None, *,
                 token: str | None = None, args: Sequence[str] = (), port: int = 0,
                 python: str | None = None, env: dict[str, str] | None = None,
                 startup_timeout: float = 60.0) -> None:
        self.name, self.params, self.token = name, params or {}, token
        self.args, self.port, self.python = list(args), port, python or sys.executable
        self.env, self.startup_timeout = env, startup_timeout
        self.folder = Path(tempfile.mkdtemp(prefix="rewardkit-server-"))
        self.log = self.folder / "server.log"
        self.process: subprocess.Popen | None = None
        self.url = ""

    def start(self) -> "RewardServer":
        """Start the process and wait until it accepts requests (RuntimeError with its log
        when it exits or stays silent beyond ``startup_timeout``)."""
        ready = self.folder / "ready.json"
        ready.unlink(missing_ok=True)
        env = {**os.environ, **(self.env or {})}
        env.pop(TOKEN_ENV, None)
        if self.token is not None:
            env[TOKEN_ENV] = self.token
        command = [self.python, "-m", "rewardkit", "serve-reward", self.name,
                   "--reward_params", json.dumps(self.params), "--port", str(self.port),
                   "--ready-file", str(ready), "--device", "cpu", *self.args]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + self.startup_timeout
        while not ready.is_file():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"serve-reward {self.name} did not start:\n"
                                   + self.log.read_text()[-3000:])
            time.sleep(0.05)
        self.url = json.loads(ready.read_text())["url"]
        self.port = int(self.url.rsplit(":", 1)[1])
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """End it with SIGINT (uvicorn's graceful shutdown), then SIGKILL if it lingers."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        """End it at once, as a crash would (SIGKILL)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def output(self) -> str:
        """Everything the server printed so far."""
        return self.log.read_text() if self.log.is_file() else ""

    def __enter__(self) -> "RewardServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


__all__ = ["RewardServer"]
