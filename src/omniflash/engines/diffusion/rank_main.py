"""A rank's process, 1 … N − 1: join the group, load the recipes, run each call rank 0 sends.

Rank 0 (the engine process) starts it as ``python -m
omniflash.engines.diffusion.rank_main HOST PORT RANK`` (``ranks.RankGroup``); it
connects back to rank 0, learns the settings and the group, loads a ``DiffusersEngine``
of its own and then runs every pipeline call in lockstep with rank 0 until told to stop.
"""

from __future__ import annotations

import logging
import os
import pickle
import sys
from multiprocessing.connection import Client, Connection

from omniflash.engines.diffusion.engine import DiffusersEngine
from omniflash.engines.diffusion.guidance import PromptCache
from omniflash.engines.diffusion.ranks import AUTHKEY_ENV, init_distributed
from omniflash.errors import TaskCancelled
from omniflash.procs import die_with_parent

__all__ = ["main"]

log = logging.getLogger(__name__)


def _serve(conn: Connection, rank: int) -> None:
    """A rank's life: join the group, load the recipes, then run each call rank 0 sends."""
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
    """``HOST PORT RANK``: rank 0's listener and this process's rank."""
    # A rank goes when its engine process goes, however that ends.
    die_with_parent()
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s %(levelname)s [rank {argv[2]}] %(name)s: %(message)s",
    )
    host, port, rank = argv[0], int(argv[1]), int(argv[2])
    authkey = bytes.fromhex(os.environ.pop(AUTHKEY_ENV))
    conn = Client((host, port), authkey=authkey)
    conn.send(str(rank))
    _serve(conn, rank)


if __name__ == "__main__":
    main(sys.argv[1:])
