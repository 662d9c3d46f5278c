"""``compile``: ``torch.compile`` of the UNet calls of a training step.

The student, the EMA target and the teacher are compiled in place with ``nn.Module.compile``
(not ``torch.compile(module)``): the module stays the same object, its ``state_dict`` keys keep
their names (no ``_orig_mod.`` prefix), so checkpoints, the EMA's cached parameter lists, LoRA
and ``save_pretrained`` see exactly what they see without compile. The first calls of each
module compile it (minutes for an SD-sized UNet); later steps reuse the graphs.

A torch 2.13 bug is worked around here: on the CPU, inductor's *layout optimisation* (it turns
convolutions channels-last) computes wrong gradients for a diffusers UNet: every parameter
before the first up-sampler gets a zero gradient while the forward pass is right (found with
``torch._inductor.compiler_bisector`` on the tiny test UNet; torch 2.14.1 is right with it on).
So on a CPU with torch < 2.14 inductor runs with ``layout_optimization`` off; nothing changes on
GPUs or newer torch. ``benchmarks/check_compile.py`` compares compiled and eager gradients.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

import torch
from torch import nn

from ..errors import ConfigError


def compile_modes() -> list[str]:
    """``torch.compile``'s modes in this torch (``default``, ``reduce-overhead``, ...)."""
    import torch._inductor

    return list(torch._inductor.list_mode_options(None))


def check_compile(backend: str, mode: Optional[str]) -> None:
    """Reject an unknown backend or mode, naming the key (before any model loads)."""
    import torch._dynamo

    backends = torch._dynamo.list_backends(exclude_tags=())
    if backend not in backends:
        raise ConfigError(f"compile_backend must be one of {', '.join(sorted(backends))}, got "
                          f"{backend!r}")
    if mode is not None and mode not in compile_modes():
        raise ConfigError(f"compile_mode must be one of {', '.join(compile_modes())}, got "
                          f"{mode!r}")
    if mode is not None and backend != "inductor":
        raise ConfigError(f"compile_mode is an inductor option; compile_backend is {backend!r}. "
                          "Drop compile_mode or use compile_backend inductor")


def layout_bug(device: torch.device, torch_version: str = torch.__version__) -> bool:
    """Whether inductor's layout optimisation must be off here (CPU, torch < 2.14)."""
    major, minor = (int(part) for part in torch_version.split("+")[0].split(".")[:2])
    return torch.device(device).type == "cpu" and (major, minor) < (2, 14)


def compile_options(backend: str, mode: Optional[str], device: torch.device) -> dict[str, Any]:
    """The keyword arguments of ``nn.Module.compile`` for this backend, mode and device.

    ``torch.compile`` takes ``mode`` or ``options``, not both: where the layout bug needs an
    option, the mode's own options (``torch._inductor.list_mode_options``) go in with it.
    """
    if backend == "inductor" and layout_bug(device):
        import torch._inductor

        options = dict(torch._inductor.list_mode_options(mode)) if mode else {}
        return {"backend": backend, "options": {**options, "layout_optimization": False}}
    return {"backend": backend, "mode": mode}


def compile_modules(modules: Iterable[Optional[nn.Module]], backend: str,
                    mode: Optional[str], device: torch.device) -> None:
    """``module.compile(...)`` (:func:`compile_options`) for each module that is not ``None``."""
    kwargs = compile_options(backend, mode, device)
    for module in modules:
        if module is not None:
            module.compile(**kwargs)


__all__ = ["check_compile", "compile_modes", "compile_modules", "compile_options", "layout_bug"]
