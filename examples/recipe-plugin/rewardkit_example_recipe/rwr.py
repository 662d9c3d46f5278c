"""``rwr``: reward-weighted regression of a model on its own samples, on rewardkit's training loop.

One optimiser step::

    x0_i  = f(z_i, T, c_i)                   the model's one-step samples from noise (no grad)
    r_i   = R(decode(x0_i), c_i)             any registered reward model, no gradient needed
    w_i   = B * softmax(r / temperature)_i   weights with mean 1
    L     = mean_i w_i * |x0_hat(noise(x0_i, t_i), t_i, c_i) - x0_i|^2     t_i ~ U{0..T}

The loop (``rewardkit.training.TrainingLoop``) does the rest: data, optimiser, accumulation,
clipping, checks, logging, checkpoints and resume. The output is the trained UNet's weights
(``output_dir/model.safetensors``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from rewardkit.config import OURS, config_field
from rewardkit.errors import ConfigError
from rewardkit.rewards import build_expert
from rewardkit.training import TrainingConfig, TrainingLoop


@dataclass
class RWRConfig(TrainingConfig):
    """Reward-weighted regression: the training loop's keys plus the reward and its weighting."""

    output_dir: str = config_field("rwr-model", "Where checkpoints, metrics and the model go", OURS)
    reward: str = config_field("jpeg-compressibility", "Registered reward model that weights the "
                               "samples (any: no gradient is taken through it)", OURS)
    reward_params: dict = config_field({}, "Keyword arguments for the reward model", OURS)
    temperature: float = config_field(0.1, "Softmax temperature of the reward weights (lower: "
                                      "the best samples dominate)", OURS)
    sample_timestep: int = config_field(999, "Timestep the one-step samples start from", OURS)

    KEY_GROUPS = {**TrainingConfig.KEY_GROUPS,
                  "Reward weighting": ("reward", "reward_params", "temperature",
                                       "sample_timestep")}

    def validate(self) -> None:
        """The loop's checks, then this recipe's."""
        super().validate()
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be positive, got {self.temperature}")
        if not 0 < self.sample_timestep < 1000:
            raise ConfigError(f"sample_timestep must be in 1..999, got {self.sample_timestep}")


def reward_weights(rewards: torch.Tensor, temperature: float) -> torch.Tensor:
    """``B * softmax(rewards / temperature)``: positive, mean 1, ordered like the rewards."""
    return torch.softmax(rewards.float() / temperature, dim=0) * rewards.shape[0]


class RWRRecipe(TrainingLoop):
    """Reward-weighted regression of the teacher's UNet on its own one-step samples."""

    name = "rwr"
    Config = RWRConfig
    progress_keys = ("rwr_loss", "reward", "lr", "step_time")

    def build_models(self) -> torch.nn.Module:
        """A trainable fp32 copy of the teacher's UNet."""
        return self.backbone.build_student(time_cond_proj_dim=None)

    def after_prepare(self) -> None:
        """The reward model, on this process's device."""
        cfg = self.config
        self.expert = build_expert(cfg.reward, cfg.reward_params, device=self.device,
                                   mixed_precision=cfg.mixed_precision)

    def predict_x0(self, z: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        """The model's estimate of the clean latents from ``z`` at ``t``."""
        with self.autocast():
            out = self.backbone.predict(self.model, z, t, cond)
        return self.backbone.schedule.predicted_origin(out.float(), t, z)

    def losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The reward-weighted regression loss on this batch's captions."""
        cfg, device = self.config, self.device
        captions = batch["captions"]
        cond = self.backbone.encode_prompts(captions).float()
        side = self.backbone.latent_side(cfg.resolution)
        shape = (len(captions), self.backbone.latent_channels, side, side)
        with torch.no_grad():  # the model's own samples, scored by the reward model
            noise = torch.randn(shape, generator=self.generator).to(device)
            start = torch.full((len(captions),), cfg.sample_timestep, dtype=torch.long,
                               device=device)
            samples = self.predict_x0(noise, start, cond)
            rewards = self.expert(self.backbone.decode_latents(samples).float(), captions)
            weights = reward_weights(rewards, cfg.temperature)
        t = torch.randint(0, 1000, (len(captions),), generator=self.generator).to(device)
        eps = torch.randn(shape, generator=self.generator).to(device)
        noisy = self.backbone.schedule.add_noise(samples, eps, t)
        error = (self.predict_x0(noisy, t, cond) - samples).pow(2).mean(dim=(1, 2, 3))
        self.mean_reward = rewards.mean()
        return {"rwr_loss": (weights * error).mean()}

    def after_step(self) -> dict[str, torch.Tensor]:
        """The mean reward of the step's samples, logged as ``reward``."""
        return {"reward": self.mean_reward}
