"""The maintenance thread: each job on its own, so a failing reap does not stop the sweep."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from omniflash.blobs import LocalStorage
from omniflash.settings import Settings
from omniflash.store import Store
from omniflash.worker import Maintenance
from omniflash.worker.wake import Waker

pytestmark = pytest.mark.timeout(60)


def test_a_reap_that_fails_every_pass_does_not_stop_the_sweep(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, sweep_interval_s=0)
    store = Store(settings.database_url)
    seen: list[tuple[str, str]] = []
    store.tasks.error_hooks.append(lambda job, item: seen.append((job, item)))

    def broken(max_attempts: int, now: float | None = None) -> int:
        raise RuntimeError("the database refuses this query")

    store.tasks.reap = broken  # type: ignore[method-assign]
    # An interrupted result upload, old enough for the orphan sweep of the first pass.
    temp = tmp_path / "uploads"
    temp.mkdir()
    part = temp / "task_x.1.abc.part"
    part.write_bytes(b"half")
    old = time.time() - 10 * 24 * 3600
    os.utime(part, (old, old))
    maintenance = Maintenance(settings, store, LocalStorage(tmp_path / "blobs"), Waker())
    maintenance.start()
    try:
        deadline = time.monotonic() + 30
        while maintenance.sweeps < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        maintenance.close()
        store.close()
    assert maintenance.sweeps >= 2, "the sweep ran although every reap failed"
    assert not part.exists()
    assert ("reap", "-") in seen
