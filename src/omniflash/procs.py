"""Child processes that must not outlive their parent.

An engine process (``omniflash.worker.child``) and each extra rank of a multi-GPU task
(``omniflash.engines.diffusion.rank_main``) hold GPU memory: if their parent dies by
SIGKILL, nothing else would ever stop them.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import sys

__all__ = ["die_with_parent"]

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Linux: this process gets SIGKILL when its parent ends, however that ends.

    Elsewhere (and where libc cannot be loaded) it does nothing.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
