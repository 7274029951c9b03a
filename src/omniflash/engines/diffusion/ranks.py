"""The ranks that run one task across a worker's GPUs (``gpus_per_task`` above 1).

The engine process, on the GPUs ``omniflash.engines.diffusion.devices`` gave it, is
rank 0 of a ``torch.distributed`` group (NCCL; gloo on a CPU) and starts ranks 1 … N − 1
as processes of its own (``python -m omniflash.engines.diffusion.rank_main``), each on
its GPU with the same recipes.  Every call is sent to every rank and runs on all of them
in lockstep: the same seed, the same latents; diffusers' context parallelism
(``ContextParallelConfig``, Ulysses or ring attention) splits each denoising
transformer's sequence across the ranks.  Rank 0 alone reports progress and writes the
video.  A cancel is agreed at every step (one all-reduce of a flag), so all ranks stop
at the same step.  An input every rank refuses fails on all of them before the first
step, and only the task fails.  A rank that fails on its own leaves the others waiting
in a collective: the engine process then exits and its worker starts it, and its
ranks, again.

A transformer without a context-parallel plan in diffusers (VACE's) runs whole on
every rank: correct, but no faster than on one GPU.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import pickle
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from multiprocessing.connection import Connection, Listener
from typing import TYPE_CHECKING, Any

from omniflash.engines.diffusion.speed import denoisers

if TYPE_CHECKING:
    from omniflash.settings import Settings

__all__ = ["AUTHKEY_ENV", "RankGroup", "agree_stop", "init_distributed", "parallelize"]

log = logging.getLogger(__name__)

RANK_MAIN = "omniflash.engines.diffusion.rank_main"
"""The module each further rank runs (named, not imported: it imports the engine)."""

COLLECTIVE_TIMEOUT_S = 600
"""A rank that never reaches a collective fails the others after this long."""
AUTHKEY_ENV = "OMNIFLASH_RANK_AUTHKEY"
"""Rank 0 hands each rank the key of its connection here, not on the command line."""


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
            env = dict(os.environ, **{AUTHKEY_ENV: authkey.hex()})
            for rank in range(1, self.world):
                command = [sys.executable, "-m", RANK_MAIN, str(host), str(listen_port), str(rank)]
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
