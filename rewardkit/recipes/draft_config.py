"""The ``draft`` recipe's configuration: the training loop's keys plus the sampler, the reward and
the optional proxy and regulariser (:class:`DraftConfig`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional

from ..config import OURS
from ..config import config_field as _f
from ..errors import ConfigError
from ..proxies.factory import NO_PROXY
from ..training.config import DEFAULT_VALIDATION_PROMPTS, TrainingConfig, check_reward_and_proxy
from ..sampling_grad import resolve_grad_steps

@dataclass
class DraftConfig(TrainingConfig):
    """DRaFT-K: reward back-propagated through the last K steps of a few-step student's chain."""

    pretrained_student: Optional[str] = field(default=None, metadata={
        "help": "The few-step student to fine-tune: a distilled pipeline folder (lcd / rg-lcd "
                "output_dir/pipeline) or a checkpoint-N folder (required)", "provenance": OURS})
    train_shards_path_or_url: Optional[str] = _f(None, "Training prompts: a registered prompt "
                                                 "set or a .txt/.jsonl/.json/.csv/.tsv file "
                                                 "(required)", OURS)
    output_dir: str = _f("draft-model", "Where checkpoints, validation images, metrics and the "
                         "final pipeline go", OURS)
    tracker_project_name: str = _f("rewardkit-draft", "Tracker project name", OURS)
    learning_rate: float = _f(1e-5, "AdamW learning rate of the student", OURS)
    # ---------------------------------------------------------------- the sampler
    sample_steps: int = _f(2, "Consistency sampling steps of each training sample", OURS)
    grad_steps: str = _f("last 1", "Steps the reward's gradient flows through: 'last K' "
                         "(DRaFT-K; K = 1 is DRaFT-1) or 'all'", OURS)
    guidance_scale: float = _f(7.5, "The student's guidance input (it embeds w = scale - 1)",
                               OURS)
    num_ddim_timesteps: int = _f(50, "The LCM schedule's original_inference_steps (the "
                                 "student's distillation grid)", OURS)
    timestep_scaling_factor: float = _f(10.0, "The LCM boundary-condition timestep scaling",
                                        OURS)
    sampler_checkpointing: bool = _f(False, "Recompute each gradient step's UNet activations "
                                     "in backward (K > 1 at full size; same gradient)", OURS)
    # ---------------------------------------------------------------- the reward
    reward: Optional[str] = _f(None, "Registered reward model (required)", OURS)
    reward_params: dict = _f({}, "Keyword arguments for the reward model", OURS)
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
    # ---------------------------------------------------------------- regularisers and LoRA
    init_l2: float = _f(0.0, "Weight of ||theta - theta_0||^2 over the trained parameters "
                        "(0: off; on a full student it keeps a copy of its weights)", OURS)
    use_lora: bool = _f(False, "Train LoRA adapters on the student (a LoRA student trains its "
                        "own adapters either way)", OURS)
    lora_rank: int = _f(16, "LoRA rank", OURS)
    lora_alpha: Optional[int] = _f(None, "LoRA alpha (None: the peft default)", OURS)
    # ---------------------------------------------------------------- validation
    validation_prompts: list[str] = _f(list(DEFAULT_VALIDATION_PROMPTS), "Prompts of the "
                                       "validation grid", OURS)
    validation_seeds: list[int] = _f([0], "Seeds of the validation grid", OURS)
    validation_inference_steps: list[int] = _f([1, 2, 4], "Step counts of the validation grid",
                                               OURS)

    KEY_GROUPS: ClassVar[dict[str, tuple[str, ...]]] = {
        **TrainingConfig.KEY_GROUPS,
        "Model": TrainingConfig.KEY_GROUPS["Model"] + ("pretrained_student",),
        "Sampler": ("sample_steps", "grad_steps", "guidance_scale", "num_ddim_timesteps",
                    "timestep_scaling_factor", "sampler_checkpointing"),
        "Reward": ("reward", "reward_params", "reward_scale", "vae_gradient_checkpointing"),
        "Proxy": ("proxy", "proxy_params", "pretrained_proxy", "proxy_lr", "proxy_update_every", "expert_logit_scale"),
        "Regularisers and LoRA": ("init_l2", "use_lora", "lora_rank", "lora_alpha"),
        "Validation": ("validation_prompts", "validation_seeds", "validation_inference_steps"),
    }

    @property
    def direct(self) -> bool:
        """True when the RM's own gradient is followed (``proxy="none"``)."""
        return self.proxy == NO_PROXY

    def validate(self) -> None:
        """The loop's checks, then the sampler's, the reward's and the proxy's."""
        if not self.pretrained_student:
            raise ConfigError("pretrained_student is required: a distilled student's pipeline "
                              "folder or checkpoint-N (train one with `rewardkit run lcd`)")
        self.require_folder("pretrained_student")
        super().validate()
        self.require_positive("sample_steps", "num_ddim_timesteps", "timestep_scaling_factor",
                              "proxy_lr", "proxy_update_every", "lora_rank", "lora_alpha",
                              "expert_logit_scale")
        self.require_non_negative("reward_scale", "init_l2")
        resolve_grad_steps(self.grad_steps, self.sample_steps)  # names a bad value
        check_reward_and_proxy(self)
        self.require_folder("pretrained_proxy")


__all__ = ["DraftConfig"]
