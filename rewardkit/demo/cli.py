"""``rewardkit demo``: a local web page comparing a student with its teacher."""

from __future__ import annotations

from typing import Annotated, Optional

import typer


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

    _gradio()  # a missing extra fails before any model loads
    session = DemoSession(model, teacher, [m.strip() for m in metrics.split(",") if m.strip()],
                          device=device, dtype=dtype)
    build_page(session).launch(server_name=host, server_port=port, share=False)
