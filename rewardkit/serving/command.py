"""``rewardkit serve-reward NAME``: serve a registered reward model over HTTP.

::

    rewardkit serve-reward world-judge --port 8765
    REWARDKIT_REWARD_TOKEN=... rewardkit serve-reward hpsv2 --host 0.0.0.0 --device cuda

The RM is built as a training run builds it (``--reward_params`` JSON, moved to ``--device``)
and answers ``POST /score`` for any number of clients, whose requests share its calls (up to
``--max-batch`` images each). The token comes from the environment, never the command line
(``ps`` shows command lines to every user): ``REWARDKIT_REWARD_TOKEN``, or the variable
``--token-env`` names. Listening beyond this machine without a token is refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ..errors import ConfigError
from ..secrets import TOKEN_ENV, redact, token_from_env


def parse_reward_params(text: str) -> dict:
    """``--reward_params`` JSON as a dict; ConfigError names the option."""
    try:
        params = json.loads(text or "{}")
    except json.JSONDecodeError as error:
        raise ConfigError(f"--reward_params is not JSON ({error}); write it like "
                          "'{\"dtype\": \"bfloat16\"}'") from None
    if not isinstance(params, dict):
        raise ConfigError("--reward_params must be a JSON object of the RM's parameters")
    return params


def require_server_libraries() -> None:
    """ConfigError saying how to install starlette and uvicorn when either is missing."""
    import importlib.util

    missing = [name for name in ("starlette", "uvicorn") if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"rewardkit serve-reward needs {' and '.join(missing)}: install them "
                          "with pip install 'rewardkit[serve]'")


def serve_reward_command(
    name: str = typer.Argument(..., help="A registered reward model (`rewardkit list reward`)."),
    reward_params: str = typer.Option("{}", "--reward_params", "--reward-params",
                                      help="The RM's parameters as a JSON object."),
    host: str = typer.Option("127.0.0.1", "--host",
                             help="Address to listen on; beyond localhost a token is required."),
    port: int = typer.Option(8765, "--port", help="Port to listen on (0: any free port)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1, mps..."),
    max_batch: int = typer.Option(32, "--max-batch",
                                  help="Most images per RM call (clients' requests are batched)."),
    max_queue: int = typer.Option(512, "--max-queue",
                                  help="Most images waiting; beyond, requests get 503 (retry)."),
    max_request_mb: float = typer.Option(64.0, "--max-request-mb",
                                         help="Largest request body in MiB (413 beyond)."),
    max_request_images: int = typer.Option(512, "--max-request-images",
                                           help="Most images in one request (413 beyond)."),
    batch_wait_ms: float = typer.Option(0.0, "--batch-wait-ms",
                                        help="How long a batch that is not full waits for more "
                                        "(0: requests that arrive while the RM runs join the "
                                        "next call)."),
    token_env: str = typer.Option(TOKEN_ENV, "--token-env",
                                  help="Environment variable holding the token clients must send."),
    ready_file: Optional[Path] = typer.Option(None, "--ready-file",
                                              help="Write {\"url\": ...} here once serving."),
    access_log: bool = typer.Option(False, "--access-log", help="Log every request."),
) -> None:
    """Serve a registered reward model over HTTP (POST /score, GET /describe, GET /health)."""
    from ..plugins import get_host
    from ..rewards.build import build_expert
    from ..sampling import resolve_device
    from .app import is_local, serve
    from .service import RewardService, ServerLimits

    require_server_libraries()
    params = parse_reward_params(reward_params)
    token = token_from_env(token_env)
    if token is None and not is_local(host):
        raise ConfigError(f"--host {host} listens beyond this machine, so clients must send a "
                          f"token: set one in ${token_env} (or name another variable with "
                          "--token-env) and give it to the remote RM as reward_params token or "
                          f"in its ${TOKEN_ENV}")
    for option, value in (("--max-batch", max_batch), ("--max-queue", max_queue),
                          ("--max-request-images", max_request_images)):
        if value < 1:
            raise ConfigError(f"{option} must be at least 1, got {value}")
    if max_request_mb <= 0 or batch_wait_ms < 0:
        raise ConfigError("--max-request-mb must be positive and --batch-wait-ms not negative")
    limits = ServerLimits(max_batch=max_batch, max_queue=max(max_queue, max_batch),
                          max_request_bytes=int(max_request_mb * 2**20),
                          max_request_images=max_request_images,
                          batch_wait_s=batch_wait_ms / 1000)
    host_ = get_host()
    spec = host_.get("reward", name)
    rm = build_expert(name, params, device=resolve_device(device))
    version = host_.plugins[spec.plugin].version if spec.plugin in host_.plugins else None
    service = RewardService(rm, name, params, version, limits, token)

    def ready(url: str) -> None:
        shown = json.dumps(redact(params)) if params else "no parameters"
        typer.echo(f"serving reward model '{name}' ({shown}) on {url} "
                   f"[{'token required' if token else 'no token'}; max batch {max_batch}; "
                   "Ctrl-C stops]", err=True)

    serve(service, host, port, ready_file=ready_file, access_log=access_log, on_ready=ready,
          log_level="info" if access_log else "warning")


__all__ = ["parse_reward_params", "require_server_libraries", "serve_reward_command"]
