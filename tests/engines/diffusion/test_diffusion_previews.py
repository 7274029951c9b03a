"""Latent previews on tiny models: their size, how many a call shows, and the video untouched."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy
import pytest
from PIL import Image

from omniflash.contract import Mode
from omniflash.engines.base import PREVIEW_WIDTH, preview_size
from omniflash.engines.diffusion import DiffusersEngine, Inputs
from omniflash.engines.diffusion.latent_previews import (
    FAMILIES,
    LatentPreviewer,
    family_of,
    preview_steps,
)
from tests.engines.diffusion.test_diffusion_loop import PROMPT, guided_recipes, make_engine
from tests.engines.diffusion.tiny_inputs import make_job

pytestmark = [
    pytest.mark.diffusers,
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept:DeprecationWarning"),
]


@pytest.fixture(scope="module")
def engine(
    tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> DiffusersEngine:
    engine = make_engine(guided_recipes(tiny_models), tmp_path_factory.mktemp("previews"))
    engine.load()
    return engine


def test_each_familys_table_has_a_row_per_latent_channel() -> None:
    assert {name: f.channels for name, f in FAMILIES.items()} == {
        "wan21": 16,
        "wan22": 48,
        "ltx": 128,
    }
    for factors in FAMILIES.values():
        assert all(len(row) == 3 for row in factors.rgb) and len(factors.bias) == 3


def test_the_family_is_known_by_pipeline_and_channel_count() -> None:
    def named(name: str) -> Any:
        return type(name, (), {})()

    assert family_of(named("WanPipeline"), 16) == "wan21"
    assert family_of(named("WanImageToVideoPipeline"), 48) == "wan22"
    assert family_of(named("LTXConditionPipeline"), 128) == "ltx"
    # A VAE no table was fitted to: the neutral projection, never a wrong table.
    assert family_of(named("LTXPipeline"), 8) is None
    assert family_of(named("WanPipeline"), 32) is None
    assert family_of(named("HunyuanVideoPipeline"), 16) is None


def test_the_cadence_keeps_the_first_and_last_steps() -> None:
    assert preview_steps(1) == [0]
    assert preview_steps(2) == [0, 1]
    assert preview_steps(8) == list(range(8))
    assert preview_steps(17) == [0, 2, 4, 6, 8, 10, 12, 14, 16]
    fifty = preview_steps(50)
    assert fifty[0] == 0 and fifty[-1] == 49 and len(fifty) == 10


@pytest.mark.parametrize(("name", "family"), [("t2v", "wan21"), ("ti2v", "wan22"), ("ltx", None)])
def test_previews_leave_the_frames_as_they_were(
    engine: DiffusersEngine, name: str, family: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = engine.book.recipes[name]
    shape = (*recipe.native_size("16:9"), 17)
    plain = numpy.stack(engine.run_pipeline(recipe, PROMPT, shape, Inputs(), 3, None, None))
    seen: list[Image.Image] = []
    families: list[str | None] = []
    finish = LatentPreviewer.finish

    def spy(self: LatentPreviewer) -> None:
        finish(self)
        families.append(self.family)

    monkeypatch.setattr(LatentPreviewer, "finish", spy)
    steps = 5
    shown = engine.run_pipeline(
        recipe, PROMPT, shape, Inputs(), 3, steps, None, preview=seen.append
    )
    again = numpy.stack(engine.run_pipeline(recipe, PROMPT, shape, Inputs(), 3, steps, None))
    # The same seed and steps give the same frames, previews or none.
    assert numpy.array_equal(numpy.stack(shown), again)
    assert plain.shape == again.shape
    assert families == [family]
    assert len(seen) == len(preview_steps(steps)) == steps
    for picture in seen:
        assert picture.mode == "RGB" and picture.size == preview_size(*shape[:2])
        assert picture.width <= PREVIEW_WIDTH
    # The projection shows the latents, not a constant: the pictures differ between steps.
    first, last = (numpy.asarray(p, dtype=float) for p in (seen[0], seen[-1]))
    assert numpy.abs(first - last).mean() > 1.0


def test_a_wide_video_gets_a_preview_320_wide(engine: DiffusersEngine) -> None:
    recipe = engine.book.recipes["t2v"]
    seen: list[Image.Image] = []
    engine.run_pipeline(recipe, PROMPT, (640, 368, 5), Inputs(), 3, 1, None, preview=seen.append)
    assert [p.size for p in seen] == [(320, 184)]


def test_a_failing_preview_does_not_fail_the_task(engine: DiffusersEngine, tmp_path: Path) -> None:
    calls = []

    def broken(picture: Image.Image) -> None:
        calls.append(picture.size)
        raise OSError("the pipe is full")

    job = make_job(tmp_path, Mode.TEXT, duration=1)
    job.preview = broken
    result = engine.generate(job, lambda _f: None, lambda: False)
    assert result.frames == job.spec.fps and job.output_path.stat().st_size > 0
    # Every call of the task showed its previews, each refused, none fatal.
    assert len(calls) >= 2
