"""The engine's share of each denoising step: text embeddings once a task, guidance in one pass.

diffusers' pipelines encode the prompt on every call, and its Wan pipelines run the
conditional and the unconditional transformer passes one after the other.  The engine
encodes a task's prompt once (``PromptCache``) and gives every call of the task the
embeddings.  For the Wan pipelines it then calls the pipeline without guidance and
turns each transformer call into one pass over a batch of two, the prompt and the
negative prompt, combined as diffusers combines them:
``uncond + scale · (cond − uncond)`` (``batched_guidance``).  The pipeline's own code
still prepares the latents and the conditioning (first frame, VACE video and
references), steps the scheduler and decodes, so each model's conditioning stays
diffusers' own and the frames match a stock call.

LTX's pipelines batch their guidance already: there only the embeddings are reused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from omniflash.engines.diffusion.adapters import Inputs, build_call_kwargs
from omniflash.engines.diffusion.recipes import Recipe

__all__ = ["BATCHED_GUIDANCE", "Prompt", "PromptCache", "batched_guidance", "call_pipeline"]

BATCHED_GUIDANCE = frozenset(
    {"WanPipeline", "WanImageToVideoPipeline", "WanVACEPipeline", "WanVideoToVideoPipeline"}
)
"""Pipelines that run guidance as two passes a step; the engine batches them."""

# The transformer arguments that carry the batch: repeated for the unconditional half.
# ``control_hidden_states_scale`` (VACE) is one value per VACE layer and is left alone.
_REPEATED = ("hidden_states", "timestep", "encoder_hidden_states_image", "control_hidden_states")


@dataclasses.dataclass(frozen=True)
class Prompt:
    """A prompt encoded for one pipeline family, with what the tokenizer cut from it."""

    call_kwargs: Mapping[str, Any]
    """What the pipeline call gets in place of ``prompt`` and ``negative_prompt``."""
    negative: Any
    """The negative prompt's embeddings, for ``batched_guidance`` (None when unguided)."""
    tokens: int
    """Tokens of the prompt, the end token included, before any cut."""
    limit: int
    kept_characters: int
    characters: int

    @property
    def cut(self) -> dict[str, int] | None:
        """For the task's info: how much of the prompt the text encoder did not see."""
        if self.tokens <= self.limit:
            return None
        return {
            "tokens": self.tokens,
            "token_limit": self.limit,
            "dropped_tokens": self.tokens - self.limit,
            "characters": self.characters,
            "kept_characters": self.kept_characters,
        }


def _style(pipe: Any) -> str | None:
    """How ``pipe`` takes embeddings: ``masked`` (LTX), ``plain`` (Wan), or None."""
    params = inspect.signature(type(pipe).__call__).parameters
    if "prompt_embeds" not in params or not hasattr(pipe, "encode_prompt"):
        return None
    return "masked" if "prompt_attention_mask" in params else "plain"


def sequence_limit(pipe: Any, call_kwargs: Mapping[str, Any]) -> int:
    """Tokens the pipeline's text encoder sees: the call's ``max_sequence_length``."""
    if "max_sequence_length" in call_kwargs:
        return int(call_kwargs["max_sequence_length"])
    param = inspect.signature(type(pipe).__call__).parameters.get("max_sequence_length")
    return int(param.default) if param is not None else 512


def _count(pipe: Any, prompt: str, limit: int) -> tuple[int, int, int]:
    """Tokens of ``prompt`` as the pipeline cleans and tokenizes it, and characters kept."""
    module = sys.modules.get(type(pipe).__module__)
    clean = getattr(module, "prompt_clean", None)
    text = clean(prompt) if callable(clean) else prompt
    ids = list(pipe.tokenizer(text, add_special_tokens=True).input_ids)
    if len(ids) <= limit:
        return len(ids), len(text), len(text)
    kept = pipe.tokenizer.decode(ids[: limit - 1], skip_special_tokens=True)
    return len(ids), len(str(kept)), len(text)


class PromptCache:
    """One task's encoded prompts, by text encoder: every call of the task reuses them.

    >>> cache = PromptCache()
    >>> # first = cache.encode(pipe, "a fox", "blurry", True, {}, "cuda:0", offload=False)
    >>> # cache.encode(other_pipe_with_the_same_encoder, ...) is first
    """

    def __init__(self) -> None:
        self._store: dict[tuple[Any, ...], Prompt | None] = {}
        self.encodings = 0
        """How many times a text encoder ran (the tests count them)."""

    def cut(self) -> dict[str, int] | None:
        """The largest cut of any prompt encoded so far (None when nothing was cut)."""
        cuts = [p.cut for p in self._store.values() if p is not None and p.cut is not None]
        return max(cuts, key=lambda c: c["dropped_tokens"], default=None)

    def encode(
        self,
        pipe: Any,
        prompt: str,
        negative: str | None,
        guided: bool,
        call_kwargs: Mapping[str, Any],
        device: Any,
        *,
        offload: bool,
    ) -> Prompt | None:
        """The embeddings of ``prompt`` for ``pipe``; None where it takes no embeddings."""
        style = _style(pipe)
        encoder = getattr(pipe, "text_encoder", None)
        if style is None or encoder is None:
            return None
        limit = sequence_limit(pipe, call_kwargs)
        key = (id(encoder), id(pipe.tokenizer), style, prompt, negative, guided, limit)
        if key not in self._store:
            self._store[key] = self._encode(
                pipe, style, prompt, negative, guided, limit, device, offload
            )
        return self._store[key]

    def _encode(
        self,
        pipe: Any,
        style: str,
        prompt: str,
        negative: str | None,
        guided: bool,
        limit: int,
        device: Any,
        offload: bool,
    ) -> Prompt:
        import torch

        encoder = pipe.text_encoder
        if offload:
            encoder.to(device)
        try:
            with torch.no_grad():
                out = pipe.encode_prompt(
                    prompt=prompt,
                    negative_prompt=negative,
                    do_classifier_free_guidance=guided,
                    max_sequence_length=limit,
                    device=device,
                )
        finally:
            if offload:
                encoder.to("cpu")
        self.encodings += 1
        tokens, kept, characters = _count(pipe, prompt, limit)
        if style == "masked":
            embeds, mask, neg_embeds, neg_mask = out
            kwargs: dict[str, Any] = {"prompt_embeds": embeds, "prompt_attention_mask": mask}
            if guided:
                kwargs.update(
                    negative_prompt_embeds=neg_embeds, negative_prompt_attention_mask=neg_mask
                )
            return Prompt(kwargs, None, tokens, limit, kept, characters)
        embeds, neg_embeds = out
        return Prompt({"prompt_embeds": embeds}, neg_embeds, tokens, limit, kept, characters)


@contextlib.contextmanager
def batched_guidance(models: list[tuple[Any, float]], negative: Any) -> Iterator[None]:
    """While open, each call of a model in ``models`` runs prompt and negative as one batch.

    The pipeline is called unguided; each model's output is replaced by the guided
    prediction at that model's scale (Wan 2.2 A14B's second transformer has its own).
    """
    import torch

    handles = []

    def before(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        kwargs = dict(kwargs)
        for name in _REPEATED:
            value = kwargs.get(name)
            if isinstance(value, torch.Tensor):
                kwargs[name] = torch.cat([value, value])
        cond = kwargs["encoder_hidden_states"]
        uncond = negative.to(device=cond.device, dtype=cond.dtype)
        kwargs["encoder_hidden_states"] = torch.cat([cond, uncond])
        return args, kwargs

    def after_for(scale: float) -> Any:
        def after(_module: Any, _args: Any, _kwargs: Any, output: Any) -> Any:
            noise = output[0] if isinstance(output, tuple) else output.sample
            cond, uncond = noise.chunk(2)
            guided = uncond + scale * (cond - uncond)
            if isinstance(output, tuple):
                return (guided, *output[1:])
            output.sample = guided
            return output

        return after

    try:
        for model, scale in models:
            handles.append(model.register_forward_pre_hook(before, with_kwargs=True))
            handles.append(model.register_forward_hook(after_for(scale), with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


def call_pipeline(
    pipe: Any,
    recipe: Recipe,
    prompt: str,
    shape: tuple[int, int, int],
    inputs: Inputs,
    *,
    step_end: Callable[..., dict[str, Any]],
    generator: Any,
    steps: int | None,
    prompts: PromptCache | None,
    device: str,
    decode: bool = True,
) -> Any:
    """One pipeline call, float frames: embeddings from the task's cache, guidance batched.

    ``steps`` overrides the recipe's (warm-up runs one); ``step_end`` is the pipeline's
    ``callback_on_step_end``.
    """
    width, height, count = shape
    extra = dict(recipe.call_kwargs)
    guided = recipe.guidance > 1.0
    negative = (recipe.negative_prompt or "") if guided else None
    encoded = (prompts or PromptCache()).encode(
        pipe, prompt, negative, guided, extra, device, offload=recipe.text_encoder_offload
    )
    kwargs: dict[str, Any] = {
        "height": height,
        "width": width,
        "num_frames": count,
        "num_inference_steps": steps or recipe.steps,
        "guidance_scale": recipe.guidance,
        "generator": generator,
        "output_type": "np" if decode else "latent",
        "callback_on_step_end": step_end,
    }
    if encoded is None:
        kwargs["prompt"] = prompt
        if recipe.negative_prompt:
            kwargs["negative_prompt"] = recipe.negative_prompt
    else:
        kwargs.update(encoded.call_kwargs)
    guidance: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if guided and encoded is not None and type(pipe).__name__ in BATCHED_GUIDANCE:
        # The pipeline runs unguided; the engine batches prompt and negative prompt.
        second = float(extra.pop("guidance_scale_2", recipe.guidance))
        models = [(pipe.transformer, recipe.guidance)]
        if getattr(pipe, "transformer_2", None) is not None:
            models.append((pipe.transformer_2, second))
        guidance = batched_guidance(models, encoded.negative)
        kwargs["guidance_scale"] = 1.0
    kwargs.update(extra)
    inputs = dataclasses.replace(inputs, video_strength=recipe.video_strength)
    kwargs.update(build_call_kwargs(recipe.inputs, inputs, shape))
    with guidance:
        return pipe(**kwargs).frames[0]
