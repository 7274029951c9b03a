"""Recipes files and the plan of pipeline calls: no model needed."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from omniflash.contract import ASPECT_RATIOS, DURATIONS, Mode
from omniflash.engines.diffusion import FrameRule, Recipe, load_recipes
from omniflash.engines.diffusion.timeline import native_indices

DEFAULT_FILE = Path(__file__).parents[3] / "src" / "omniflash" / "engines" / "recipes.toml"

MINIMAL = """
[modes]
text = "t2v"
frame = "vace"
reference = "vace"
video = "vace"

[recipes.t2v]
pipeline = "WanPipeline"
model = "some/model"
pixels = 399360
continue_with = "vace"

[recipes.vace]
pipeline = "WanVACEPipeline"
model = "some/vace"
inputs = ["reference_images", "video_mask"]
pixels = 399360
"""


def test_default_recipes_cover_every_mode_duration_and_ratio() -> None:
    book = load_recipes(None)
    assert book.source.startswith("built-in")
    pipelines = {r.pipeline for r in book.in_use()}
    assert pipelines == {"WanPipeline", "WanImageToVideoPipeline", "WanVACEPipeline"}
    for mode in Mode:
        for seconds in DURATIONS:
            segments, stretched = book.plan(mode, seconds)
            assert not stretched
            total = segments[-1].start + segments[-1].frames
            assert total >= seconds * segments[0].recipe.fps
            for segment in segments:
                rule = segment.recipe.frames
                assert (segment.frames - rule.remainder) % rule.multiple == 0
                assert segment.frames <= segment.recipe.max_frames
                if segment.index:
                    assert "first_frame" in segment.recipe.consumes
        for ratio in ASPECT_RATIOS:
            w, h = book.for_mode(mode).native_size(ratio)
            a, b = (int(x) for x in ratio.split(":"))
            assert abs(w / h - a / b) < 0.12, (mode, ratio, w, h)


def test_every_recipe_key_is_documented_in_the_default_file() -> None:
    header = DEFAULT_FILE.read_text().split("device =")[0]
    lines = re.findall(r"^#   (\w+(?:, \w+)*)  ", header, re.M)
    documented = {key for line in lines for key in line.split(", ")}
    fields = {f.name for f in dataclasses.fields(Recipe)} - {"name"}
    assert fields <= documented, f"undocumented: {sorted(fields - documented)}"


def test_frame_rules() -> None:
    wan, ltx = FrameRule.parse("4k+1"), FrameRule.parse(" 8k + 1 ")
    assert [wan.round_up(n) for n in (1, 5, 6, 64, 81)] == [5, 5, 9, 65, 81]
    assert [ltx.round_up(n) for n in (96, 97, 98)] == [97, 97, 105]
    assert wan.round_down(100) == 97 and ltx.round_down(160) == 153
    with pytest.raises(ValueError, match="must look like"):
        FrameRule.parse("4n+1")


def test_plan_continues_or_stretches(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_text(MINIMAL)
    # 10 s at 16 fps = 160 frames: 81, then VACE from the last frame (80 new frames).
    segments, stretched = load_recipes(path).plan(Mode.TEXT, 10)
    plan = [(s.recipe.name, s.frames, s.start) for s in segments]
    assert plan == [("t2v", 81, 0), ("vace", 81, 80)] and not stretched
    path.write_text(MINIMAL.replace('continue_with = "vace"', 'extend = "stretch"'))
    segments, stretched = load_recipes(path).plan(Mode.TEXT, 10)
    assert [s.frames for s in segments] == [81] and stretched


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (('inputs = ["reference_images",', 'inputs = ["refs",'), "unknown input adapter 'refs'"),
        (("pixels = 399360\n", "pixel = 1\n"), r"unknown keys \['pixel'\]"),
        (('video = "vace"', 'video = "t2v"'), "'t2v' cannot take the video"),
        (('text = "t2v"\n', ""), "text = None is not a recipe"),
        (('continue_with = "vace"', 'continue_with = "nope"'), "continues with unknown 'nope'"),
        (("[modes]", "[modes"), "not valid TOML"),
        (('model = "some/model"', 'model = "some/model"\ndtype = "int8"'), "`dtype` must be"),
        (('model = "some/model"', 'model = "some/model"\nfps = 24'), "need one frame rate"),
    ],
)
def test_bad_recipes_say_what_to_fix(tmp_path: Path, edit: tuple[str, str], message: str) -> None:
    path = tmp_path / "r.toml"
    path.write_text(MINIMAL.replace(*edit, 1))
    with pytest.raises(ValueError, match=message):
        load_recipes(path)


def test_missing_file() -> None:
    with pytest.raises(ValueError, match="cannot read recipes file"):
        load_recipes(Path("/no/such/recipes.toml"))


def test_native_frames_play_at_their_own_speed() -> None:
    indices = native_indices(96, 24, 65, 16)
    # Output frame j is at j/24 s; native frame i at i/16 s.
    assert all(abs(i / 16 - j / 24) <= 0.5 / 16 + 1e-9 for j, i in enumerate(indices))
    assert indices == sorted(indices) and indices[-1] == 63
    stretched = native_indices(96, 24, 17, 17 / 4)
    assert len(set(stretched)) == 17
