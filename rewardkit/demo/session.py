"""What the demo page does when a prompt is submitted: sample the student (and the teacher)
with the same seed, time each, and score the images with the chosen reward models.

Kept apart from the web page (:mod:`rewardkit.demo.page`) so it is usable and testable
without a browser::

    session = DemoSession("rg-lcd-world/pipeline", teacher="rewardkit/world/assets/teacher",
                          metrics=["world-judge"])
    result = session.generate("a red circle on a white background", steps=2, guidance=7.5, seed=0)
    result.student.image, result.student.ms, result.student.scores
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from ..errors import ConfigError

MAX_STEPS = 8


@dataclass
class Sample:
    """One generated image with its time and scores."""

    image: Any  # PIL.Image.Image
    ms: float
    steps: int
    #: UNet evaluations, conditional and unconditional passes counted apart (the paper's count)
    unet_evaluations: int
    scores: dict[str, float] = field(default_factory=dict)

    def caption(self, who: str) -> str:
        """A one-line summary shown under the image."""
        scores = ", ".join(f"{name} {value:.3f}" for name, value in self.scores.items())
        return (f"{who}: {self.steps} step{'s' if self.steps > 1 else ''}, {self.ms:.0f} ms, "
                f"{self.unet_evaluations} UNet evaluation{'s' if self.unet_evaluations != 1 else ''}"
                + (f" | {scores}" if scores else ""))


@dataclass
class DemoResult:
    """The student's sample and, with a teacher, the teacher's."""

    student: Sample
    teacher: Sample | None = None


class DemoSession:
    """Loaded pipelines and reward models for the demo (loaded once, reused per request).

    Args:
        model: the student, a diffusers pipeline folder or hub id (sampled with LCMScheduler).
        teacher: optionally a teacher pipeline (DDIM + classifier-free guidance).
        metrics: names of registered reward models whose scores are shown.
        device: ``auto``, ``cpu``, ``cuda``...
        dtype: pipeline dtype.
    """

    def __init__(self, model: str, teacher: str | None = None, metrics: Sequence[str] = (),
                 device: str = "auto", dtype: str = "float32") -> None:
        from .. import api
        from ..sampling import load_pipeline, resolve_device

        self.device = str(resolve_device(device))
        self.student = load_pipeline(model, "lcm", self.device, dtype)
        self.teacher = load_pipeline(teacher, "ddim", self.device, dtype) if teacher else None
        self.reward_models = {}
        for name in metrics:
            self.reward_models[name] = api.reward_model(name)

    def _sample(self, pipe: Any, prompt: str, steps: int, guidance: float, seed: int) -> Sample:
        from ..sampling import pil_to_tensor, run_pipeline

        result = run_pipeline(pipe, [prompt], steps, guidance, seeds=[seed], batch_size=1)
        image = result.images[0]
        pixels = pil_to_tensor([image])
        scores = {}
        with torch.no_grad():
            for name, model in self.reward_models.items():
                scores[name] = float(model(pixels.to(model.device), [prompt])[0])
        passes = 2 if getattr(pipe, "do_classifier_free_guidance", False) else 1
        return Sample(image, result.ms_per_image, steps, result.unet_evaluations * passes, scores)

    def generate(self, prompt: str, steps: int = 2, guidance: float = 7.5, seed: int = 0,
                 teacher_steps: int = 50) -> DemoResult:
        """Sample ``prompt`` with the student at ``steps`` (1-8) and the teacher at
        ``teacher_steps``, the same ``seed`` for both."""
        prompt = (prompt or "").strip()
        if not prompt:
            raise ConfigError("type a prompt first")
        if not 1 <= int(steps) <= MAX_STEPS:
            raise ConfigError(f"steps must be between 1 and {MAX_STEPS}, got {steps}")
        student = self._sample(self.student, prompt, int(steps), float(guidance), int(seed))
        teacher = None
        if self.teacher is not None:
            teacher = self._sample(self.teacher, prompt, int(teacher_steps), float(guidance),
                                   int(seed))
        return DemoResult(student, teacher)
