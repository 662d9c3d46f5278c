"""The voting page, built with gradio (the demo's stack): a rater id, the prompt, two images
side by side, one question per criterion, Submit and Skip.

Everything the page decides is :class:`~rewardkit.vote.session.VotingSession`'s; this file is
the layout and the wiring. What the browser receives names no model: the two images (fresh
PNGs of one size, cached under a hash of their pixels), the prompt and the rater's progress;
which model is on which side stays in the server's per-tab state.
"""

from __future__ import annotations

import inspect
from typing import Any

from ..demo.page import _gradio
from ..errors import RewardkitError
from .session import CRITERIA, Shown, VotingSession

ANSWERS = {"Left": "left", "Right": "right", "Tie": "tie"}


def _without_buttons(component: Any) -> dict[str, Any]:
    """Keywords that hide an image's download/share buttons, in this gradio's spelling."""
    params = inspect.signature(component.__init__).parameters
    if "buttons" in params:
        return {"buttons": []}
    return {name: False for name in ("show_download_button", "show_share_button",
                                     "show_fullscreen_button") if name in params}


def build_page(session: VotingSession, title: str = "Which image is better?") -> Any:
    """The ``gradio.Blocks`` page of ``session``."""
    gr = _gradio()
    criteria = session.criteria

    def status_of(rater: str, finished: bool = False) -> str:
        done, total = session.progress(rater)
        if finished:
            return f"**{rater}**: all {total} pairs done. Thank you!"
        return f"**{rater}**: {done} of {total} pairs done."

    def show(rater: str) -> list[Any]:
        shown = session.next_pair(rater)
        radios = [gr.update(value=None) for _ in criteria]
        if shown is None:
            return [None, None, None, "", *radios, status_of(rater, finished=True)]
        left, right = session.images(shown)
        return [shown, left, right, f"### {shown.pair.prompt}", *radios, status_of(rater)]

    def start(rater_text: str, current: Shown | None) -> list[Any]:
        try:
            if current is not None:
                session.release(current)
            return show(rater_text)
        except RewardkitError as exc:
            raise gr.Error(str(exc)) from None

    def submit(current: Shown | None, *answers: str | None) -> list[Any]:
        if current is None:
            raise gr.Error("type your rater id and press Start first")
        if any(answer is None for answer in answers):
            raise gr.Error("answer every question, or press Skip")
        try:
            session.record(current, {c: ANSWERS[a] for c, a in zip(criteria, answers)})
            return show(current.rater)
        except RewardkitError as exc:
            raise gr.Error(str(exc)) from None

    def skip(current: Shown | None) -> list[Any]:
        if current is None:
            raise gr.Error("type your rater id and press Start first")
        try:
            session.record(current, None)
            return show(current.rater)
        except RewardkitError as exc:
            raise gr.Error(str(exc)) from None

    with gr.Blocks(title=title) as page:
        gr.Markdown(f"## {title}\nEach pair shows two images made for the prompt, in random "
                    "order. Answer each question, or press Skip if you cannot tell.")
        with gr.Row():
            rater = gr.Textbox(label="Rater id", placeholder="your name or initials",
                               elem_id="rater", scale=4)
            start_button = gr.Button("Start", variant="primary", elem_id="start", scale=1)
        state = gr.State(None)
        prompt = gr.Markdown(elem_id="prompt")
        with gr.Row():
            left = gr.Image(label="Left", type="pil", format="png", interactive=False,
                            elem_id="left-image", **_without_buttons(gr.Image))
            right = gr.Image(label="Right", type="pil", format="png", interactive=False,
                             elem_id="right-image", **_without_buttons(gr.Image))
        radios = [gr.Radio(list(ANSWERS), label=CRITERIA[c], elem_id=f"criterion-{c}")
                  for c in criteria]
        with gr.Row():
            submit_button = gr.Button("Submit", variant="primary", elem_id="submit")
            skip_button = gr.Button("Skip", elem_id="skip")
        status = gr.Markdown(elem_id="status")
        outputs = [state, left, right, prompt, *radios, status]
        start_button.click(start, [rater, state], outputs)
        rater.submit(start, [rater, state], outputs)
        submit_button.click(submit, [state, *radios], outputs)
        skip_button.click(skip, [state], outputs)
    return page


__all__ = ["build_page"]
