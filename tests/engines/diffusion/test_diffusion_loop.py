"""The engine's share of the denoising loop against stock diffusers, on tiny models.

With guidance on, the engine encodes each prompt once a task and runs the Wan
pipelines' two guidance passes as one batch; the frames must stay stock diffusers'.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy
import pytest

from omniflash.contract import Mode
from omniflash.engines import create_engine
from omniflash.engines.diffusion import DiffusersEngine, Inputs, Recipe
from omniflash.engines.diffusion.adapters import build_call_kwargs
from omniflash.settings import Settings
from tests.engines.diffusion.tiny_inputs import make_job, solid
from tests.engines.diffusion.tiny_models import recipes_toml

pytestmark = [
    pytest.mark.diffusers,
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept:DeprecationWarning"),
]

PROMPT = "a red fox runs through snow"
NEGATIVE = 'negative_prompt = "blurry, static"\n'
TOLERANCE = 2
"""Largest difference, of 255, between the engine's frames and stock diffusers': the
batch of two sums in another order than two single passes."""


def guided_recipes(models: dict[str, Path], **extra: str) -> str:
    """The tiny Wan recipes with guidance 5 and a negative prompt, and Wan 2.2 and LTX ones."""
    text = recipes_toml(models).replace("guidance = 1.0", "guidance = 5.0")
    text = text.replace("steps = 2\n", "steps = 2\n" + NEGATIVE)
    for name, value in extra.items():
        text = text.replace(f"[recipes.{name}]\n", f"[recipes.{name}]\n{value}\n")
    return (
        text
        + f"""
[recipes.ti2v]
pipeline = "WanPipeline"
model = "{models["wan22-ti2v"]}"
steps = 2
guidance = 5.0
{NEGATIVE}fps = 24
max_frames = 17
multiple = 32
pixels = 2048
sizes = {{ "16:9" = [64, 32] }}

[recipes.ltx]
pipeline = "LTXPipeline"
model = "{models["ltx"]}"
steps = 2
guidance = 3.0
{NEGATIVE}fps = 24
frames = "8k+1"
max_frames = 17
multiple = 32
pixels = 2048
sizes = {{ "16:9" = [64, 32] }}
call_kwargs = {{ frame_rate = 24 }}
"""
    )


def make_engine(text: str, root: Path) -> DiffusersEngine:
    root.mkdir(parents=True, exist_ok=True)
    (root / "recipes.toml").write_text(text)
    engine = create_engine("diffusers", Settings(recipes_path=root / "recipes.toml"))
    assert isinstance(engine, DiffusersEngine)
    return engine


@pytest.fixture(scope="module")
def engine(
    tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> DiffusersEngine:
    engine = make_engine(guided_recipes(tiny_models), tmp_path_factory.mktemp("guided"))
    engine.load()
    return engine


def stock_frames(pipe: Any, recipe: Recipe, shape: tuple[int, int, int], inputs: Inputs) -> Any:
    """The pipeline called as diffusers documents it: prompt, negative prompt, guidance."""
    import torch

    width, height, count = shape
    out = pipe(
        prompt=PROMPT,
        negative_prompt=recipe.negative_prompt,
        height=height,
        width=width,
        num_frames=count,
        num_inference_steps=recipe.steps,
        guidance_scale=recipe.guidance,
        generator=torch.Generator().manual_seed(3),
        output_type="np",
        **recipe.call_kwargs,
        **build_call_kwargs(recipe.inputs, inputs, shape),
    ).frames[0]
    return (numpy.clip(out, 0.0, 1.0) * 255.0 + 0.5).astype(numpy.uint8)


@contextmanager
def transformer_calls(pipe: Any) -> Iterator[list[int]]:
    """The batch size of each transformer call, as its first layer sees it."""
    batches: list[int] = []
    first = getattr(pipe.transformer, "patch_embedding", None) or pipe.transformer.proj_in
    handle = first.register_forward_pre_hook(lambda _m, a: batches.append(int(a[0].shape[0])))
    try:
        yield batches
    finally:
        handle.remove()


def grey(size: tuple[int, int]) -> Any:
    from PIL import Image

    return Image.new("RGB", size, (90, 120, 150))


# recipe: inputs of the call, whether the engine batches the guidance itself
CASES = {
    "t2v": (lambda s: Inputs(), True),
    "i2v": (lambda s: Inputs(first_frame=solid((200, 40, 40), s)), True),
    "vace": (
        lambda s: Inputs(
            first_frame=solid((200, 40, 40), s),
            references=(solid((40, 40, 200)),),
            video=tuple(solid((i * 12, 80, 80), s) for i in range(17)),
        ),
        True,
    ),
    "ti2v": (lambda s: Inputs(), True),
    "ltx": (lambda s: Inputs(), False),
}


@pytest.mark.parametrize("name", list(CASES))
def test_the_engine_loop_makes_stock_diffusers_frames(engine: DiffusersEngine, name: str) -> None:
    recipe = engine.book.recipes[name]
    pipe = engine.loader.get(recipe)
    make_inputs, batched = CASES[name]
    shape = (*recipe.native_size("16:9"), 17)
    inputs = dataclasses.replace(make_inputs(shape[:2]), video_strength=recipe.video_strength)
    with transformer_calls(pipe) as stock_batches:
        stock = stock_frames(pipe, recipe, shape, inputs)
    with transformer_calls(pipe) as engine_batches:
        ours = numpy.stack(engine.run_pipeline(recipe, PROMPT, shape, inputs, 3, None, None))
    assert ours.shape == stock.shape
    largest = int(numpy.abs(ours.astype(int) - stock.astype(int)).max())
    assert largest <= TOLERANCE, f"{name}: frames differ by up to {largest}"
    assert stock.std() > 1.0, "a generated clip, not a flat colour"
    if batched:
        # Stock diffusers: two passes of one a step; the engine: one pass of two.
        assert stock_batches == [1] * (2 * recipe.steps)
        assert engine_batches == [2] * recipe.steps
    else:
        assert engine_batches == stock_batches == [2] * recipe.steps


def test_guidance_changes_the_frames(engine: DiffusersEngine) -> None:
    """The batched guidance is not a no-op: scale 5 and scale 1 give different frames."""
    recipe = engine.book.recipes["t2v"]
    shape = (*recipe.native_size("16:9"), 17)
    guided = numpy.stack(engine.run_pipeline(recipe, PROMPT, shape, Inputs(), 3, None, None))
    plain = dataclasses.replace(recipe, guidance=1.0)
    unguided = numpy.stack(engine.run_pipeline(plain, PROMPT, shape, Inputs(), 3, None, None))
    assert int(numpy.abs(guided.astype(int) - unguided.astype(int)).max()) > TOLERANCE
    # A compiled warm-up's call: one step, no VAE, no frames.
    assert engine.run_pipeline(recipe, PROMPT, shape, Inputs(), 3, 1, None, decode=False) == []


def test_a_task_encodes_its_prompt_once_per_text_encoder(
    engine: DiffusersEngine, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    # 4 s at 16 fps: a text-to-video call, then three image-to-video calls from other
    # weights: each model folder's own text encoder encodes once.
    result = engine.generate(make_job(tmp_path, Mode.TEXT), lambda _: None, lambda: False)
    assert len(result.info["calls"]) == 4  # type: ignore[arg-type]
    assert result.info["text_encodings"] == 2
    # Recipes that name one text encoder share one copy, and the task encodes once.
    shared = f'text_encoder = "{tiny_models["wan-t2v"]}"'
    text = guided_recipes(tiny_models, t2v=shared, i2v=shared, vace=shared)
    one = make_engine(text, tmp_path / "shared")
    one.load()
    pipes = one.loader.pipes
    assert pipes["t2v"].text_encoder is pipes["i2v"].text_encoder is pipes["vace"].text_encoder
    other = one.loader.get(one.book.recipes["ti2v"])
    assert other.text_encoder is not pipes["t2v"].text_encoder, "a recipe without the key"
    assert len(one.loader.text_encoders) == 1
    result = one.generate(make_job(tmp_path, Mode.TEXT, name="b"), lambda _: None, lambda: False)
    assert result.info["text_encodings"] == 1
    assert "prompt_cut" not in result.info


def test_a_long_prompt_is_cut_and_the_task_says_by_how_much(
    engine: DiffusersEngine, tmp_path: Path
) -> None:
    job = make_job(tmp_path, Mode.TEXT, duration=1)
    # The tiny tokenizer makes a token of each character: 700 characters, 701 tokens.
    long = "snowfox" * 100
    job.spec = dataclasses.replace(job.spec, prompt=long)
    result = engine.generate(job, lambda _: None, lambda: False)
    assert result.info["prompt_cut"] == {
        "tokens": 701,
        "token_limit": 512,
        "dropped_tokens": 189,
        "characters": 700,
        "kept_characters": 511,
    }


def test_the_text_encoder_can_wait_off_the_gpu(
    tiny_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = guided_recipes(tiny_models, t2v="text_encoder_offload = true")
    engine = make_engine(text, tmp_path)
    recipe = engine.book.recipes["t2v"]
    encoder = engine.loader.get(recipe).text_encoder
    moves: list[str] = []
    original = encoder.to

    def to(device: Any) -> Any:
        moves.append(str(device))
        return original(device)

    monkeypatch.setattr(encoder, "to", to)
    engine.run_pipeline(recipe, PROMPT, (64, 48, 5), Inputs(), 1, None, None)
    # On a GPU the first move goes to cuda:N; this CPU run can show only the order.
    assert moves == [engine.device, "cpu"], "to the compute device to encode, then back"
