"""Reading a recipes file: TOML in, a checked ``RecipeBook`` out (or what to fix).

A recipes file is TOML.  ``[modes]`` maps each mode to a recipe; each ``[recipes.NAME]``
table names a pipeline class, a model (a local folder or a hub id) and how to call it::

    device = "auto"                     # "cuda", "cpu" or "auto"

    [modes]
    text = "wan-t2v"
    frame = "wan-i2v"
    reference = "wan-vace"
    video = "wan-vace"

    [recipes.wan-t2v]
    pipeline = "WanPipeline"
    model = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
    inputs = []                         # input adapters, see omniflash.engines.diffusion.adapters
    steps = 50
    guidance = 5.0
    fps = 16
    frames = "4k+1"                     # valid frame counts
    max_frames = 81                     # most frames one pipeline call makes
    multiple = 16                       # native sides are multiples of this
    pixels = 399360                     # native area for aspect ratios not in `sizes`
    sizes = { "16:9" = [832, 480], "9:16" = [480, 832] }
    continue_with = "wan-i2v"           # recipe that extends a clip from its last frame

The built-in default is ``omniflash/engines/recipes.toml``.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from omniflash.contract import ASPECT_RATIOS, Mode
from omniflash.engines.diffusion.adapters import ADAPTERS
from omniflash.engines.diffusion.recipes import (
    DEFAULT_RECIPES,
    FrameRule,
    Recipe,
    RecipeBook,
    WarmupShape,
)
from omniflash.engines.diffusion.speed import ATTENTION_BACKENDS

__all__ = ["load_recipes", "parse_recipes"]

_DTYPES = ("bfloat16", "float16", "float32")
_EXTEND = ("continue", "stretch")
_OFFLOAD = ("none", "model", "sequential", "group")
_QUANTIZE = ("none", "fp8")
_CONTROL = ("rgb", "gray", "edges", "depth")
_CACHES = ("first_block", "taylorseer", "mag")
_PARALLEL = ("ulysses", "ring")
_INPUT_NAMES = {"first_frame": "first frame", "references": "reference images", "video": "video"}
# The input each mode brings to its first pipeline call.
_MODE_NEEDS = {
    Mode.TEXT: None,
    Mode.FRAME: "first_frame",
    Mode.REFERENCE: "references",
    Mode.VIDEO: "video",
}


def _pair(value: object, where: str) -> tuple[int, int]:
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, int) and v > 0 for v in value)
    ):
        raise ValueError(f"{where} must be [width, height], got {value!r}")
    return value[0], value[1]


def _recipe(name: str, table: Mapping[str, Any]) -> Recipe:
    fields = {f.name for f in dataclasses.fields(Recipe)} - {"name"}
    unknown = set(table) - fields
    if unknown:
        raise ValueError(
            f"recipe {name!r}: unknown keys {sorted(unknown)}; known: {sorted(fields)}"
        )
    for key in ("pipeline", "model"):
        if not isinstance(table.get(key), str) or not table[key]:
            raise ValueError(f"recipe {name!r}: `{key}` is required")
    values = dict(table)
    values["inputs"] = tuple(table.get("inputs", ()))
    for adapter in values["inputs"]:
        if adapter not in ADAPTERS:
            raise ValueError(
                f"recipe {name!r}: unknown input adapter {adapter!r}; known: {sorted(ADAPTERS)}"
            )
    values["frames"] = FrameRule.parse(str(table.get("frames", "4k+1")))
    values["sizes"] = {
        ratio: _pair(size, f"recipe {name!r}: sizes.{ratio}")
        for ratio, size in table.get("sizes", {}).items()
    }
    recipe = Recipe(name=name, **values)
    checks = (
        ("dtype", _DTYPES),
        ("extend", _EXTEND),
        ("offload", _OFFLOAD),
        ("attention", ATTENTION_BACKENDS),
        ("quantize", _QUANTIZE),
        ("video_control", _CONTROL),
    )
    for key, allowed in checks:
        if getattr(recipe, key) not in allowed:
            raise ValueError(f"recipe {name!r}: `{key}` must be one of {', '.join(allowed)}")
    for component, dtype in recipe.component_dtypes.items():
        if dtype not in _DTYPES:
            raise ValueError(f"recipe {name!r}: component_dtypes.{component} must be in {_DTYPES}")
    if recipe.cache and recipe.cache.get("kind") not in _CACHES:
        raise ValueError(f"recipe {name!r}: `cache.kind` must be one of {', '.join(_CACHES)}")
    if recipe.video_control == "depth" and not recipe.control_model:
        raise ValueError(f'recipe {name!r}: video_control = "depth" needs a `control_model`')
    if recipe.text_encoder_offload and recipe.offload != "none":
        raise ValueError(
            f'recipe {name!r}: text_encoder_offload is for offload = "none"; '
            f"offload = {recipe.offload!r} moves the text encoder already"
        )
    if recipe.steps < 1 or recipe.fps < 1 or recipe.max_frames < recipe.frames.smallest:
        raise ValueError(f"recipe {name!r}: steps, fps and max_frames must be positive")
    for ratio in ASPECT_RATIOS:
        w, h = recipe.native_size(ratio)
        if w % recipe.multiple or h % recipe.multiple:
            raise ValueError(
                f"recipe {name!r}: size {w}x{h} for {ratio} is not a multiple of {recipe.multiple}"
            )
    return recipe


_PLACEMENT = (
    "offload",
    "group_offload",
    "vae_tiling",
    "attention",
    "compile",
    "quantize",
    "cache",
    "text_encoder",
    "text_encoder_offload",
)


def _check_shared(recipes: Mapping[str, Recipe], where: str) -> None:
    """Recipes that load one model share its modules, so they must place them alike."""
    first: dict[tuple[str, str, str], Recipe] = {}
    for recipe in recipes.values():
        key = (recipe.model, recipe.dtype, repr(sorted(recipe.component_dtypes.items())))
        other = first.setdefault(key, recipe)
        differ = [k for k in _PLACEMENT if getattr(recipe, k) != getattr(other, k)]
        if differ:
            raise ValueError(
                f"{where}: recipes {other.name!r} and {recipe.name!r} share the model "
                f"{recipe.model!r} but differ in {', '.join(differ)}; set them alike"
            )
    encoders: dict[str, Recipe] = {}
    for recipe in recipes.values():
        if recipe.text_encoder is None:
            continue
        if recipe.offload != "none":
            raise ValueError(
                f"{where}: recipe {recipe.name!r} shares a text encoder, which needs "
                'offload = "none" (text_encoder_offload keeps it off the GPU)'
            )
        other = encoders.setdefault(recipe.text_encoder, recipe)
        if other.text_encoder_offload != recipe.text_encoder_offload:
            raise ValueError(
                f"{where}: recipes {other.name!r} and {recipe.name!r} share the text encoder "
                f"{recipe.text_encoder!r} but differ in text_encoder_offload; set them alike"
            )


def parse_recipes(data: Mapping[str, Any], source: str) -> RecipeBook:
    """A ``RecipeBook`` from decoded TOML; raises ``ValueError`` saying what to fix."""
    where = f"recipes ({source})"
    tables = data.get("recipes")
    if not isinstance(tables, dict) or not tables:
        raise ValueError(f"{where}: no [recipes.NAME] tables")
    recipes = {name: _recipe(name, table) for name, table in tables.items()}
    raw_modes = data.get("modes", {})
    modes: dict[Mode, str] = {}
    for mode in Mode:
        name = raw_modes.get(mode.value)
        if name not in recipes:
            raise ValueError(f"{where}: [modes] {mode.value} = {name!r} is not a recipe")
        needs = _MODE_NEEDS[mode]
        if needs is not None and needs not in recipes[name].consumes:
            raise ValueError(
                f"{where}: recipe {name!r} cannot take the {_INPUT_NAMES[needs]} "
                f"that mode {mode.value!r} brings; add an input adapter that does"
            )
        modes[mode] = name
    for recipe in recipes.values():
        nxt = recipe.continue_with
        if nxt is None:
            continue
        if nxt not in recipes:
            raise ValueError(f"{where}: recipe {recipe.name!r} continues with unknown {nxt!r}")
        if "first_frame" not in recipes[nxt].consumes:
            raise ValueError(
                f"{where}: recipe {recipe.name!r} continues with {nxt!r}, "
                "which cannot take a first frame"
            )
        if recipes[nxt].fps != recipe.fps:
            raise ValueError(
                f"{where}: recipe {recipe.name!r} ({recipe.fps} fps) continues with {nxt!r} "
                f"({recipes[nxt].fps} fps); a clip and its continuation need one frame rate"
            )
    _check_shared(recipes, where)
    device = str(data.get("device", "auto"))
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"{where}: device must be auto, cpu, cuda or cuda:N")
    warmup = tuple(
        WarmupShape(Mode(w["mode"]), str(w.get("aspect_ratio", "16:9")), int(w.get("steps", 1)))
        for w in data.get("warmup", [])
    )
    gpus = data.get("gpus_per_task", 1)
    if not isinstance(gpus, int) or gpus < 1:
        raise ValueError(f"{where}: gpus_per_task must be a positive integer")
    parallel = str(data.get("parallel", "ulysses"))
    if parallel not in _PARALLEL:
        raise ValueError(f"{where}: parallel must be one of {', '.join(_PARALLEL)}")
    return RecipeBook(
        recipes=recipes,
        modes=modes,
        device=device,
        warmup=warmup,
        source=source,
        gpus_per_task=gpus,
        parallel=parallel,
    )


def load_recipes(path: Path | None) -> RecipeBook:
    """Read the operator's recipes file, or the built-in default when ``path`` is None."""
    if path is None:
        text = resources.files("omniflash.engines").joinpath("recipes.toml").read_text("utf-8")
        source = DEFAULT_RECIPES
    else:
        try:
            text = Path(path).read_text("utf-8")
        except OSError as exc:
            raise ValueError(f"cannot read recipes file {path}: {exc}") from exc
        source = str(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"recipes ({source}) is not valid TOML: {exc}") from exc
    return parse_recipes(data, source)
