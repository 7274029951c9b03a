"""Several GPUs per task: a worker's GPUs, and the ranks that run one task across them.

A recipes file's ``gpus_per_task = N`` gives each worker N GPUs.  Before torch is
first imported, the engine process narrows ``CUDA_VISIBLE_DEVICES`` to its own group
(``pin_gpus``): worker *i* takes GPUs ``N·i … N·i + N − 1`` (round robin when there are
more workers than groups), so every kernel of the process runs there.  With N > 1 the
engine process is rank 0 of a ``torch.distributed`` group (NCCL; gloo on a CPU) and
starts ranks 1 … N − 1 as processes of its own (``python -m
omniflash.engines.diffusion.ranks``), each on its GPU with the same recipes.  Every call
is sent to every rank and runs on all of them in lockstep: the same seed, the same
latents; diffusers' context parallelism (``ContextParallelConfig``, Ulysses or ring
attention) splits each denoising transformer's sequence across the ranks.  Rank 0
alone reports progress and writes the video.  A cancel is agreed at every step (one
all-reduce of a flag), so all ranks stop at the same step.  An input every rank
refuses fails on all of them before the first step, and only the task fails.  A rank
that fails on its own leaves the others waiting in a collective: the engine process
then exits and its worker starts it, and its ranks, again.

A transformer without a context-parallel plan in diffusers (VACE's) runs whole on
every rank: correct, but no faster than on one GPU.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import logging
import os
import pickle
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, MutableMapping
from datetime import timedelta
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omniflash.engines.diffusion.speed import denoisers

if TYPE_CHECKING:
    from omniflash.settings import Settings

__all__ = ["RankGroup", "agree_stop", "parallelize", "pin_gpus"]

log = logging.getLogger(__name__)

NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")
COLLECTIVE_TIMEOUT_S = 600
"""A rank that never reaches a collective fails the others after this long."""
_AUTHKEY_ENV = "OMNIFLASH_RANK_AUTHKEY"


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


def _die_with_parent() -> None:
    """Linux: a rank goes when its engine process goes, however that ends."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def init_distributed(rank: int, world: int, port: int, cuda: bool) -> None:
    import torch.distributed as dist

    dist.init_process_group(
        "nccl" if cuda else "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S),
    )


def agree_stop(stop: bool, device: str) -> bool:
    """Whether any rank wants to stop (a cancel seen by rank 0): all ranks learn it at once."""
    import torch
    import torch.distributed as dist

    flag = torch.tensor([1.0 if stop else 0.0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item() > 0)


@contextlib.contextmanager
def _cpu_counts_as_one_device(cpu: bool) -> Iterator[None]:
    """diffusers puts rank r on accelerator r mod count, which divides by 0 on a CPU build."""
    import torch

    if not cpu:
        yield
        return
    original = torch.accelerator.device_count
    torch.accelerator.device_count = lambda: 1
    try:
        yield
    finally:
        torch.accelerator.device_count = original


def parallelize(pipe: Any, world: int, style: str, attention: str, cuda: bool) -> list[str]:
    """diffusers' context parallelism on each denoising transformer that has a plan for it."""
    diffusers: Any = importlib.import_module("diffusers")

    done = []
    for model in denoisers(pipe):
        name = type(model).__name__
        if getattr(model, "_parallel_config", None) is not None:
            continue  # shared with a pipeline loaded before
        if not getattr(model, "_cp_plan", None):
            done.append(f"{name} has no context-parallel plan: it runs whole on every rank")
            continue
        # Ring attention merges partial results by their log-sum-exp, which SDPA's
        # generic kernel does not return; cuDNN's does.
        if attention == "default":
            attention = "_native_cudnn" if style == "ring" and cuda else "native"
        model.set_attention_backend(attention)
        degrees = {"ring_degree": world, "ring_anything": True}
        if style == "ulysses":
            degrees = {"ulysses_degree": world, "ulysses_anything": True}
        with _cpu_counts_as_one_device(not cuda):
            model.enable_parallelism(config=diffusers.ContextParallelConfig(**degrees))
        done.append(f"{name} split over {world} ranks ({style}, attention {attention})")
    return done


class RankGroup:
    """Rank 0's side of the group: the other ranks' processes and a connection to each."""

    def __init__(self, settings: Settings, world: int, cuda: bool) -> None:
        self.settings, self.world, self.cuda = settings, world, cuda
        self.procs: list[subprocess.Popen[bytes]] = []
        self.conns: list[Connection] = []

    def __repr__(self) -> str:
        return f"<RankGroup world={self.world} alive={sum(p.poll() is None for p in self.procs)}>"

    def start(self) -> None:
        """Start ranks 1 … N − 1 and join the ``torch.distributed`` group as rank 0."""
        authkey = secrets.token_bytes(16)
        port = _free_port()
        with Listener(("127.0.0.1", 0), authkey=authkey) as listener:
            host, listen_port = listener.address
            env = dict(os.environ, **{_AUTHKEY_ENV: authkey.hex()})
            for rank in range(1, self.world):
                command = [sys.executable, "-m", __name__, str(host), str(listen_port), str(rank)]
                self.procs.append(subprocess.Popen(command, env=env))
            for _ in range(1, self.world):
                conn = listener.accept()
                self.conns.append(conn)
            self.conns.sort(key=lambda c: int(c.recv()))
            for conn in self.conns:
                conn.send((self.settings, self.world, port, self.cuda))
        init_distributed(0, self.world, port, self.cuda)

    def wait_ready(self) -> None:
        for rank, conn in enumerate(self.conns, start=1):
            reply = conn.recv()
            if reply[0] != "ready":
                raise RuntimeError(f"rank {rank} failed to load: {reply[1]}")
        log.info("%d ranks loaded", self.world)

    def send_call(self, call: dict[str, Any]) -> None:
        payload = pickle.dumps(("call", call))
        for conn in self.conns:
            conn.send_bytes(payload)

    def collect(self, timeout: float | None = None) -> list[str] | None:
        """Each other rank's end of the call: the failures, as ``rank r: …``.

        With ``timeout``, None when a rank has not answered by then: it is still in
        the call, waiting in a collective for ranks that are no longer there.
        """
        problems = []
        for rank, conn in enumerate(self.conns, start=1):
            if timeout is not None and not conn.poll(timeout):
                return None
            try:
                reply = conn.recv()
            except (EOFError, OSError):
                reply = ("error", "its process ended")
            if reply[0] == "error":
                problems.append(f"rank {rank}: {reply[1]}")
        return problems

    def close(self) -> None:
        import torch.distributed as dist

        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send(("stop",))
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if dist.is_initialized():
            dist.destroy_process_group()
        self.procs, self.conns = [], []


def _serve(conn: Connection, rank: int) -> None:
    """A rank's life: join the group, load the recipes, then run each call rank 0 sends."""
    from omniflash.engines.diffusion.engine import DiffusersEngine
    from omniflash.engines.diffusion.guidance import PromptCache
    from omniflash.errors import TaskCancelled

    settings, world, port, cuda = conn.recv()
    init_distributed(rank, world, port, cuda)
    try:
        engine = DiffusersEngine(settings, rank=rank, world=world)
        engine.load()
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        raise
    conn.send(("ready",))
    task, prompts = None, PromptCache()
    while True:
        message = pickle.loads(conn.recv_bytes())
        if message[0] != "call":
            return
        call = message[1]
        if call["task"] != task:
            task, prompts = call["task"], PromptCache()
        try:
            recipe = engine.book.recipes[call["recipe"]]
            engine.run_pipeline(
                recipe, call["prompt"], call["shape"], call["inputs"], call["seed"],
                call["steps"], None, prompts, decode=call["decode"],
            )  # fmt: skip
        except TaskCancelled:
            conn.send(("cancelled",))
        except Exception as exc:
            log.exception("rank %d: the call failed", rank)
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
        else:
            conn.send(("done",))


def main(argv: list[str]) -> None:
    _die_with_parent()
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s %(levelname)s [rank {argv[2]}] %(name)s: %(message)s",
    )
    host, port, rank = argv[0], int(argv[1]), int(argv[2])
    authkey = bytes.fromhex(os.environ.pop(_AUTHKEY_ENV))
    conn = Client((host, port), authkey=authkey)
    conn.send(str(rank))
    _serve(conn, rank)


if __name__ == "__main__":
    main(sys.argv[1:])
