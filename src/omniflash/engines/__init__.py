"""Engines turn a validated spec into an mp4.  ``preview`` runs anywhere; ``diffusers`` on GPUs."""

from omniflash.engines.base import (
    Engine,
    GenerationResult,
    Job,
    available_engines,
    create_engine,
    register_engine,
)

__all__ = [
    "Engine",
    "GenerationResult",
    "Job",
    "available_engines",
    "create_engine",
    "register_engine",
]
