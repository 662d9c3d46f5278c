"""The ``draft`` recipe's configuration: the student-tuning keys plus the gradient steps, the
reward term, the optional proxy and the L2 regulariser (:class:`DraftConfig`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

from ..config import OURS
from ..errors import ConfigError
from ..config import config_field as _f
from ..proxies.factory import NO_PROXY
from ..sampling_grad import resolve_grad_steps
from ..training.config import check_reward_and_proxy
from .student_tuning import StudentTuningConfig


@dataclass
class DraftConfig(StudentTuningConfig):
    """DRaFT-K: reward back-propagated through the last K steps of a few-step student's chain."""

    output_dir: str = _f("draft-model", "Where checkpoints, validation images, metrics and the "
                         "final pipeline go", OURS)
    tracker_project_name: str = _f("rewardkit-draft", "Tracker project name", OURS)
    grad_steps: str = _f("last 1", "Steps the reward's gradient flows through: 'last K' "
                         "(DRaFT-K; K = 1 is DRaFT-1) or 'all'", OURS)
    random_stop: bool = _f(False, "ReFL / truncated AlignProp: stop each sample's chain at a "
                           "step drawn uniformly from 1..sample_steps and score that step's x0 "
                           "prediction, the gradient through that step only (grad_steps "
                           "'last 1')", OURS)
    sampler_checkpointing: bool = _f(False, "Recompute each gradient step's UNet activations "
                                     "in backward (K > 1 at full size; same gradient)", OURS)
    reward_scale: float = _f(1.0, "beta: L = -beta * mean(reward) (+ init_l2 term)", OURS)
    vae_gradient_checkpointing: bool = _f(False, "Recompute the VAE decoder's activations in "
                                          "backward (direct mode decodes with the graph)", OURS)
    # ---------------------------------------------------------------- the proxy (LRM bridge)
    proxy: str = _f(NO_PROXY, "'none': the RM's own gradient (differentiable RMs); 'lrm' (or "
                    "another registered proxy): maximise a latent proxy that learns the RM's "
                    "preferences online (any RM)", OURS)
    proxy_params: dict = _f({}, "Keyword arguments for the proxy", OURS)
    pretrained_proxy: Optional[str] = _f(None, "Start the proxy from a saved one (e.g. "
                                         "lrm-pretrain's output_dir/proxy)", OURS)
    proxy_lr: float = _f(3.3e-6, "Learning rate of the proxy's AdamW", OURS)
    proxy_update_every: int = _f(1, "Judge candidates and update the proxy every N-th step",
                                 OURS)
    expert_logit_scale: Optional[float] = _f(None, "Score-to-logit multiplier of an RM without "
                                             "its own (None: the proxy's)", OURS)
    lcd_weight: float = _f(0.0, "Weight of an LCD term against the teacher on the student's "
                           "own samples (data-free: z0 is the batch's sample, detached; the "
                           "target is the student under no_grad; 0: off)", OURS)
    init_l2: float = _f(0.0, "Weight of ||theta - theta_0||^2 over the trained parameters "
                        "(0: off; on a full student it keeps a copy of its weights)", OURS)

    KEY_GROUPS: ClassVar[dict[str, tuple[str, ...]]] = {
        **StudentTuningConfig.KEY_GROUPS,
        "Sampler": StudentTuningConfig.KEY_GROUPS["Sampler"] + ("grad_steps", "random_stop",
                                                                "sampler_checkpointing"),
        "Reward": StudentTuningConfig.KEY_GROUPS["Reward"] + ("reward_scale",
                                                              "vae_gradient_checkpointing"),
        "Proxy": ("proxy", "proxy_params", "pretrained_proxy", "proxy_lr", "proxy_update_every",
                  "expert_logit_scale"),
        "Regularisers": ("init_l2", "lcd_weight"),
    }

    @property
    def direct(self) -> bool:
        """True when the RM's own gradient is followed (``proxy="none"``)."""
        return self.proxy == NO_PROXY

    def validate(self) -> None:
        """The shared checks, then the gradient steps', the reward's and the proxy's."""
        super().validate()
        self.require_positive("proxy_lr", "proxy_update_every", "expert_logit_scale")
        self.require_non_negative("reward_scale", "init_l2", "lcd_weight")
        resolve_grad_steps(self.grad_steps, self.sample_steps)  # names a bad value
        if self.random_stop and resolve_grad_steps(self.grad_steps, self.sample_steps) != (
                self.sample_steps - 1,):
            raise ConfigError(f"random_stop takes grad_steps 'last 1' (the gradient through the "
                              f"step the chain stops at), got {self.grad_steps!r}")
        check_reward_and_proxy(self)
        self.require_folder("pretrained_proxy")


__all__ = ["DraftConfig"]
