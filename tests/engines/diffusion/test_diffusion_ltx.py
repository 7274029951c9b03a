"""A second model family, LTX-Video, served by recipes alone: no engine code knows it."""

from __future__ import annotations

from pathlib import Path

import pytest

from omniflash.contract import Mode
from omniflash.engines import create_engine
from omniflash.engines.diffusion import DiffusersEngine
from omniflash.errors import EngineError
from omniflash.media.decode import VideoClip
from omniflash.settings import Settings
from tests.engines.diffusion.tiny_inputs import OUT_SIZE, Decoded, make_job, solid

pytestmark = [
    pytest.mark.diffusers,
    # LTXConditionPipeline hands a tensor to numpy.array(); torch answers with this warning.
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept:DeprecationWarning"),
]

LTX_COMMON = """
steps = 2
guidance = 1.0
dtype = "float32"
fps = 24
frames = "8k+1"
max_frames = 33
multiple = 32
pixels = 2048
sizes = { "16:9" = [64, 32] }
call_kwargs = { frame_rate = 24 }
"""


def ltx_recipes(models: dict[str, Path], reference: str = "vace") -> str:
    return f"""
device = "cpu"

[modes]
text = "ltx"
frame = "ltx-condition"
reference = "{reference}"
video = "ltx-condition"

[recipes.ltx]
pipeline = "LTXPipeline"
model = "{models["ltx"]}"
inputs = []
continue_with = "ltx-condition"
{LTX_COMMON}
[recipes.ltx-condition]
pipeline = "LTXConditionPipeline"
model = "{models["ltx"]}"
inputs = ["conditions"]
{LTX_COMMON}
[recipes.vace]
pipeline = "WanVACEPipeline"
model = "{models["wan-vace"]}"
inputs = ["reference_images", "video_mask"]
steps = 2
guidance = 1.0
fps = 16
max_frames = 17
pixels = 3072
"""


@pytest.fixture(scope="module")
def engine(
    tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> DiffusersEngine:
    root = tmp_path_factory.mktemp("ltx")
    (root / "recipes.toml").write_text(ltx_recipes(tiny_models))
    engine = create_engine("diffusers", Settings(recipes_path=root / "recipes.toml"))
    assert isinstance(engine, DiffusersEngine)
    engine.load()
    return engine


@pytest.mark.parametrize("mode", [Mode.TEXT, Mode.FRAME, Mode.VIDEO, Mode.REFERENCE])
def test_ltx_recipes_serve_every_mode(
    engine: DiffusersEngine, clips: dict[int, VideoClip], tmp_path: Path, mode: Mode
) -> None:
    images = [solid((200, 40, 40))] if mode in (Mode.FRAME, Mode.REFERENCE) else []
    video = clips[2] if mode is Mode.VIDEO else None
    job = make_job(tmp_path, mode, images=images, video=video)
    result = engine.generate(job, lambda _: None, lambda: False)
    clip = Decoded(job.output_path)
    assert clip.frames.shape == (96, OUT_SIZE[1], OUT_SIZE[0], 3)
    calls = result.info["calls"]
    assert isinstance(calls, list)
    pipelines = {c["pipeline"] for c in calls}
    expected = {
        Mode.TEXT: {"LTXPipeline", "LTXConditionPipeline"},  # 4 s at 24 fps needs 3 calls
        Mode.FRAME: {"LTXConditionPipeline"},
        Mode.VIDEO: {"LTXConditionPipeline"},
        Mode.REFERENCE: {"WanVACEPipeline"},
    }[mode]
    assert pipelines == expected


def test_one_model_folder_loads_once(engine: DiffusersEngine) -> None:
    pipes = engine.loader.pipes
    assert type(pipes["ltx"]).__name__ == "LTXPipeline"
    assert type(pipes["ltx-condition"]).__name__ == "LTXConditionPipeline"
    assert pipes["ltx"].transformer is pipes["ltx-condition"].transformer


def test_input_the_recipe_cannot_take(
    engine: DiffusersEngine, clips: dict[int, VideoClip], tmp_path: Path
) -> None:
    job = make_job(tmp_path, Mode.VIDEO, images=[solid((1, 2, 3))], video=clips[2])
    with pytest.raises(EngineError, match=r"'ltx-condition' .* cannot take reference images"):
        engine.generate(job, lambda _: None, lambda: False)


def test_a_mode_mapped_to_a_recipe_without_its_input(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    (tmp_path / "r.toml").write_text(ltx_recipes(tiny_models, reference="ltx"))
    with pytest.raises(ValueError, match="'ltx' cannot take the reference images"):
        create_engine("diffusers", Settings(recipes_path=tmp_path / "r.toml"))


def test_a_video_condition_guides_rather_than_copies() -> None:
    from PIL import Image

    from omniflash.engines.diffusion.adapters import Inputs, build_call_kwargs

    frames = tuple(Image.new("RGB", (64, 32), (9, 9, 9)) for _ in range(9))
    kwargs = build_call_kwargs(
        ["conditions"], Inputs(video=frames, video_strength=0.3), (64, 32, 9)
    )
    (condition,) = kwargs["conditions"]
    assert condition.strength == 0.3 and len(condition.video) == 9
