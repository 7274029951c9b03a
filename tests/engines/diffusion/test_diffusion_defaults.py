"""The built-in recipe set, as shipped, on tiny models of the same architectures.

The default file's pipelines, input adapters, continuations and shared folders run
unchanged; only what a CPU test cannot afford is replaced: each hub id by a tiny
random-weight folder of the same layout, the steps, the sizes and the frames per call.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from omniflash.contract import Mode
from omniflash.engines import create_engine
from omniflash.engines.diffusion import DiffusersEngine
from omniflash.media.decode import VideoClip
from omniflash.settings import Settings
from tests.engines.diffusion.tiny_inputs import OUT_SIZE, Decoded, make_job, solid

pytestmark = pytest.mark.diffusers

DEFAULT_FILE = Path(__file__).parents[3] / "src" / "omniflash" / "engines" / "recipes.toml"

# Hub id in the default file → tiny folder, native 16:9 size, frames per call.
TINY = {
    "Wan-AI/Wan2.2-TI2V-5B-Diffusers": ("wan22-ti2v", [64, 32], 33),
    "Wan-AI/Wan2.1-VACE-1.3B-diffusers": ("wan-vace", [64, 48], 17),
}


def _toml_value(value: Any) -> str:
    if isinstance(value, dict):
        return (
            "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
        )
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def default_recipes_on_tiny_models(models: dict[str, Path]) -> str:
    """The default recipes file with the used models swapped for tiny ones, as TOML."""
    data = tomllib.loads(DEFAULT_FILE.read_text("utf-8"))
    used = set(data["modes"].values())
    used |= {
        data["recipes"][n]["continue_with"] for n in used if "continue_with" in data["recipes"][n]
    }
    lines = ['device = "cpu"', "", "[modes]"]
    lines += [f"{mode} = {json.dumps(name)}" for mode, name in data["modes"].items()]
    for name in sorted(used):
        recipe = dict(data["recipes"][name])
        folder, (w, h), frames = TINY[recipe["model"]]
        recipe.update(
            model=str(models[folder]),
            steps=2,
            guidance=1.0,
            dtype="float32",
            max_frames=frames,
            sizes={"16:9": [w, h], "9:16": [h, w]},
            pixels=w * h,
        )
        recipe.pop("component_dtypes", None)
        if "text_encoder" in recipe:
            recipe["text_encoder"] = str(models[TINY[recipe["text_encoder"]][0]])
        if "control_model" in recipe:
            recipe["control_model"] = str(models["depth"])
        lines += ["", f"[recipes.{name}]"]
        lines += [f"{key} = {_toml_value(value)}" for key, value in recipe.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def engine(
    tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> DiffusersEngine:
    path = tmp_path_factory.mktemp("defaults") / "recipes.toml"
    path.write_text(default_recipes_on_tiny_models(tiny_models))
    engine = create_engine("diffusers", Settings(recipes_path=path))
    assert isinstance(engine, DiffusersEngine)
    engine.load()
    return engine


# case: mode, images, with a video, image role, the pipelines its calls use
CASES = {
    # 4 s at 24 fps: one 33-frame call, then image-to-video from each last frame.
    "text": (Mode.TEXT, 0, False, None, {"WanPipeline", "WanImageToVideoPipeline"}),
    "frame": (Mode.FRAME, 1, False, None, {"WanImageToVideoPipeline"}),
    "reference-3": (Mode.REFERENCE, 3, False, None, {"WanVACEPipeline"}),
    "video+references": (Mode.VIDEO, 1, True, "reference", {"WanVACEPipeline"}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_default_recipes_serve_every_mode(
    engine: DiffusersEngine, clips: dict[int, VideoClip], tmp_path: Path, case: str
) -> None:
    mode, n_images, with_video, role, pipelines = CASES[case]
    images = [solid(c) for c in ((200, 40, 40), (40, 40, 200), (40, 200, 40))[:n_images]]
    video = clips[2] if with_video else None
    job = make_job(tmp_path, mode, images=images, video=video, image_role=role)
    result = engine.generate(job, lambda _: None, lambda: False)
    clip = Decoded(job.output_path)
    assert clip.frames.shape == (96, OUT_SIZE[1], OUT_SIZE[0], 3)
    calls = result.info["calls"]
    assert isinstance(calls, list)
    assert {c["pipeline"] for c in calls} == pipelines
    assert len(calls) > 1, "4 s is longer than one call: the clip was continued"


def test_text_and_first_frame_share_one_loaded_model(engine: DiffusersEngine) -> None:
    text, frame = engine.loader.pipes["wan22-t2v"], engine.loader.pipes["wan22-i2v"]
    assert type(frame).__name__ == "WanImageToVideoPipeline"
    assert frame.transformer is text.transformer and frame.vae is text.vae
    # Every recipe of the set uses one UMT5 text encoder, and VACE gets depth control.
    assert engine.loader.pipes["wan-vace"].text_encoder is text.text_encoder
    assert len(engine.loader.text_encoders) == 1 and len(engine.loader.depth_models) == 1
    # Wan 2.2 TI2V conditions on the first frame's latent, not on extra channels.
    assert frame.config.expand_timesteps is True
