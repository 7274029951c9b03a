"""Tiny random-weight pipelines, saved once per session like real model folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from omniflash.media.decode import VideoClip
from tests.engines.diffusion.tiny_inputs import make_clip

os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Folder by name: ``wan-t2v``, ``wan-i2v``, ``wan-vace``, ``wan22-ti2v``, ``ltx`` and
    ``depth`` (a Depth Anything for VACE's depth control)."""
    try:
        import diffusers  # noqa: F401
        import torch
    except ImportError:
        pytest.skip("needs the [gpu] extra (torch, diffusers): pip install 'omniflash[gpu]'")
    from tests.engines.diffusion.tiny_models import build_all

    # The engine takes its share of the cores when it loads; building comes first.  On a
    # busy 2-core machine torch's default of a thread per core spins against the other
    # processes and runs several times slower than one steady thread.
    torch.set_num_threads(1)
    return build_all(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="session")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[int, VideoClip]:
    """Reference videos: a square moving 2 or 5 pixels a frame."""
    root = tmp_path_factory.mktemp("clips")
    return {speed: make_clip(root, speed) for speed in (2, 5)}
