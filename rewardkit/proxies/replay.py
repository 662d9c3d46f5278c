"""A replay buffer of recent expert-scored candidates for the online proxy update.

The paper's proxy update sees each expert judgement once: ``proxy_batch_size`` prompts x 3 candidates
per student step. A replay buffer keeps the last ``capacity`` judged triples (student, target,
ground truth of one prompt, with its prompt embedding and the expert's three scores), so extra
proxy updates (``proxy_updates_per_step`` > 1) can reuse recent judgements instead of spending
more expert calls. Triples are stored whole: the pairwise losses need all three candidates of a
prompt together.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError


class CandidateReplay:
    """Ring buffer of judged candidate triples; :meth:`sample` draws uniformly without replacement."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ConfigError(f"proxy_replay_size must be >= 1 to keep a buffer, got {capacity}")
        self.capacity = capacity
        self.latents: torch.Tensor | None = None   # [capacity, 3, C, h, w]
        self.embeds: torch.Tensor | None = None    # [capacity, L, D]
        self.scores: torch.Tensor | None = None    # [capacity, 3]
        self.size = 0   # filled slots
        self.next = 0   # slot the next triple goes to

    def __len__(self) -> int:
        return self.size

    def add(self, latents: torch.Tensor, prompt_embeds: torch.Tensor, scores: torch.Tensor) -> None:
        """Store triples: ``latents [3, S, C, h, w]``, ``prompt_embeds [S, L, D]``, ``scores [3, S]``."""
        latents = latents.detach().transpose(0, 1)  # [S, 3, ...]
        scores = scores.detach().transpose(0, 1).float()
        prompt_embeds = prompt_embeds.detach()
        if self.latents is None:
            self.latents = latents.new_zeros((self.capacity, *latents.shape[1:]))
            self.embeds = prompt_embeds.new_zeros((self.capacity, *prompt_embeds.shape[1:]))
            self.scores = scores.new_zeros((self.capacity, 3))
        assert self.embeds is not None and self.scores is not None
        for k in range(latents.shape[0]):
            self.latents[self.next] = latents[k]
            self.embeds[self.next] = prompt_embeds[k]
            self.scores[self.next] = scores[k]
            self.next = (self.next + 1) % self.capacity
            self.size = min(self.size + 1, self.capacity)

    def sample(self, count: int, generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``count`` stored triples (fewer if fewer are stored) as the update's input shapes."""
        if self.size == 0 or self.latents is None:
            raise ConfigError("the proxy replay buffer is empty; add judged candidates first")
        assert self.embeds is not None and self.scores is not None
        rows = torch.randperm(self.size, generator=generator)[:count].to(self.latents.device)
        return (self.latents[rows].transpose(0, 1), self.embeds[rows],
                self.scores[rows].transpose(0, 1))

    # -------------------------------------------------------------- checkpoints (safetensors)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors to save with a checkpoint (empty while nothing is stored)."""
        if self.latents is None or self.size == 0:
            return {}
        assert self.embeds is not None and self.scores is not None
        return {"latents": self.latents[:self.size].contiguous().cpu(),
                "embeds": self.embeds[:self.size].contiguous().cpu(),
                "scores": self.scores[:self.size].contiguous().cpu(),
                "next": torch.tensor([self.next])}

    def load_state_tensors(self, state: dict[str, torch.Tensor],
                           device: torch.device | str = "cpu") -> None:
        """Restore :meth:`state_tensors` output."""
        if not state:
            return
        size = state["latents"].shape[0]
        if size > self.capacity:
            raise ConfigError(f"the checkpoint's proxy replay buffer holds {size} triples, more "
                              f"than proxy_replay_size={self.capacity}; resume with the same size")
        self.latents = state["latents"].new_zeros((self.capacity, *state["latents"].shape[1:])).to(device)
        self.embeds = state["embeds"].new_zeros((self.capacity, *state["embeds"].shape[1:])).to(device)
        self.scores = state["scores"].new_zeros((self.capacity, 3)).to(device)
        self.latents[:size] = state["latents"].to(device)
        self.embeds[:size] = state["embeds"].to(device)
        self.scores[:size] = state["scores"].to(device)
        self.size = size
        self.next = int(state["next"][0]) % self.capacity
