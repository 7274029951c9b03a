"""How long a task will take, for the submit answer's ``estimated_time``, cheaply.

The API process calls this on every submit; it must not load an engine (the preview
engine alone pulls in numpy, PyAV and Pillow).  ``preview`` is a formula here, which the
engine itself uses too; other engines are asked through their own ``estimate_seconds``,
built once, on first use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from omniflash.contract import GenerationSpec

if TYPE_CHECKING:
    from omniflash.settings import Settings

__all__ = ["Estimator", "estimator_for", "preview_seconds"]

Estimator = Callable[[GenerationSpec], float]
FALLBACK_S = 60.0


def preview_seconds(spec: GenerationSpec) -> float:
    """The preview engine's time on one core: about 16 ns a pixel, plus a second to start.

    >>> from omniflash.contract import parse_generation_request
    >>> preview_seconds(parse_generation_request({"model": "Omni-Flash-Ext", "prompt": "x"}))
    3.1
    """
    frames = spec.frames or spec.billed_seconds * spec.fps
    return round(1.0 + frames * spec.width * spec.height * 1.6e-8, 1)


def estimator_for(settings: Settings) -> Estimator:
    """The estimate for ``settings.engine``; a fixed minute when the engine cannot say."""
    if settings.engine == "preview":
        return preview_seconds
    engine = None

    def ask_engine(spec: GenerationSpec) -> float:
        nonlocal engine
        if engine is None:
            from omniflash.engines import create_engine

            try:
                engine = create_engine(settings.engine, settings)
            except Exception:  # the workers report the real problem; estimates fall back
                return FALLBACK_S
        return float(engine.estimate_seconds(spec))

    return ask_engine
