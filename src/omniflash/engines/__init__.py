"""Engines turn a validated spec into an mp4.  ``preview`` runs anywhere; ``diffusers`` on GPUs.

Engines are found by name through the ``omniflash.engines`` entry-point group (see
``omniflash.engines.base``).
"""

from omniflash.engines.base import (
    ENTRY_POINT_GROUP,
    Engine,
    GenerationResult,
    Job,
    available_engines,
    create_engine,
    register_engine,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "Engine",
    "GenerationResult",
    "Job",
    "available_engines",
    "create_engine",
    "register_engine",
]
