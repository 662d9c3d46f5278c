"""The served reward model without HTTP: what ``/describe`` says, the token check, and scoring
a decoded request through the batcher (:mod:`rewardkit.serving.batcher`).

The HTTP face (:mod:`rewardkit.serving.app`) only reads bodies, maps errors to status codes and
writes JSON; everything it answers is decided here, so it is tested without a socket.
"""

from __future__ import annotations

import hmac
import inspect
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch

from ..rewards.base import RewardModel
from ..secrets import redact
from .batcher import Batcher
from .protocol import ENCODINGS, PROTOCOL_VERSION, ScoreRequest


@dataclass
class ServerLimits:
    """What one server takes: ``max_batch`` images per RM call, ``max_queue`` images waiting,
    ``max_request_bytes`` and ``max_request_images`` per request (413 beyond), and
    ``batch_wait_s``, how long a batch that is not full waits for other clients' images."""

    max_batch: int = 32
    max_queue: int = 512
    max_request_bytes: int = 64 * 2**20
    max_request_images: int = 512
    batch_wait_s: float = 0.0


@dataclass
class RewardService:
    """A built RM served under ``name``; ``token`` (``None``: no authentication) is compared
    in constant time and never shown (``repr`` leaves it out)."""

    rm: RewardModel
    name: str
    params: dict[str, Any] = field(default_factory=dict, repr=False)  # may hold secrets
    version: str | None = None
    limits: ServerLimits = field(default_factory=ServerLimits)
    token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.takes_metadata = "metadata" in inspect.signature(self.rm.score_terms).parameters
        self.batcher = Batcher(self._score, self.limits.max_batch, self.limits.max_queue,
                               self.limits.batch_wait_s)

    def describe(self) -> dict[str, Any]:
        """``GET /describe``: the RM and the server's limits (parameters with secrets redacted)."""
        from .. import __version__

        return {"protocol": PROTOCOL_VERSION, "name": self.name, "version": self.version,
                "rewardkit": __version__,
                "differentiable": bool(getattr(self.rm, "differentiable", False)),
                "input_space": self.rm.input_space,
                "logit_scale": (None if self.rm.logit_scale is None
                                else float(self.rm.logit_scale)),
                "image_size": expected_image_size(self.rm),
                "takes_metadata": self.takes_metadata,
                "params": redact(self.params), "encodings": list(ENCODINGS),
                "max_batch": self.limits.max_batch, "max_queue": self.limits.max_queue,
                "max_request_bytes": self.limits.max_request_bytes,
                "max_request_images": self.limits.max_request_images,
                "authentication": self.token is not None}

    def authorised(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header carries the token (always, without a token)."""
        if self.token is None:
            return True
        scheme, _, value = (header or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(),
                                                                  self.token.encode())

    def submit(self, request: ScoreRequest) -> Future:
        """Queue a decoded request: a future of ``(scores [B], {term: [B]})``; raises
        :class:`rewardkit.serving.batcher.QueueFull` when the queue has no room."""
        return self.batcher.submit(request.images, request.prompts, request.metadata)

    def close(self) -> None:
        """Stop the batching worker."""
        self.batcher.close()

    def _score(self, images: torch.Tensor, prompts: list[str],
               metadata: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        extra = {"metadata": metadata} if self.takes_metadata else {}
        with torch.no_grad():
            scores, terms = self.rm.call_with_terms(images.to(self.rm.device), prompts, **extra)
        # read back here, on the worker, not on the event loop answering the clients
        return scores.float().cpu(), {name: t.float().cpu() for name, t in terms.items()}


def expected_image_size(rm: RewardModel) -> list[int] | None:
    """The ``[height, width]`` the RM resizes or crops its input to, when it says
    (``image_size``, or the crop of a CLIP-style transform); ``None`` when it takes any size."""
    size = getattr(rm, "image_size", None)
    if size is None:
        transform = getattr(rm, "transform", None)
        size = getattr(transform, "crop_size", None) or getattr(transform, "size", None)
    if size is None:
        return None
    if isinstance(size, int):
        return [size, size]
    try:
        return [int(s) for s in size]
    except TypeError:
        return None


__all__ = ["RewardService", "ServerLimits", "expected_image_size"]
