"""Built-in backbones plugin: registers rewardkit's own backbones through the public hooks.

- backbone ``stable-diffusion``: :class:`~rewardkit.backbones.stable_diffusion.StableDiffusionBackbone`,
  an SD 1.x/2.x teacher (epsilon or v-prediction) loaded from a hub id or a local diffusers folder.
- backbone ``stable-diffusion-xl``:
  :class:`~rewardkit.backbones.stable_diffusion_xl.StableDiffusionXLBackbone`, an SDXL teacher.
- backbone ``stable-diffusion-3``:
  :class:`~rewardkit.backbones.stable_diffusion_3.StableDiffusion3Backbone`, an SD 3 / 3.5
  flow-matching teacher (MMDiT, two CLIPs and optionally T5).
- command ``rewardkit sample``: sample a saved student (LCMScheduler, 1-8 steps) or, with
  ``--teacher``, a teacher (DDIM + classifier-free guidance); see :mod:`rewardkit.sampling`.

Heavy imports (diffusers, transformers) happen only when a backbone is built or a sample is taken,
so ``rewardkit list`` stays fast.
"""

from __future__ import annotations

from ..hookspecs import hookimpl


@hookimpl
def register_backbones(register):
    """Register the Stable Diffusion (1.x/2.x), SDXL and SD 3 / 3.5 backbones."""
    from .stable_diffusion import StableDiffusionBackbone
    from .stable_diffusion_3 import StableDiffusion3Backbone
    from .stable_diffusion_xl import StableDiffusionXLBackbone

    register(StableDiffusionBackbone)
    register(StableDiffusionXLBackbone)
    register(StableDiffusion3Backbone)


@hookimpl
def register_commands(register):
    """Register `rewardkit sample`."""
    from ..sampling import sample_command

    register(sample_command, "sample",
             help="Sample a saved student (LCMScheduler) or, with --teacher, a teacher (DDIM + CFG).")
