"""Speed options of a recipe, and the GPU benchmark's code path run on a CPU."""

from __future__ import annotations

import dataclasses
import importlib
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy
import pytest

from omniflash.contract import ASPECT_RATIOS, Mode
from omniflash.engines import create_engine
from omniflash.engines.diffusion import DiffusersEngine, load_recipes
from omniflash.engines.diffusion.speed import speed_up
from omniflash.settings import Settings
from tests.engines.diffusion.tiny_inputs import make_job, solid
from tests.engines.diffusion.tiny_models import recipes_toml

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
    """The same code as on a GPU: random weights, stock call, the engine's loop, the table."""
    command = [sys.executable, str(ROOT / "bench" / "engine_gpu.py"), "--tiny", "--steps", "2"]
    result = subprocess.run(
        [*command, "--cache", "first_block:0.05", "--text-encoder-offload"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    for label in ("text encoding", "denoising step", "VAE decode", "whole video, 50 steps"):
        assert re.search(rf"\| {label}[^|]* \| [\d.]+ s \| [\d.]+ s \| [\d.]+ s \|", out), out
    assert 'options: cache { kind = "first_block", threshold = 0.05 }' in out
    # The engine's own loop (batched guidance) makes stock diffusers' frames, to rounding.
    found = re.search(
        r"frames \(b\) against \(a\): PSNR ([\d.inf]+) dB, largest difference (\d+)", out
    )
    assert found is not None, out
    assert float(found.group(1)) > 40 and int(found.group(2)) <= 2, found.group(0)


def test_with_compile_the_worker_warms_every_call_shape_a_task_makes(
    tiny_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clips: Any
) -> None:
    """Each shape a task can call is warmed once at start; no task meets a new one."""
    text = recipes_toml(tiny_models).replace("multiple = 16\n", "multiple = 16\ncompile = true\n")
    (tmp_path / "r.toml").write_text(text)
    engine = create_engine("diffusers", Settings(recipes_path=tmp_path / "r.toml"))
    assert isinstance(engine, DiffusersEngine)
    # Compile acts on CUDA only; the calls are recorded here, not run.
    engine.loader.device = "cuda:0"
    seen: list[tuple[Any, ...]] = []
    decodes: list[bool] = []

    def record(recipe: Any, _p: str, shape: Any, inputs: Any, *_a: Any, **kw: Any) -> list[Any]:
        refs, video = len(inputs.references), inputs.video
        seen.append((recipe.name, shape, inputs.first_frame is not None, refs, video is not None))
        assert video is None or len(video) == shape[2]
        decodes.append(kw.get("decode", True))
        return [numpy.zeros((shape[1], shape[0], 3), numpy.uint8)] * shape[2]

    monkeypatch.setattr(engine, "run_pipeline", record)
    engine.warmup()
    warmed = set(seen)
    assert len(warmed) == len(seen), "each shape once"
    assert not any(decodes), "a compiled warm-up stops before the VAE"
    assert {s[0] for s in seen} == {"t2v", "i2v", "vace"}
    assert {s[1][:2] for s in seen} == {
        engine.book.recipes["t2v"].native_size(r) for r in ASPECT_RATIOS
    }
    seen.clear()
    red, blue = solid((200, 0, 0)), solid((0, 0, 200))
    jobs = [
        make_job(tmp_path, Mode.TEXT, duration=10),
        make_job(tmp_path, Mode.FRAME, images=[red], duration=6),
        make_job(tmp_path, Mode.REFERENCE, images=[red, blue, red], duration=8),
        make_job(tmp_path, Mode.VIDEO, images=[red], video=clips[2], image_role="frame"),
        make_job(tmp_path, Mode.VIDEO, images=[blue], video=clips[2], image_role="reference"),
    ]
    for job in jobs:
        job.spec = dataclasses.replace(job.spec, aspect_ratio="21:9")
        engine.generate(job, lambda _: None, lambda: False)
    assert set(seen) <= warmed, sorted(set(seen) - warmed)
