"""The demo's web page, built with gradio (the library the reference's demo uses).

gradio gives a prompt box, sliders, side-by-side images and a local server in a few lines and
is what researchers expect from a model demo; it is an optional extra
(``pip install 'rewardkit[demo]'``) so the core install stays lean. Analytics are switched off
(the page is local; nothing is sent anywhere).
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import ConfigError, RewardkitError
from .session import MAX_STEPS, DemoSession


def _gradio() -> Any:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio
    except ImportError:
        raise ConfigError("rewardkit demo needs gradio: pip install 'rewardkit[demo]'") from None
    return gradio


DISPLAY_SIDE = 256


def _display(image: Any) -> Any:
    """Small samples (the embedded world's are 32 px) enlarged, pixels kept sharp."""
    from PIL import Image

    if max(image.size) >= DISPLAY_SIDE:
        return image
    factor = max(1, DISPLAY_SIDE // max(image.size))
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def build_page(session: DemoSession, title: str = "rewardkit demo") -> Any:
    """The ``gradio.Blocks`` page of ``session``: prompt, steps, guidance, seed -> images."""
    gr = _gradio()

    def generate(prompt: str, steps: float, guidance: float, seed: float, teacher_steps: float):
        try:
            result = session.generate(prompt, int(steps), float(guidance), int(seed or 0),
                                      int(teacher_steps))
        except RewardkitError as exc:  # a bad value, or an RM that failed (NaN): shown on the page
            raise gr.Error(str(exc)) from None
        student = result.student
        outputs = [_display(student.image), student.caption("student")]
        if session.teacher is not None:
            teacher = result.teacher
            outputs += [_display(teacher.image), teacher.caption("teacher")]
        return outputs

    with gr.Blocks(title=title) as page:
        gr.Markdown(f"## {title}\nType a prompt; the student samples it in a few steps"
                    + (", the teacher in many, with the same seed." if session.teacher else "."))
        with gr.Row():
            prompt = gr.Textbox(label="Prompt", elem_id="prompt", scale=4,
                                value="a large red circle on a white background")
            button = gr.Button("Generate", variant="primary", elem_id="generate", scale=1)
        with gr.Row():
            steps = gr.Slider(1, MAX_STEPS, value=2, step=1, label="Student steps", elem_id="steps")
            guidance = gr.Slider(1.0, 15.0, value=7.5, step=0.5, label="Guidance scale")
            seed = gr.Number(value=0, precision=0, label="Seed", elem_id="seed")
            teacher_steps = gr.Slider(1, 100, value=50, step=1, label="Teacher steps",
                                      visible=session.teacher is not None)
        outputs = []
        with gr.Row():
            with gr.Column():
                outputs.append(gr.Image(label="Student", type="pil", elem_id="student-image"))
                outputs.append(gr.Markdown(elem_id="student-info"))
            if session.teacher is not None:
                with gr.Column():
                    outputs.append(gr.Image(label="Teacher", type="pil", elem_id="teacher-image"))
                    outputs.append(gr.Markdown(elem_id="teacher-info"))
        inputs = [prompt, steps, guidance, seed, teacher_steps]
        button.click(generate, inputs, outputs)
        prompt.submit(generate, inputs, outputs)
    return page
