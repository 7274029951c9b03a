"""Memory options of a recipe on tiny models: group offloading, FP8 weights, a step cache.

What a CPU can show: each option is applied where the recipe says, the pipeline still
runs, and the frames are what the option should make of them (the same for
offloading, close for FP8, fewer block passes for the cache).  What it saves on a GPU
is for ``bench/engine_gpu.py`` to measure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy
import pytest

from omniflash.engines import create_engine
from omniflash.engines.diffusion import DiffusersEngine, Inputs, load_recipes
from omniflash.settings import Settings
from tests.engines.diffusion.tiny_models import recipes_toml

pytestmark = pytest.mark.diffusers

SHAPE = (64, 48, 9)


def t2v_engine(models: dict[str, Path], root: Path, options: str = "") -> DiffusersEngine:
    """The tiny recipes, ``options`` added to the text-to-video recipe (3 steps)."""
    text = recipes_toml(models).replace(
        'continue_with = "i2v"', 'continue_with = "i2v"\n' + options
    )
    root.mkdir(parents=True, exist_ok=True)
    (root / "recipes.toml").write_text(text.replace("steps = 2", "steps = 3"))
    engine = create_engine("diffusers", Settings(recipes_path=root / "recipes.toml"))
    assert isinstance(engine, DiffusersEngine)
    return engine


def frames(engine: DiffusersEngine) -> Any:
    recipe = engine.book.recipes["t2v"]
    return numpy.stack(engine.run_pipeline(recipe, "a fox", SHAPE, Inputs(), 5, None, None))


@pytest.fixture(scope="module")
def plain(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Any:
    return frames(t2v_engine(tiny_models, tmp_path_factory.mktemp("plain")))


def block_calls(engine: DiffusersEngine) -> list[int]:
    """Runs of each transformer block during one call (a skipped block is still called,
    and returns the cached result without running its layers)."""
    blocks = engine.loader.get(engine.book.recipes["t2v"]).transformer.blocks
    counts = [0] * len(blocks)
    handles = [
        b.ffn.register_forward_pre_hook(lambda *_a, i=i: counts.__setitem__(i, counts[i] + 1))
        for i, b in enumerate(blocks)
    ]
    try:
        frames(engine)
    finally:
        for handle in handles:
            handle.remove()
    return counts


def test_group_offloading_gives_the_same_frames(
    tiny_models: dict[str, Path], tmp_path: Path, plain: Any
) -> None:
    from diffusers.hooks import HookRegistry

    engine = t2v_engine(tiny_models, tmp_path, 'offload = "group"')
    transformer = engine.loader.get(engine.book.recipes["t2v"]).transformer
    hooks = HookRegistry.check_if_exists_or_initialize(transformer.blocks[0]).hooks
    assert "group_offloading" in hooks, sorted(hooks)
    assert numpy.array_equal(frames(engine), plain)


def weight_bytes(model: Any) -> int:
    """Bytes the weights take, FP8 tensors by their data and scales."""
    total = 0
    for p in model.parameters():
        parts = [getattr(p, n) for n in ("qdata", "scale") if hasattr(p, n)] or [p]
        total += sum(t.numel() * t.element_size() for t in parts)
    return total


def test_fp8_weights(tiny_models: dict[str, Path], tmp_path: Path, plain: Any) -> None:
    pytest.importorskip("torchao", reason="quantize = fp8 needs torchao: pip install torchao")
    before = weight_bytes(
        t2v_engine(tiny_models, tmp_path / "a")
        .loader.get(load_recipes(tmp_path / "a" / "recipes.toml").recipes["t2v"])
        .transformer
    )
    engine = t2v_engine(tiny_models, tmp_path / "b", 'quantize = "fp8"')
    transformer = engine.loader.get(engine.book.recipes["t2v"]).transformer
    linear = transformer.blocks[0].ffn.net[2]
    assert type(linear.weight).__name__ == "Float8Tensor"
    assert str(linear.weight.qdata.dtype) == "torch.float8_e4m3fn"
    # fp32 here: the linear weights shrink 4×; the norms and embeddings stay.
    assert weight_bytes(transformer) < 0.6 * before
    ours = frames(engine)
    difference = numpy.abs(ours.astype(int) - plain.astype(int))
    assert difference.max() > 0 and difference.mean() < 8, "close to the full-precision frames"


def test_a_step_cache_skips_blocks_and_resets_between_calls(
    tiny_models: dict[str, Path], tmp_path: Path, plain: Any
) -> None:
    assert block_calls(t2v_engine(tiny_models, tmp_path / "a")) == [3, 3]
    # A threshold no step change reaches: every step after the first reuses the cache.
    engine = t2v_engine(
        tiny_models, tmp_path / "b", 'cache = { kind = "first_block", threshold = 1e9 }'
    )
    assert block_calls(engine) == [3, 1], "the first block runs every step, the rest once"
    assert numpy.array_equal(frames(engine), frames(engine)), "no state left from a call"
    assert not numpy.array_equal(frames(engine), plain)


def test_recipes_check_the_memory_options(tmp_path: Path) -> None:
    base = (Path(__file__).parents[3] / "src/omniflash/engines/recipes.toml").read_text()
    path = tmp_path / "r.toml"
    vace = 'pipeline = "WanVACEPipeline"\n'
    control = 'control_model = "depth-anything/Depth-Anything-V2-Large-hf"\n'
    cases = [
        (vace, vace + 'quantize = "int3"\n', "`quantize` must be one of none, fp8"),
        (vace, vace + 'cache = { kind = "fast" }\n', "`cache.kind` must be one of first_block"),
        (control, "", "needs a `control_model`"),
        (vace, vace + "text_encoder_offload = true\n", "share the text encoder .* differ"),
        (vace, vace + 'offload = "model"\n', "shares a text encoder, which needs"),
    ]
    for old, new, message in cases:
        path.write_text(base.replace(old, new, 1))
        with pytest.raises(ValueError, match=message):
            load_recipes(path)
