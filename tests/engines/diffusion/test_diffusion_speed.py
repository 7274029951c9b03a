"""Speed options of a recipe, and the GPU benchmark's code path run on a CPU."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from omniflash.engines.diffusion import load_recipes
from omniflash.engines.diffusion.speed import speed_up

pytestmark = pytest.mark.diffusers

ROOT = Path(__file__).parents[3]


def test_speed_options_reach_the_transformer(tiny_models: dict[str, Path]) -> None:
    diffusers: Any = importlib.import_module("diffusers")
    pipe = diffusers.WanVACEPipeline.from_pretrained(tiny_models["wan-vace"])
    assert speed_up(pipe, "default", compile_blocks=False) == []
    done = speed_up(pipe, "_native_cudnn", compile_blocks=True)
    name = "WanVACETransformer3DModel"
    assert done == [f"{name} attention _native_cudnn", f"{name} blocks compiled"]
    backends = {
        str(getattr(m.processor, "_attention_backend", None))
        for m in pipe.transformer.modules()
        if hasattr(m, "processor")
    }
    assert backends == {"AttentionBackendName._NATIVE_CUDNN"}
    # Every repeated block, the VACE ones too, is compiled; the rest of the model is not.
    blocks = [*pipe.transformer.blocks, *pipe.transformer.vace_blocks]
    assert all(b._compiled_call_impl is not None for b in blocks)
    assert getattr(pipe.transformer, "_compiled_call_impl", None) is None


def test_recipes_check_the_speed_options(tmp_path: Path) -> None:
    base = (ROOT / "src" / "omniflash" / "engines" / "recipes.toml").read_text()
    model = 'model = "Wan-AI/Wan2.2-TI2V-5B-Diffusers"\n'
    path = tmp_path / "r.toml"
    fast = model + 'attention = "_native_flash"\ncompile = true\n'
    path.write_text(base.replace(model, fast))  # both recipes of the shared model
    recipe = load_recipes(path).recipes["wan22-t2v"]
    assert (recipe.attention, recipe.compile) == ("_native_flash", True)
    path.write_text(base.replace(model, fast, 1))
    with pytest.raises(
        ValueError, match=r"'wan22-t2v' and 'wan22-i2v' share the model .* attention"
    ):
        load_recipes(path)
    path.write_text(base.replace(model, model + 'attention = "fastest"\n'))
    with pytest.raises(ValueError, match="`attention` must be one of default, native"):
        load_recipes(path)


def test_the_gpu_benchmark_runs_on_a_cpu_with_a_tiny_model() -> None:
    """The same code as on a GPU: random weights, stock call, engine call, the table."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "engine_gpu.py"), "--tiny", "--steps", "2"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    for label in ("text encoding", "denoising step", "VAE decode", "whole video, 50 steps"):
        assert re.search(rf"\| {label}[^|]* \| [\d.]+ s \| [\d.]+ s \|", out), out
    # Without speed options the engine's call is stock diffusers': the same frames.
    assert "PSNR inf dB, largest difference 0 of 255" in out, out
