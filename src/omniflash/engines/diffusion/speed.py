"""Speed options for a loaded pipeline on a GPU: the attention kernel and compiled blocks.

Both are per recipe and act only on CUDA; on a CPU a pipeline runs as diffusers builds
it.  Neither changes the model: ``attention`` picks the kernel behind every attention
layer of the denoising transformer (``set_attention_backend``), ``compile`` compiles
its repeated blocks with ``torch.compile`` (``compile_repeated_blocks``), once per
process; each new shape compiles on its first call, which ``[[warmup]]`` shapes move to
the worker's start.

Both default to off: diffusers' own choices, until ``bench/engine_gpu.py`` has measured
the alternatives on the GPU in question.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["ATTENTION_BACKENDS", "denoisers", "speed_up"]

log = logging.getLogger(__name__)

ATTENTION_BACKENDS = (
    "default",
    "native",
    "_native_cudnn",
    "_native_flash",
    "_native_efficient",
    "flash",
    "_flash_3",
    "sage",
    "xformers",
)
"""``default`` leaves diffusers' choice; the others are diffusers' backend names.

``flash``, ``_flash_3``, ``sage`` and ``xformers`` need their packages installed
(flash-attn, flash-attn 3, sageattention, xformers)."""


def denoisers(pipe: Any) -> list[Any]:
    """The pipeline's denoising transformers (Wan 2.2 A14B has two)."""
    return [m for m in (getattr(pipe, n, None) for n in ("transformer", "transformer_2")) if m]


def speed_up(pipe: Any, attention: str, compile_blocks: bool) -> list[str]:
    """Apply the options to ``pipe``'s transformers; returns what was done, for the log."""
    done: list[str] = []
    for model in denoisers(pipe):
        name = type(model).__name__
        if attention != "default":
            model.set_attention_backend(attention)
            done.append(f"{name} attention {attention}")
        if compile_blocks:
            if getattr(model, "_repeated_blocks", None):
                model.compile_repeated_blocks(fullgraph=True)
                done.append(f"{name} blocks compiled")
            else:
                log.warning("%s has no repeated blocks to compile; it runs uncompiled", name)
    return done
