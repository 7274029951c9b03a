"""Which GPUs a worker's engine process takes.

A recipes file's ``gpus_per_task = N`` gives each worker N GPUs.  Before torch is
first imported, the engine process narrows ``CUDA_VISIBLE_DEVICES`` to its own group
(``pin_gpus``): worker *i* takes GPUs ``N·i … N·i + N − 1`` (round robin when there are
more workers than groups), so every kernel of the process runs there.  With N > 1 the
process then runs each task across those GPUs (``omniflash.engines.diffusion.ranks``).
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path

__all__ = ["NVIDIA_GPUS", "pin_gpus"]

NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")


def pin_gpus(
    worker_index: int,
    per_task: int,
    environ: MutableMapping[str, str] = os.environ,
    gpus: Path = NVIDIA_GPUS,
) -> list[str] | None:
    """Narrow ``CUDA_VISIBLE_DEVICES`` to this worker's GPUs; returns them (None: no GPU).

    The GPUs are the operator's ``CUDA_VISIBLE_DEVICES`` when set, else every GPU the
    NVIDIA driver lists, in PCI bus order (``CUDA_DEVICE_ORDER=PCI_BUS_ID``, the order
    ``nvidia-smi`` shows).  Must run before the process first initialises CUDA.
    """
    if "CUDA_VISIBLE_DEVICES" in environ:
        visible = [g.strip() for g in environ["CUDA_VISIBLE_DEVICES"].split(",") if g.strip()]
    else:
        try:
            visible = [str(i) for i in range(len(list(gpus.iterdir())))]
        except OSError:
            visible = []
        environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    if not visible:
        return None
    groups = len(visible) // per_task
    if groups == 0:
        raise ValueError(
            f"gpus_per_task = {per_task}, but only {len(visible)} GPU(s) are visible "
            f"({','.join(visible)})"
        )
    group = worker_index % groups
    mine = visible[group * per_task : (group + 1) * per_task]
    environ["CUDA_VISIBLE_DEVICES"] = ",".join(mine)
    return mine
