"""``remote``: a reward model served by another process (``rewardkit serve-reward``), over HTTP.

>>> rm = rewardkit.reward_model("remote", url="http://127.0.0.1:8765")   # doctest: +SKIP
>>> rm(images, prompts)                    # the served RM's scores, checked here too

Use it for RMs whose dependencies do not install beside training's (``hpsv2`` from the plugins'
venv, a VLM judge under vLLM) or that need a GPU of their own. It is **not differentiable**:
``rg-lcd`` learns from it through the latent proxy RM (``proxy=lrm``); direct mode refuses it.

Building it asks each server's ``/describe`` (so a server that is not running stops the run
before training, naming the URL) and takes the served RM's ``input_space`` and
``logit_scale``. Each call sends the images in requests of at most ``max_batch`` (the
server's own when unset), spread over the servers when ``url`` lists several, and checks the
answer (one finite score per image). Failures are :class:`rewardkit.errors.RemoteRewardError`
naming the server (see :mod:`rewardkit.serving.client` for what is retried). The RM's calls use
no random stream of the training, so a run resumed from a checkpoint continues exactly.

The token: ``token``, else the environment variable ``token_env`` names
(``REWARDKIT_REWARD_TOKEN``). A ``token`` in ``reward_params`` is written to ``config.json``
as ``<redacted>``; the variable keeps it out of the command line too.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..errors import ConfigError, RemoteRewardError
from ..secrets import TOKEN_ENV, token_from_env
from .base import RewardModel

#: Image encodings (see :mod:`rewardkit.serving.protocol`): exact float32, or 8-bit.
ENCODINGS = ("float32", "uint8", "png")


class RemoteReward(RewardModel):
    """An RM served by `rewardkit serve-reward` over HTTP (not differentiable; URLs share load)."""

    name = "remote"
    input_space = "pixels"
    differentiable = False
    logit_scale = None

    def __init__(self, url: str | list[str], token: str | None = None,
                 token_env: str = TOKEN_ENV, timeout: float = 120.0, retries: int = 4,
                 backoff: float = 1.0, encoding: str = "float32", max_batch: int | None = None,
                 metadata: dict | None = None) -> None:
        """``url``: the server (``http://host:port``), or several (a list, or separated by
        commas); ``token``/``token_env``: the server's token, or the variable holding it;
        ``timeout``: seconds to wait for each answer; ``retries``: further tries after a
        dropped connection, a timeout or a busy server, waiting ``backoff`` seconds, doubling;
        ``encoding``: ``float32`` (exact), ``uint8`` or ``png`` (4x or more fewer bytes, the
        8-bit rounding's precision); ``max_batch``: images per request (default: the
        server's); ``metadata``: a JSON object sent with every request (for a served RM that
        takes it)."""
        from ..serving.client import RewardClient, parse_urls

        if encoding not in ENCODINGS:
            raise ConfigError(f"reward_params encoding: '{encoding}' is not one of "
                              f"{', '.join(ENCODINGS)}")
        if max_batch is not None and max_batch < 1:
            raise ConfigError(f"reward_params max_batch must be at least 1, got {max_batch}")
        if metadata is not None and not isinstance(metadata, dict):
            raise ConfigError("reward_params metadata must be a JSON object")
        self.urls = parse_urls(url)
        self.encoding, self.metadata = encoding, metadata
        self.client = RewardClient(self.urls, token or token_from_env(token_env), timeout=timeout,
                                   retries=retries, backoff=backoff)
        self.served = self.client.describe()
        self.input_space = self.served.get("input_space", "pixels")
        if self.input_space != "pixels" and encoding != "float32":
            raise ConfigError(f"reward_params encoding: the served RM '{self.served['name']}' "
                              f"reads {self.input_space}, which only float32 carries")
        scale = self.served.get("logit_scale")
        self.logit_scale = None if scale is None else float(scale)
        self.max_batch = max_batch or self._largest_request()

    def __repr__(self) -> str:
        return (f"RemoteReward(url={self.urls}, serves={self.served.get('name')!r}, "
                f"encoding={self.encoding!r})")

    def _largest_request(self) -> int:
        """The server's batch, bounded by its request limits."""
        served = self.served
        return max(1, min(int(served.get("max_batch") or 32),
                          int(served.get("max_request_images") or 2**31)))

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """The served RM's scores, shape ``[B]``, on the images' device."""
        return self.score_terms(images, prompts)[0]

    def score_terms(self, images: torch.Tensor,
                    prompts: Sequence[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The served RM's scores and terms (what its ``score_terms`` returns)."""
        self._check_size(images)
        scores, terms = self.client.score(images.detach(), list(prompts), encoding=self.encoding,
                                          metadata=self.metadata, chunk=self.max_batch)
        device = images.device
        return (torch.as_tensor(scores, dtype=torch.float32).to(device),
                {name: torch.as_tensor(v, dtype=torch.float32).to(device)
                 for name, v in terms.items()})

    def _check_size(self, images: torch.Tensor) -> None:
        """Refuse, before sending, an image that alone is over the server's request limit."""
        limit = self.served.get("max_request_bytes")
        if not limit or images.shape[0] == 0 or self.encoding == "png":
            return
        per_image = images[0].numel() * (4 if self.encoding == "float32" else 1)
        if per_image > limit:
            raise RemoteRewardError(self.urls, f"takes requests of at most {limit} bytes and one "
                                    f"{tuple(images.shape[1:])} image is {per_image} bytes in "
                                    f"{self.encoding}", "use encoding uint8 or png, or raise "
                                    "the server's --max-request-mb")
        fits = max(1, (limit - min(65536, limit // 8)) // per_image)  # room for the prompts
        self.max_batch = min(self.max_batch, fits)

    def close(self) -> None:
        """Close the connections."""
        self.client.close()


__all__ = ["RemoteReward"]
