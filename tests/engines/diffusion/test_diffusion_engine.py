"""The diffusers engine end to end on tiny random-weight Wan pipelines (CPU, 2 steps)."""

from __future__ import annotations

import contextlib
import importlib
import logging
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy
import pytest
from click.testing import CliRunner

from omniflash.cli import main as cli_main
from omniflash.contract import Mode
from omniflash.engines import GenerationResult, Job, create_engine
from omniflash.engines.diffusion import DiffusersEngine
from omniflash.engines.diffusion.loader import share_components
from omniflash.errors import EngineBroken, EngineError, TaskCancelled
from omniflash.media.decode import VideoClip
from omniflash.settings import Settings
from tests.engines.diffusion.tiny_inputs import OUT_SIZE, Decoded, make_job, solid
from tests.engines.diffusion.tiny_models import recipes_toml

pytestmark = pytest.mark.diffusers

RED, BLUE, GREEN, YELLOW = (220, 30, 30), (30, 60, 220), (40, 200, 60), (230, 220, 20)


def diffusers_engine(recipes: str, root: Path) -> DiffusersEngine:
    """The engine as a server builds it: by name, from a recipes file."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "recipes.toml").write_text(recipes)
    settings = Settings(data_dir=root / "data", recipes_path=root / "recipes.toml")
    engine = create_engine("diffusers", settings)
    assert isinstance(engine, DiffusersEngine)
    return engine


@pytest.fixture(scope="module")
def engine(
    tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> DiffusersEngine:
    engine = diffusers_engine(recipes_toml(tiny_models), tmp_path_factory.mktemp("engine"))
    engine.load()
    return engine


def run(engine: DiffusersEngine, job: Job) -> tuple[Decoded, GenerationResult, list[float]]:
    seen: list[float] = []
    result = engine.generate(job, seen.append, lambda: False)
    return Decoded(job.output_path), result, seen


def assert_differs(a: Decoded, b: Decoded) -> None:
    """Clearly different clips (the same inputs and seed give identical ones)."""
    changed = int((numpy.abs(a.frames.astype(int) - b.frames.astype(int)) > 2).sum())
    assert changed > 500, f"only {changed} of {a.frames.size} values changed"


CASES = {
    "text": (Mode.TEXT, 0, False, None),
    "frame": (Mode.FRAME, 1, False, None),
    "reference-1": (Mode.REFERENCE, 1, False, None),
    "reference-3": (Mode.REFERENCE, 3, False, None),
    "video": (Mode.VIDEO, 0, True, None),
    "video+references": (Mode.VIDEO, 3, True, "reference"),
    "video+frame": (Mode.VIDEO, 1, True, "frame"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_mode_writes_the_requested_clip(
    engine: DiffusersEngine, clips: dict[int, VideoClip], tmp_path: Path, case: str
) -> None:
    mode, n_images, with_video, role = CASES[case]
    images = [solid(c) for c in (RED, BLUE, GREEN)[:n_images]]
    job = make_job(
        tmp_path, mode, images=images, video=clips[2] if with_video else None, image_role=role
    )
    clip, result, progress = run(engine, job)
    assert clip.frames.shape == (4 * 24, OUT_SIZE[1], OUT_SIZE[0], 3)
    assert (clip.codec, clip.pix_fmt, clip.fps, clip.faststart) == ("h264", "yuv420p", 24.0, True)
    assert (result.frames, result.width, result.height, result.fps) == (96, *OUT_SIZE, 24)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"], "no .part file is left"
    # 4 s at 16 fps is 64 native frames: one 17-frame call, then three continuing ones.
    calls = result.info["calls"]
    assert isinstance(calls, list) and len(calls) == 4
    assert result.info["native_frames"] == 65
    assert clip.frames.std() > 1.0, "a generated clip, not a flat colour"
    # Progress follows the 2 steps of each of the 4 calls, then the encoding.
    assert len(progress) >= 12 and progress == sorted(set(progress)), progress
    assert 0 < progress[0] < 0.2 and progress[-1] == 1.0


@contextlib.contextmanager
def transformer_inputs(engine: DiffusersEngine, recipe: str) -> Iterator[list[dict[str, Any]]]:
    """The tensors each denoising step hands the recipe's transformer."""
    seen: list[dict[str, Any]] = []

    def record(_module: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        seen.append({k: v.detach().clone() for k, v in kwargs.items() if hasattr(v, "detach")})

    handle = engine.loader.pipes[recipe].transformer.register_forward_pre_hook(
        record, with_kwargs=True
    )
    try:
        yield seen
    finally:
        handle.remove()


def largest_change(a: dict[str, Any], b: dict[str, Any]) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a if a[k].shape == b[k].shape)


# name: mode, images of run a, of run b, video speeds, recipe, visible in 8-bit pixels
REACH = {
    "first frame": (Mode.FRAME, [RED], [BLUE], None, "i2v", True),
    "1 reference": (Mode.REFERENCE, [RED], [BLUE], None, "vace", False),
    "3rd of 3 references": (
        Mode.REFERENCE, [RED, BLUE, GREEN], [RED, BLUE, YELLOW], None, "vace", False
    ),
    "reference video": (Mode.VIDEO, [], [], (2, 5), "vace", True),
    "references with a video": (Mode.VIDEO, [RED], [BLUE], (2, 2), "vace", False),
}  # fmt: skip


@pytest.mark.parametrize("case", list(REACH))
def test_inputs_reach_the_model(
    engine: DiffusersEngine, clips: dict[int, VideoClip], tmp_path: Path, case: str
) -> None:
    mode, colors_a, colors_b, speeds, recipe, visible = REACH[case]
    outputs, first_steps = [], []
    for name, colors, speed in (
        ("a", colors_a, speeds and speeds[0]),
        ("b", colors_b, speeds and speeds[1]),
    ):
        images = [solid(c) for c in colors]
        video = clips[speed] if speed else None
        with transformer_inputs(engine, recipe) as seen:
            clip, _, _ = run(
                engine, make_job(tmp_path, mode, images=images, video=video, name=name)
            )
        outputs.append(clip)
        first_steps.append(seen[0])
    # The same seed and prompt: only the changed input can make the model's input differ.
    assert largest_change(*first_steps) > 0.01
    # A reference image reaches the pixels of a random 2-step model only through
    # cross-frame attention, far below 8-bit resolution: there the conditioning
    # above is what a test can see.
    if visible:
        assert_differs(*outputs)


def test_the_seed_decides_the_frames(engine: DiffusersEngine, tmp_path: Path) -> None:
    a, _, _ = run(engine, make_job(tmp_path, Mode.TEXT, seed=11, name="a"))
    again, _, _ = run(engine, make_job(tmp_path, Mode.TEXT, seed=11, name="again"))
    other, _, _ = run(engine, make_job(tmp_path, Mode.TEXT, seed=2**32 - 1, name="other"))
    assert numpy.array_equal(a.frames, again.frames)
    assert_differs(a, other)


def test_cancel_stops_at_the_next_step(engine: DiffusersEngine, tmp_path: Path) -> None:
    seen: list[float] = []
    job = make_job(tmp_path, Mode.TEXT)
    with pytest.raises(TaskCancelled):
        engine.generate(job, seen.append, lambda: len(seen) >= 1)
    assert len(seen) == 1, "cancelled after the first step, not at the end"
    assert list(tmp_path.iterdir()) == []


def test_a_frame_task_without_its_image(engine: DiffusersEngine, tmp_path: Path) -> None:
    job = make_job(tmp_path, Mode.FRAME, images=[solid(RED)])
    job.images = []
    with pytest.raises(EngineError, match="first-frame task needs one image"):
        engine.generate(job, lambda _: None, lambda: False)


def test_stretch_fills_the_duration_with_one_call(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    text = recipes_toml(tiny_models).replace(
        'continue_with = "i2v"', 'continue_with = "i2v"\nextend = "stretch"'
    )
    engine = diffusers_engine(text, tmp_path / "engine")
    clip, result, _ = run(engine, make_job(tmp_path, Mode.TEXT))
    assert len(clip.frames) == 96
    assert result.info["stretched"] is True and result.info["native_frames"] == 17
    assert engine.estimate_seconds(make_job(tmp_path, Mode.TEXT).spec) > 0


def test_warmup_runs_the_configured_shapes(
    tiny_models: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    text = recipes_toml(tiny_models) + '\n[[warmup]]\nmode = "video"\naspect_ratio = "9:16"\n'
    engine = diffusers_engine(text, tmp_path)
    caplog.set_level(logging.INFO, logger="omniflash.engines.diffusion")
    engine.load()
    engine.warmup()
    assert "CUDA absent; device cpu; dtype float32" in caplog.text
    assert "text→t2v, frame→i2v, reference→vace, video→vace" in caplog.text
    assert "warmed video (vace) at 48x64x17" in caplog.text


def _corrupt(folder: Path, root: Path) -> Path:
    broken = root / "corrupt-vace"
    shutil.copytree(folder, broken)
    for weights in (broken / "transformer").glob("*.safetensors"):
        weights.write_bytes(b"not a safetensors file")
    return broken


@pytest.mark.parametrize("problem", ["missing", "corrupt"])
def test_a_model_that_cannot_load_fails_its_tasks_clearly(
    tiny_models: dict[str, Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    problem: str,
) -> None:
    vace = (
        tmp_path / "no-such-model"
        if problem == "missing"
        else _corrupt(tiny_models["wan-vace"], tmp_path)
    )
    engine = diffusers_engine(recipes_toml(dict(tiny_models, **{"wan-vace": vace})), tmp_path / "e")
    engine.load()  # the worker starts: the other modes still work
    assert f"could not load model '{vace}' for recipe 'vace'" in caplog.text
    with pytest.raises(
        EngineError, match=r"could not load model .* for recipe 'vace' \(WanVACEPipeline\)"
    ):
        engine.generate(
            make_job(tmp_path, Mode.REFERENCE, images=[solid(RED)]), lambda _: None, lambda: False
        )
    clip, _, _ = run(engine, make_job(tmp_path, Mode.TEXT, name="text"))
    assert len(clip.frames) == 96


def test_shared_weights_keep_their_component_dtypes(tiny_models: dict[str, Path]) -> None:
    import torch

    diffusers: Any = importlib.import_module("diffusers")
    condition = diffusers.LTXConditionPipeline.from_pretrained(
        tiny_models["ltx"], dtype={"default": torch.bfloat16, "vae": torch.float32}
    )
    plain = share_components(diffusers.LTXPipeline, condition)
    assert type(plain) is diffusers.LTXPipeline and plain.transformer is condition.transformer
    assert (plain.transformer.dtype, plain.vae.dtype) == (torch.bfloat16, torch.float32)


def test_without_the_gpu_extra_the_start_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(
        RuntimeError, match=r"needs diffusers; install them .* with: pip install -e '\.\[gpu\]'"
    ):
        create_engine("diffusers", Settings())
    result = CliRunner().invoke(
        cli_main, ["serve", "--engine", "diffusers", "--data-dir", str(tmp_path)]
    )
    assert result.exit_code != 0
    assert "pip install -e '.[gpu]'" in result.output
    assert not (tmp_path / "omniflash.db").exists(), "it stops before anything starts"


def test_a_wrong_recipes_file_stops_the_start(tmp_path: Path) -> None:
    recipes = tmp_path / "recipes.toml"
    recipes.write_text('[modes]\ntext = "t2v"\n')
    result = CliRunner().invoke(
        cli_main,
        ["serve", "--engine", "diffusers", "--data-dir", str(tmp_path / "data")],
        env={"OMNIFLASH_RECIPES": str(recipes)},
    )
    assert result.exit_code != 0
    assert f"recipes ({recipes}): no [recipes.NAME] tables" in result.output
    assert not (tmp_path / "data").exists(), "it stops before anything starts"


@pytest.mark.parametrize(
    ("error", "broken"),
    [
        (RuntimeError("CUDA error: an illegal memory access was encountered"), True),
        (RuntimeError("CUDA error: device-side assert triggered"), True),
        (ValueError("`num_frames - 1` has to be divisible by 4"), False),
    ],
)
def test_a_lost_device_restarts_the_engine_other_errors_do_not(
    engine: DiffusersEngine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    error: Exception,
    broken: bool,
) -> None:
    def fail(*_args: Any, **_kwargs: Any) -> Any:
        raise error

    monkeypatch.setattr(engine, "run_pipeline", fail)
    with pytest.raises(EngineError, match=r"recipe 't2v' \(WanPipeline\) failed: ") as caught:
        engine.generate(make_job(tmp_path, Mode.TEXT), lambda _: None, lambda: False)
    assert isinstance(caught.value, EngineBroken) is broken
    assert str(error) in str(caught.value)


def test_recipe_scheduler_settings_and_call_arguments(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    text = recipes_toml(tiny_models).replace(
        'continue_with = "i2v"', 'continue_with = "i2v"\nscheduler = { shift = 7.0 }'
    )
    engine = diffusers_engine(text, tmp_path / "shift")
    engine.load()
    assert engine.loader.pipes["t2v"].scheduler.config.shift == 7.0
    assert engine.loader.pipes["i2v"].scheduler.config.shift == 3.0, "the folder's own"
    # A scheduler setting given as a call argument is caught when the model loads.
    text = recipes_toml(tiny_models).replace(
        'continue_with = "i2v"', 'continue_with = "i2v"\ncall_kwargs = { flow_shift = 5.0 }'
    )
    engine = diffusers_engine(text, tmp_path / "bad")
    with pytest.raises(EngineError, match=r"\['flow_shift'\] are not arguments of WanPipeline"):
        engine.generate(make_job(tmp_path, Mode.TEXT), lambda _: None, lambda: False)
