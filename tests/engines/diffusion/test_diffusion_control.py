"""A reference video becomes VACE's control video: gray, edges or depth, not the frames."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy
import pytest
from PIL import Image

from omniflash.engines import create_engine
from omniflash.engines.diffusion import DiffusersEngine, Inputs
from omniflash.engines.diffusion.control import DepthModel, control_frames
from omniflash.settings import Settings
from tests.engines.diffusion.tiny_inputs import solid
from tests.engines.diffusion.tiny_models import recipes_toml

pytestmark = pytest.mark.diffusers


def moving(count: int = 5) -> list[Image.Image]:
    """A yellow square on blue, moving right 6 px a frame."""
    frames = []
    for i in range(count):
        frame = numpy.zeros((48, 64, 3), numpy.uint8)
        frame[:, :, 2] = 160
        frame[12:36, 4 + 6 * i : 28 + 6 * i] = (240, 200, 40)
        frames.append(Image.fromarray(frame))
    return frames


def test_gray_and_edges_keep_the_shapes_and_drop_the_colours() -> None:
    frames = moving()
    for kind in ("gray", "edges"):
        out = [numpy.asarray(f) for f in control_frames(kind, frames)]
        assert all(f.shape == (48, 64, 3) for f in out)
        assert all((f[..., 0] == f[..., 1]).all() and (f[..., 1] == f[..., 2]).all() for f in out)
    edges = numpy.asarray(control_frames("edges", frames)[2])[..., 0].astype(int)
    # The square's left side is at x = 16 in frame 2: bright there, dark inside and out.
    assert edges[24, 15:18].max() > 100 and edges[24, 22] < 30 and edges[24, 50] < 30
    assert control_frames("rgb", frames) == frames


def test_depth_maps_span_the_clip(tiny_models: dict[str, Path]) -> None:
    depth = DepthModel(str(tiny_models["depth"]), "cpu", __import__("torch").float32)
    out = numpy.stack([numpy.asarray(f) for f in control_frames("depth", moving(), depth)])
    assert out.shape == (5, 48, 64, 3) and (out[..., 0] == out[..., 2]).all()
    # Scaled over the whole clip: the darkest and brightest pixels of all frames are 0 and 255.
    assert out.min() == 0 and out.max() == 255


@pytest.mark.parametrize("kind", ["rgb", "gray"])
def test_the_vace_call_gets_the_control_video_under_a_generate_mask(
    tiny_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    text = recipes_toml(tiny_models).replace(
        'inputs = ["reference_images", "video_mask"]',
        f'inputs = ["reference_images", "video_mask"]\nvideo_control = "{kind}"',
    )
    (tmp_path / "r.toml").write_text(text)
    engine = create_engine("diffusers", Settings(recipes_path=tmp_path / "r.toml"))
    assert isinstance(engine, DiffusersEngine)
    recipe = engine.book.recipes["vace"]
    pipe = engine.loader.get(recipe)
    seen: dict[str, Any] = {}
    original = type(pipe).__call__

    def spy(self: Any, **kwargs: Any) -> Any:
        seen.update(kwargs)
        return original(self, **kwargs)

    monkeypatch.setattr(type(pipe), "__call__", spy)
    frames = moving()
    inputs = Inputs(references=(solid((200, 40, 40)),), video=tuple(frames))
    engine.run_pipeline(recipe, "a fox", (64, 48, 5), inputs, 1, None, None)
    video = [numpy.asarray(f) for f in seen["video"]]
    gray = all((f[..., 0] == f[..., 2]).all() for f in video)
    assert gray is (kind == "gray")
    assert all(numpy.asarray(m).min() == 255 for m in seen["mask"]), "every pixel is generated"
    assert len(seen["reference_images"]) == 1, "the images stay the identity"
