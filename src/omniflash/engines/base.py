"""The engine protocol and the registry of engines by name.

An engine lives in a worker's child process: it is created and ``load()``-ed once,
then ``generate()`` runs one job at a time.  That process is *spawned*, so it knows
only what it can import: engines are found by name through the ``omniflash.engines``
entry-point group, where omniflash declares its own (``preview``, ``diffusers``) the
way a third-party package declares one::

    [project.entry-points."omniflash.engines"]
    myengine = "mypackage.engine:MyEngine"

``omniflash serve --engine myengine`` then finds it in every process, as does
``--engine mypackage.engine:MyEngine`` without any registration.  A factory is
called with the server's ``Settings`` and returns an ``Engine``.

``register_engine`` adds a factory to this process only: for tests and for code that
calls ``create_engine`` itself.  A server's engine processes do not see it.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from omniflash.contract import GenerationSpec

if TYPE_CHECKING:
    from PIL import Image

    from omniflash.media.decode import VideoClip
    from omniflash.settings import Settings

__all__ = [
    "ENTRY_POINT_GROUP",
    "PREVIEW_WIDTH",
    "CancelCheck",
    "Engine",
    "EngineFactory",
    "GenerationResult",
    "Job",
    "PreviewCallback",
    "ProgressCallback",
    "available_engines",
    "create_engine",
    "preview_size",
    "register_engine",
]

ProgressCallback = Callable[[float], None]
"""Called with the fraction done, 0.0–1.0; values never go back."""
CancelCheck = Callable[[], bool]
"""Returns True once the task was cancelled; engines check it between steps."""
PreviewCallback = Callable[["Image.Image"], None]
"""Called with a small RGB picture of the video so far (at most ``PREVIEW_WIDTH`` wide)."""
PREVIEW_WIDTH = 320
"""The widest preview an engine hands its job; wider ones are scaled down by the worker."""
PREVIEW_HEIGHT = 2 * PREVIEW_WIDTH
"""The tallest: a 9:16 preview is taller than it is wide."""


def preview_size(width: int, height: int) -> tuple[int, int]:
    """``width`` × ``height`` scaled down (never up) to fit a preview, the aspect kept."""
    scale = min(1.0, PREVIEW_WIDTH / max(1, width), PREVIEW_HEIGHT / max(1, height))
    return max(2, round(width * scale) // 2 * 2), max(2, round(height * scale) // 2 * 2)


@dataclasses.dataclass
class Job:
    """One task as an engine sees it: the spec with its inputs fetched and decoded."""

    task_id: str
    spec: GenerationSpec
    """``spec.duration`` is always set here (a reference video's length decided it)."""
    seed: int
    images: list[Image.Image]
    """Decoded RGB images, in ``image_urls`` order."""
    video: VideoClip | None
    output_path: Path
    preview: PreviewCallback | None = None
    """Where the engine shows what it has made so far, every few frames or steps; None:
    no previews wanted.  A preview is a look, not a result: an engine never lets one
    change its output, and an exception from this callback never fails the task."""


@dataclasses.dataclass(frozen=True)
class GenerationResult:
    frames: int
    width: int
    height: int
    fps: int
    info: dict[str, object] = dataclasses.field(default_factory=dict)
    """Engine details recorded with the task (model, steps, seconds per stage)."""


@runtime_checkable
class Engine(Protocol):
    """What a worker's engine process runs.

    An engine may also set ``cancel_grace_s``: how long its worker waits for a cancel to
    be honoured before it kills the process (10 s when unset).  An engine that raises
    ``EngineBroken`` fails the task and its process exits, to be started afresh.
    """

    name: str

    def load(self) -> None:
        """Load models; called once per child process before the first job."""

    def warmup(self) -> None:
        """Optional: run configured shapes once so the first real task is fast."""

    def estimate_seconds(self, spec: GenerationSpec) -> float:
        """A rough wall-clock estimate for the task, shown as ``estimated_time``."""

    def generate(
        self, job: Job, progress: ProgressCallback, cancelled: CancelCheck
    ) -> GenerationResult:
        """Write ``job.output_path`` (H.264 mp4, exactly duration × fps frames)."""


EngineFactory = Callable[["Settings"], Engine]

ENTRY_POINT_GROUP = "omniflash.engines"
# The built-in engines as pyproject.toml declares them in ENTRY_POINT_GROUP; used only
# for a name the installed metadata lacks, as an install made before that table has.
_BUILTIN_FALLBACK: dict[str, str] = {
    "preview": "omniflash.engines.preview:PreviewEngine",
    "diffusers": "omniflash.engines.diffusion:DiffusersEngine",
}
_registered: dict[str, EngineFactory] = {}


def register_engine(name: str, factory: EngineFactory) -> None:
    """Register an engine factory under ``name`` in this process (replacing any previous one).

    For tests, and for code that calls ``create_engine`` itself.  ``omniflash serve``
    runs engines in spawned processes, which never see this registry: give a server an
    engine through the ``omniflash.engines`` entry-point group, or as
    ``--engine package.module:factory``.
    """
    _registered[name] = factory


def _load_target(target: str) -> EngineFactory:
    module_name, _, attr = target.partition(":")
    factory: EngineFactory = getattr(importlib.import_module(module_name), attr)
    return factory


def _entry_point_targets() -> dict[str, str]:
    """Engine names and their ``module:factory``, from the installed entry points first."""
    targets: dict[str, str] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        targets.setdefault(ep.name, ep.value)
    for name, target in _BUILTIN_FALLBACK.items():
        targets.setdefault(name, target)
    return targets


def available_engines() -> list[str]:
    return sorted(set(_entry_point_targets()) | set(_registered))


def create_engine(name: str, settings: Settings) -> Engine:
    """Build the engine named ``name`` (or at ``module:factory``); unknown names list the known."""
    if name in _registered:
        return _registered[name](settings)
    if ":" in name:
        return _load_target(name)(settings)
    targets = _entry_point_targets()
    if name not in targets:
        raise ValueError(
            f"unknown engine {name!r}; available: {', '.join(available_engines())} "
            f"(an engine is found through the {ENTRY_POINT_GROUP!r} entry-point group, "
            "or named as package.module:factory)"
        )
    return _load_target(targets[name])(settings)
