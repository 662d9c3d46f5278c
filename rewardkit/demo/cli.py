"""``rewardkit demo``: a local web page comparing a student with its teacher."""

from __future__ import annotations

import errno
from typing import Annotated, Optional

import typer

from ..errors import ConfigError


def demo_command(
    model: Annotated[str, typer.Argument(help="The student: a diffusers pipeline folder (a run's "
                                         "pipeline/) or hub id.")],
    teacher: Annotated[Optional[str], typer.Option(help="A teacher pipeline to show beside it.")] = None,
    metrics: Annotated[str, typer.Option("--metrics", "-m", help="Comma-separated reward models "
                       "whose scores are shown (e.g. world-judge,world-scorer).")] = "",
    port: Annotated[int, typer.Option(help="Port of the local server.")] = 7860,
    host: Annotated[str, typer.Option(help="Address to listen on (127.0.0.1: this machine only).")] = "127.0.0.1",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, ...")] = "auto",
    dtype: Annotated[str, typer.Option(help="float32, float16 or bfloat16.")] = "float32",
) -> None:
    """Serve a page: type a prompt, pick steps, guidance and seed; see the student (and the
    teacher) with time per image and reward scores. Needs pip install 'rewardkit[demo]'."""
    from .page import _gradio, build_page
    from .session import DemoSession

    check_port(host, port)  # a busy port fails before any model loads, as a missing extra does
    _gradio()
    session = DemoSession(model, teacher, [m.strip() for m in metrics.split(",") if m.strip()],
                          device=device, dtype=dtype)
    try:
        build_page(session).launch(server_name=host, server_port=port, share=False)
    except OSError as error:  # taken between the check and the launch
        raise ConfigError(f"--port {port} on {host} cannot be served ({error}); pick another "
                          "--port") from None


def check_port(host: str, port: int) -> None:
    """Raise ConfigError naming ``--port`` (or ``--host``) when the server could not listen
    there: out of range, in use, or an address this machine does not have."""
    import socket

    if not 0 < port < 65536:
        raise ConfigError(f"--port must be between 1 and 65535, got {port}")
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.bind((host, port))
    except socket.gaierror:
        raise ConfigError(f"--host {host} is not an address of this machine") from None
    except OSError as error:
        reason = "is in use" if error.errno in (errno.EADDRINUSE, errno.EACCES) else \
            f"cannot be used ({error.strerror or error})"
        raise ConfigError(f"--port {port} on {host} {reason}; pick another --port (or stop "
                          "what serves it)") from None
