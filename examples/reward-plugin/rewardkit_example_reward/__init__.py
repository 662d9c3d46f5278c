"""Example rewardkit plugin: two small, differentiable reward models computed in torch.

- ``colorfulness``: the Hasler–Süsstrunk colourfulness metric.
- ``sharpness``: the (log) variance of the Laplacian of the image's luma.

Both ignore the prompt, so they are cheap stand-ins for a real RM and handy objectives for
``rewardkit run rg-lcd --reward colorfulness`` style experiments.
"""

from .colorfulness import Colorfulness
from .sharpness import Sharpness

__version__ = "0.1.0"
__all__ = ["Colorfulness", "Sharpness"]
