"""The diffusers engine against stock diffusers on a GPU, with random full-size weights.

No weights can be downloaded where this runs, and speed does not depend on their
values: each architecture is built from its published config with random weights made
on the GPU in bfloat16 (transformer and UMT5-XXL text encoder; the VAE in float32, as
diffusers recommends).  In one run, with the same inputs and seed:

(a) stock diffusers, called as its documentation shows (bf16, default attention,
    classifier-free guidance as two passes a step, the prompt encoded on every call);
(b) the same pipeline through the omniflash engine's own loop
    (``DiffusersEngine.run_pipeline``): guidance as one batched pass, the prompt
    encoded once a task, no other option;
(c) (b) with the recipe options given (``--attention``, ``--compile``, ``--quantize``,
    ``--cache``, ``--offload``, ``--text-encoder-offload``).

Each is run once to warm up (compilation happens there), then timed: text encoding,
every denoising step, the VAE decode.  The whole video is extrapolated to the model's
full step count from the measured per-step time and labelled so.  MFU counts the
denoising transformer's FLOPs analytically (linear layers 2 × parameters × tokens,
attention 4 × S² × d per layer for self-attention and 4 × S × L × d for cross-attention)
against the GPU's dense bf16 peak.

    python bench/engine_gpu.py --model wan21-14b [--steps 3] [--attention NAME] [--compile]
        [--quantize fp8] [--cache first_block:0.05] [--offload group] [--text-encoder-offload]
    python bench/engine_gpu.py --tiny        # a CPU smoke run of the same code, tiny models

Prints a Markdown table, and how far (b)'s and (c)'s frames are from (a)'s.  Then the
cost of the latent previews (``latent_previews``): (b) run again with a preview every few
steps (its step time against (b)'s own), and the projection alone on latents of the
model's shape (the time it holds the denoising loop, and the whole of one preview: the
copy to the host and the picture).  Needs the [gpu] extra (and torchao for ``--quantize``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import string
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy
import torch

from omniflash.engines.diffusion import DiffusersEngine
from omniflash.engines.diffusion.adapters import Inputs
from omniflash.engines.diffusion.latent_previews import LatentPreviewer, preview_steps
from omniflash.settings import Settings

PROMPT = "a red fox runs through fresh snow at dawn, cinematic, detailed fur"
NEGATIVE = "blurry, low quality, static, distorted"
TEXT_TOKENS = 512  # Wan pads every prompt to 512 tokens
# Dense bf16 peak, FLOP/s, by a substring of torch.cuda.get_device_name().
PEAKS = {"H100 PCIe": 756e12, "H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}


@dataclasses.dataclass(frozen=True)
class Arch:
    heads: int
    ffn: int
    layers: int
    channels: int  # latent channels in and out
    vae: str  # "2.1" (8× spatial) or "2.2" (16× spatial, 48 channels)
    size: tuple[int, int]
    frames: int
    full_steps: int
    head_dim: int = 128
    expand_timesteps: bool = False

    @property
    def dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def spatial(self) -> int:
        return 16 if self.vae == "2.2" else 8


ARCHS = {
    "wan21-1.3b": Arch(12, 8960, 30, 16, "2.1", (832, 480), 81, 50),
    "wan21-14b": Arch(40, 13824, 40, 16, "2.1", (1280, 720), 81, 50),
    "wan22-5b": Arch(24, 14336, 30, 48, "2.2", (1280, 704), 121, 50, expand_timesteps=True),
    # The CPU smoke run: the same code on a model small enough for a laptop.
    "tiny": Arch(2, 32, 2, 16, "2.1", (64, 48), 9, 50, head_dim=12),
}
UMT5_XXL = dict(d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64)
UMT5_TINY = dict(d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4)


def tokens(arch: Arch) -> int:
    """Transformer tokens: latent frames × (H / spatial / 2) × (W / spatial / 2)."""
    latent_frames = (arch.frames - 1) // 4 + 1
    w, h = arch.size
    return latent_frames * (h // arch.spatial // 2) * (w // arch.spatial // 2)


def forward_flops(arch: Arch) -> float:
    """FLOPs of one transformer forward, counted analytically."""
    s, d, text = tokens(arch), arch.dim, TEXT_TOKENS
    per_layer = (
        2 * s * (4 * d * d)  # self-attention q, k, v, o
        + 2 * s * (2 * d * d)  # cross-attention q, o
        + 2 * text * (2 * d * d)  # cross-attention k, v over the text
        + 2 * s * (2 * d * arch.ffn)  # feed-forward
        + 4 * s * s * d  # self-attention scores and values
        + 4 * s * text * d  # cross-attention
    )
    patches = 2 * s * d * arch.channels * 4 * 2  # patch embedding and output projection
    return float(arch.layers * per_layer + patches)


@contextlib.contextmanager
def building(device: str, dtype: torch.dtype) -> Iterator[None]:
    """Modules made inside are created on ``device`` in ``dtype``: no host copy, no cast."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def tokenizer() -> Any:
    """A tokenizer built in code: Wan pads to 512 tokens, so its vocabulary does not matter."""
    import transformers

    chars = string.ascii_letters + string.digits + string.punctuation
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(c, -5.0) for c in chars] + [("▁" + c, -4.0) for c in chars]
    return transformers.T5Tokenizer(vocab=pieces, extra_ids=0)


def build_pipeline(arch: Arch, device: str, dtype: torch.dtype) -> Any:
    import diffusers
    import transformers

    torch.manual_seed(0)
    tok = tokenizer()
    tiny = arch.heads < 8
    with building(device, dtype):
        text_encoder = transformers.UMT5EncoderModel(
            transformers.UMT5Config(
                vocab_size=len(tok) if tiny else 256384,
                relative_attention_num_buckets=32,
                feed_forward_proj="gated-gelu",
                **(UMT5_TINY if tiny else UMT5_XXL),
            )
        ).eval()
        transformer = diffusers.WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=arch.heads,
            attention_head_dim=arch.head_dim,
            in_channels=arch.channels,
            out_channels=arch.channels,
            text_dim=text_encoder.config.d_model,
            freq_dim=256,
            ffn_dim=arch.ffn,
            num_layers=arch.layers,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            eps=1e-6,
            rope_max_seq_len=1024,
        ).eval()
    vae_config: dict[str, Any] = (
        dict(base_dim=3, dim_mult=[1, 1, 1, 1], num_res_blocks=1) if tiny else {}
    )
    if arch.vae == "2.2":
        vae_config.update(
            base_dim=160,
            decoder_base_dim=256,
            z_dim=48,
            is_residual=True,
            in_channels=12,
            out_channels=12,
            patch_size=2,
            scale_factor_spatial=16,
            latents_mean=[0.0] * 48,
            latents_std=[1.0] * 48,
        )
    with building(device, torch.float32):
        vae = diffusers.AutoencoderKLWan(**vae_config).eval()
    pipe = diffusers.WanPipeline(
        tokenizer=tok,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=diffusers.UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0
        ),
        transformer=transformer,
        expand_timesteps=arch.expand_timesteps,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


class Clock:
    """Wall time between synchronised points; text encoding and decode by wrapping."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.steps: list[float] = []
        self.phases: dict[str, float] = {}
        self._last = 0.0

    def now(self) -> float:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter()

    def wrap(self, owner: Any, name: str, label: str) -> Callable[[], None]:
        original = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = self.now()
            result = original(*args, **kwargs)
            end = self.now()
            self.phases[label] = self.phases.get(label, 0.0) + end - started
            self._last = end
            return result

        setattr(owner, name, timed)
        return lambda: setattr(owner, name, original)

    def step(self, _step: int) -> None:
        end = self.now()
        self.steps.append(end - self._last)
        self._last = end


@dataclasses.dataclass
class Run:
    text: float
    steps: list[float]
    decode: float
    peak_gb: float
    frames: numpy.ndarray


def timed_run(pipe: Any, device: str, call: Callable[[Clock], numpy.ndarray]) -> Run:
    clock = Clock(device)
    undo = [
        clock.wrap(pipe, "encode_prompt", "text"),
        clock.wrap(pipe.vae, "decode", "decode"),
    ]
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    try:
        frames = call(clock)
    finally:
        for restore in undo:
            restore()
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else 0.0
    # The decode wrapper ends the last step's interval; the first step starts after the text.
    return Run(clock.phases["text"], clock.steps, clock.phases["decode"], peak, frames)


def engine_for(arch_name: str, root: Path, options: dict[str, str]) -> tuple[DiffusersEngine, Any]:
    """A ``DiffusersEngine`` with two recipes for the benchmark's in-memory pipeline.

    ``loop``: the engine's own loop only (embeddings reused, guidance batched), no speed
    or memory option; ``fast``: the same with ``options`` (recipe keys, TOML values).
    """
    arch = ARCHS[arch_name]
    w, h = arch.size
    common = f"""
pipeline = "WanPipeline"
model = "random-weights/{arch_name}"
inputs = ["reference_images", "video_mask"]
steps = {arch.full_steps}
guidance = 5.0
fps = 16
max_frames = {arch.frames}
multiple = {arch.spatial * 2}
pixels = {w * h}
sizes = {{ "16:9" = [{w}, {h}] }}
negative_prompt = "{NEGATIVE}"
vae_tiling = false
"""
    extra = "".join(f"{key} = {value}\n" for key, value in options.items())
    recipes = root / "recipes.toml"
    recipes.write_text(
        f"""
[modes]
text = "loop"
frame = "loop"
reference = "loop"
video = "loop"

[recipes.loop]
{common}
[recipes.fast]
model = "random-weights/{arch_name}-fast"
{common.replace(f'model = "random-weights/{arch_name}"', "")}{extra}
"""
    )
    engine = DiffusersEngine(Settings(recipes_path=recipes, workers=1))
    return engine, engine.book.recipes


def stock_call(pipe: Any, arch: Arch, steps: int, device: str) -> Callable[[Clock], numpy.ndarray]:
    w, h = arch.size

    def call(clock: Clock) -> numpy.ndarray:
        out = pipe(
            prompt=PROMPT,
            negative_prompt=NEGATIVE,
            height=h,
            width=w,
            num_frames=arch.frames,
            guidance_scale=5.0,
            num_inference_steps=steps,
            generator=torch.Generator(device=device).manual_seed(42),
            output_type="np",
            callback_on_step_end=lambda _p, i, _t, kw: (clock.step(i), kw)[1],
        ).frames[0]
        return (numpy.clip(out, 0.0, 1.0) * 255 + 0.5).astype(numpy.uint8)

    return call


def engine_call(
    engine: Any, recipe: Any, arch: Arch, steps: int, previews: list[Any] | None = None
) -> Callable[[Clock], numpy.ndarray]:
    def call(clock: Clock) -> numpy.ndarray:
        frames = engine.run_pipeline(
            recipe, PROMPT, (*arch.size, arch.frames), Inputs(), 42, steps, clock.step,
            preview=None if previews is None else previews.append,
        )  # fmt: skip
        return numpy.stack(frames)

    return call


def projection_cost(
    pipe: Any, arch: Arch, device: str, dtype: torch.dtype, repeat: int = 50
) -> tuple[float, float]:
    """Milliseconds of one latent preview: on the loop's thread, and until the picture.

    The first is what a step pays (the matmul and the copy launched); the second adds the
    wait for the copy, the resize and the hand-over, which the loop does not wait for.
    """
    w, h = arch.size
    shape = (1, arch.channels, (arch.frames - 1) // 4 + 1, h // arch.spatial, w // arch.spatial)
    latents = torch.randn(shape, device=device, dtype=dtype)
    previewer = LatentPreviewer(lambda _picture: None, repeat, (w, h, arch.frames))
    clock = Clock(device)
    launch = 0.0
    whole_started = clock.now()
    for step in range(repeat):
        started = time.perf_counter()
        previewer.step(pipe, step, latents)
        launch += time.perf_counter() - started
        previewer.finish()
    whole = clock.now() - whole_started
    return launch / repeat * 1e3, whole / repeat * 1e3


def psnr(a: numpy.ndarray, b: numpy.ndarray) -> float:
    mse = float(numpy.mean((a.astype(numpy.float64) - b.astype(numpy.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * numpy.log10(255.0**2 / mse)


def options_of(args: argparse.Namespace) -> dict[str, str]:
    """The (c) recipe's options, as TOML values."""
    options: dict[str, str] = {}
    if args.attention != "default":
        options["attention"] = f'"{args.attention}"'
    if args.compile:
        options["compile"] = "true"
    if args.quantize != "none":
        options["quantize"] = f'"{args.quantize}"'
    if args.cache:
        kind, _, threshold = args.cache.partition(":")
        value = f", threshold = {threshold}" if threshold else ""
        options["cache"] = f'{{ kind = "{kind}"{value} }}'
    if args.offload != "none":
        options["offload"] = f'"{args.offload}"'
    if args.text_encoder_offload:
        options["text_encoder_offload"] = "true"
    return options


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(ARCHS), default="wan21-1.3b")
    parser.add_argument("--steps", type=int, default=3, help="denoising steps timed per run")
    parser.add_argument("--attention", default="default", help="(c)'s attention backend")
    parser.add_argument("--compile", action="store_true", help="(c) compiles repeated blocks")
    parser.add_argument("--quantize", choices=("none", "fp8"), default="none", help="(c)'s weights")
    parser.add_argument("--cache", help="(c)'s step cache, KIND[:THRESHOLD], e.g. first_block:0.05")
    parser.add_argument("--offload", choices=("none", "group"), default="none", help="(c)")
    parser.add_argument("--text-encoder-offload", action="store_true", help="(c)")
    parser.add_argument("--calls", type=int, default=2, help="pipeline calls of one task")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run with a tiny model")
    parser.add_argument("--peak-tflops", type=float, help="dense bf16 peak, if not known")
    args = parser.parse_args()

    name = "tiny" if args.tiny else args.model
    arch = ARCHS[name]
    device = "cpu" if args.tiny else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run with --tiny for a CPU smoke run", file=sys.stderr)
        return 2
    gpu = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    peak = (args.peak_tflops or 0) * 1e12 or next((v for k, v in PEAKS.items() if k in gpu), 0.0)
    dtype = torch.float32 if args.tiny else torch.bfloat16
    options = options_of(args)

    started = time.perf_counter()
    pipe = build_pipeline(arch, device, dtype)
    built = time.perf_counter() - started
    stock = stock_call(pipe, arch, args.steps, device)
    timed_run(pipe, device, stock)  # warm-up
    a = timed_run(pipe, device, stock)

    with tempfile.TemporaryDirectory() as tmp:
        engine, recipes = engine_for(name, Path(tmp), options)
        runs: list[Run] = []
        warmups: list[float] = []
        for recipe in (recipes["loop"], recipes["fast"]):
            # Options change the pipeline for good (compiled blocks, FP8 weights): (b) first.
            engine.loader.adopt(recipe, pipe)
            ours = engine_call(engine, recipe, arch, args.steps)
            warm_started = time.perf_counter()
            timed_run(pipe, device, ours)  # warm-up, compilation included
            warmups.append(time.perf_counter() - warm_started)
            runs.append(timed_run(pipe, device, ours))
        b, c = runs
        engine.loader.adopt(recipes["loop"], pipe)
        shown: list[Any] = []
        b_previews = timed_run(
            pipe, device, engine_call(engine, recipes["loop"], arch, args.steps, shown)
        )
    launch_ms, whole_ms = projection_cost(pipe, arch, device, dtype)

    flops = forward_flops(arch) * 2  # two forwards a step: with and without the prompt
    named = ", ".join(f"{k} {v}" for k, v in options.items()) or "none"
    print(
        f"\n{name} on {gpu}: {arch.size[0]}×{arch.size[1]}, {arch.frames} frames, "
        f"{tokens(arch)} tokens, {flops / 1e15:.2f} PFLOP a step; built in {built:.1f} s; "
        f"(c) options: {named}; warm-up (b) {warmups[0]:.1f} s, (c) {warmups[1]:.1f} s\n"
    )
    print("(a) stock diffusers: two guidance passes a step, the prompt encoded every call;")
    print("(b) the engine's loop: one batched guidance pass, the prompt encoded once a task;")
    print("(c) (b) with the options above.\n")
    print("| | (a) stock diffusers | (b) engine loop | (c) engine + options | (a)/(c) |")
    print("|---|---|---|---|---|")

    def row(label: str, x: float, y: float, z: float, unit: str = "s") -> None:
        ratio = x / z if z else float("nan")
        print(f"| {label} | {x:.3f} {unit} | {y:.3f} {unit} | {z:.3f} {unit} | {ratio:.2f} |")

    step = [float(numpy.median(r.steps)) for r in (a, b, c)]
    row("text encoding", a.text, b.text, c.text)
    # Stock diffusers encodes on every call; the engine once a task (measured per call).
    row(
        f"text encoding, a task of {args.calls} calls (from the above)",
        a.text * args.calls, b.text, c.text,
    )  # fmt: skip
    row(f"denoising step (median of {args.steps})", *step)
    row("VAE decode", a.decode, b.decode, c.decode)
    whole = [r.text + arch.full_steps * s + r.decode for r, s in zip((a, b, c), step, strict=True)]
    row(f"whole video, {arch.full_steps} steps (extrapolated)", *whole)
    if peak:
        mfu = [flops / s / peak * 100 for s in step]
        print(f"| MFU of the denoising loop | {mfu[0]:.1f} % | {mfu[1]:.1f} % | {mfu[2]:.1f} % | |")
    if device == "cuda":
        gib = " | ".join(f"{r.peak_gb:.1f} GiB" for r in (a, b, c))
        print(f"| peak GPU memory | {gib} | |")
    print()
    for label, run in (("(b)", b), ("(c)", c)):
        largest = int(numpy.abs(a.frames.astype(int) - run.frames).max())
        print(
            f"frames {label} against (a): PSNR {psnr(a.frames, run.frames):.1f} dB, "
            f"largest difference {largest} of 255"
        )
    step_b = float(numpy.median(b.steps))
    step_shown = float(numpy.median(b_previews.steps))
    every = preview_steps(arch.full_steps)
    print(
        f"\nlatent previews ({len(shown)} shown in {args.steps} steps; a {arch.full_steps}-step "
        f"call shows {len(every)}):\n"
    )
    print("| | ms | of (b)'s step |")
    print("|---|---|---|")
    print(f"| (b)'s denoising step (median) | {step_b * 1e3:.1f} | 100 % |")
    print(
        f"| (b) with {len(shown)} previews in {args.steps} steps (median) | {step_shown * 1e3:.1f} "
        f"| {step_shown / step_b * 100:.1f} % |"
    )
    for label, ms in (("on the loop's thread", launch_ms), ("until the picture", whole_ms)):
        print(f"| one projection, {label} | {ms:.2f} | {ms / (step_b * 1e3) * 100:.2f} % |")
    largest = int(numpy.abs(b.frames.astype(int) - b_previews.frames).max())
    print(f"\nframes of (b) with previews against (b): largest difference {largest} of 255")
    return 0


if __name__ == "__main__":
    sys.exit(main())
