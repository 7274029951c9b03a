"""Memory options of a recipe: group offloading, FP8 weights, a step cache, a shared text encoder.

All are off by default until ``bench/engine_gpu.py`` has measured them on the GPU in
question; docs/gpu.md lists what each saves, computed from parameter counts.

- ``offload = "group"``: diffusers' group offloading.  Weights live in CPU memory and
  each group of blocks comes to the GPU just before it runs (on a CUDA stream, so the
  copy of the next group overlaps the compute of this one).
- ``quantize = "fp8"``: the denoising transformers' linear weights in FP8 (e4m3, one
  scale a row), computed in the recipe's dtype: torchao's weight-only
  ``Float8WeightOnlyConfig``.  Done before the model goes to the GPU, so the GPU never
  holds the wider weights.
- ``cache``: a step cache on the denoising transformers (``FirstBlockCache``,
  ``TaylorSeer``, ``MagCache``): later steps reuse earlier blocks' results where the
  model's input changed little.
- ``text_encoder``: recipes that name the same text encoder share one copy; with
  ``text_encoder_offload`` it waits in CPU memory between prompts.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from typing import Any

from omniflash.engines.diffusion.speed import denoisers

__all__ = ["FP8_HINT", "apply_cache", "group_offload", "load_text_encoder", "quantize_fp8"]

log = logging.getLogger(__name__)

FP8_HINT = "pip install torchao"


def quantize_fp8(pipe: Any) -> list[str]:
    """FP8 weight-only quantisation of ``pipe``'s denoising transformers (torchao)."""
    try:
        torchao: Any = importlib.import_module("torchao.quantization")
    except ImportError as exc:
        raise RuntimeError(f'quantize = "fp8" needs torchao: {FP8_HINT}') from exc
    done = []
    for model in denoisers(pipe):
        torchao.quantize_(model, torchao.Float8WeightOnlyConfig())
        done.append(f"{type(model).__name__} weights fp8")
    return done


def group_offload(pipe: Any, device: str, options: Mapping[str, Any]) -> str:
    """Group offloading of every model of ``pipe``: blocks come to ``device`` as they run."""
    import torch

    cuda = device.startswith("cuda")
    kwargs: dict[str, Any] = {
        "onload_device": torch.device(device),
        "offload_device": torch.device("cpu"),
        "offload_type": "block_level",
        "num_blocks_per_group": 1,
        # A stream overlaps the next group's copy with this group's compute (CUDA only).
        "use_stream": cuda,
        "non_blocking": cuda,
    }
    kwargs.update(options)
    pipe.enable_group_offload(**kwargs)
    return f"group offload ({kwargs['offload_type']}, stream {kwargs['use_stream']})"


def apply_cache(pipe: Any, cache: Mapping[str, Any], steps: int) -> list[str]:
    """The recipe's step cache on each denoising transformer."""
    diffusers: Any = importlib.import_module("diffusers")
    options = {k: v for k, v in cache.items() if k != "kind"}
    kind = cache["kind"]
    config: Any
    if kind == "first_block":
        config = diffusers.FirstBlockCacheConfig(**options)
    elif kind == "taylorseer":
        config = diffusers.TaylorSeerCacheConfig(**options)
    else:
        options.setdefault("num_inference_steps", steps)
        config = diffusers.MagCacheConfig(**options)
    done = []
    for model in denoisers(pipe):
        model.enable_cache(config)
        done.append(f"{type(model).__name__} step cache {kind}")
    return done


def load_text_encoder(source: str, dtype: Any) -> tuple[Any, Any]:
    """The text encoder and tokenizer of the model folder or hub id ``source``.

    The classes are the ones the folder's ``model_index.json`` names.
    """
    import diffusers
    import transformers

    index = diffusers.DiffusionPipeline.load_config(source)
    library, name = index["text_encoder"]
    if library != "transformers":
        raise ValueError(f"{source}: text encoder {library}.{name} is not a transformers model")
    encoder = getattr(transformers, name).from_pretrained(
        source, subfolder="text_encoder", dtype=dtype
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(source, subfolder="tokenizer")
    return encoder.eval(), tokenizer
