"""The engine process: what it tells its worker, and when it ends itself."""

from __future__ import annotations

import threading
from pathlib import Path

from omniflash.contract import parse_generation_request
from omniflash.settings import Settings
from omniflash.worker.supervisor import EngineProcess


def test_an_engine_that_lost_its_device_fails_the_task_and_exits(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, engine="tests.worker.fake_engines:LostDevice")
    process = EngineProcess(settings, "worker-0")
    try:
        assert process.ensure(threading.Event())
        # The engine says how long a cancel may take before its process is killed.
        assert process.cancel_grace_s == 42.0
        spec = parse_generation_request({"model": "Omni-Flash-Ext", "prompt": "a boat"})
        assert process.conn is not None and process.proc is not None
        process.conn.send(
            (
                "job",
                {
                    "task_id": "task_x",
                    "spec": spec.to_json(),
                    "seed": 1,
                    "workdir": str(tmp_path / "work"),
                    "output_path": str(tmp_path / "work" / "out.mp4"),
                },
            )
        )
        assert process.conn.poll(60)
        assert process.conn.recv() == (
            "error",
            "engine",
            "CUDA error: an illegal memory access was encountered",
        )
        # Then the process ends, so that the worker starts a fresh one for the next task.
        process.proc.join(timeout=30)
        assert process.proc.exitcode == 0
        assert process.ensure(threading.Event()) and process.starts == 2
    finally:
        process.kill()
