"""The file sweeps: the expired files of ended tasks, and files no task will ever own.

``sweep_expired_files`` deletes a task's result, inputs and preview frames
(``previews/<task>/``, ``delete_previews``) when its time is up; the task's events go
with them (``mark_result_deleted``).
``sweep_orphans`` finds, by age, what nothing else would delete: per-attempt results of
workers that died after uploading (``results/{task}.{epoch}.mp4`` that are no task's
result), inputs of submits that made no task (``inputs/<ulid>/…``), uploads whose URLs
expired (``uploads/…``), and the ``.part`` files of interrupted writes.  Before deleting
a result or an input it asks the task table, so a live task's files are never touched.

Each task is handled on its own: an error is logged with its id, reported to the error
hooks (``omniflash_maintenance_errors_total{job="sweep"}``) and the sweep goes on; only an
unreachable bucket stops a pass, counted once (the next one tries again).
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

from omniflash.blobs import Storage, StorageUnavailable
from omniflash.ids import ulid_time
from omniflash.input_blobs import blob_inputs
from omniflash.settings import Settings
from omniflash.store import PREVIEWS_PREFIX, Store

__all__ = [
    "SUBMIT_WINDOW_S",
    "delete_previews",
    "orphan_age_s",
    "sweep_expired_files",
    "sweep_orphans",
]

log = logging.getLogger(__name__)

_RESULT = re.compile(r"results/task_[0-9A-Z]{26}\.[0-9]+\.mp4")
SUBMIT_WINDOW_S = 3600.0
"""The longest between a submit storing its inputs and its task row being written."""


def orphan_age_s(settings: Settings) -> float:
    """How old a file must be before the orphan sweep may judge it: past any attempt's
    time limit and lease, and past a submit still storing its inputs, with room to spare."""
    return settings.task_timeout_s + settings.lease_s + SUBMIT_WINDOW_S


def delete_previews(storage: Storage, task_id: str) -> int:
    """Delete every preview frame of ``task_id`` (``previews/<task_id>/``); returns how many."""
    keys = list(storage.keys_older(f"{PREVIEWS_PREFIX}{task_id}/", time.time() + 86400))
    for key in keys:
        storage.delete(key)
    return len(keys)


def sweep_expired_files(store: Store, storage: Storage, ttl_s: float) -> int:
    """Delete the files (result, inputs, previews) of ended tasks whose time is up;
    returns how many tasks."""
    count = 0
    for task in store.tasks.expired(ttl_s):
        try:
            for key in [task.result_key, *blob_inputs(task.spec).values()]:
                if key:
                    storage.delete(key)
            delete_previews(storage, task.id)
        except StorageUnavailable:
            raise  # the bucket is down: every task would fail alike; the pass is counted
        except Exception:
            # Marked all the same, so that it does not come back every pass ahead of the
            # others; whatever file it left is an orphan the orphan sweep finds by age.
            log.exception("deleting the files of %s failed; moving on", task.id)
            store.tasks.report_error("sweep", task.id)
        try:
            store.tasks.mark_result_deleted(task.id)
        except Exception:
            log.exception("marking the files of %s deleted failed; moving on", task.id)
            store.tasks.report_error("sweep", task.id)
            continue
        count += 1
    return count


def sweep_orphans(
    store: Store,
    storage: Storage,
    *,
    older_than_s: float,
    upload_ttl_s: float,
    temp_dir: Path | None = None,
    now: float | None = None,
    since: float | None = None,
) -> int:
    """Delete files older than ``older_than_s`` that no task owns; returns how many.

    Uploads go ``older_than_s`` after their URL expired (``upload_ttl_s``): a submit
    copies the uploads it names, so an expired upload is no task's.  ``temp_dir`` is the
    API's directory of result uploads in progress (``<data dir>/uploads``).  With
    ``since``, only files that came of age after it are judged (``now - older_than_s``
    was ``since`` at the last pass): a file is judged a few times in its life, not at
    every pass, and the task table is asked about new files only.
    """
    now = time.time() if now is None else now
    before = now - older_than_s
    deleted = 0
    deleted += _sweep_parts(temp_dir, before) if temp_dir is not None else 0
    old_uploads = since - upload_ttl_s if since is not None else None
    for key in storage.keys_older("uploads/", before - upload_ttl_s, old_uploads):
        deleted += _delete(store, storage, key)

    results = list(storage.keys_older("results/", before, since))
    keep = store.files.results_in_use([k for k in results if not k.endswith(".part")])
    for key in results:
        # A name this server does not give is left alone, like a result still in use.
        if key.endswith(".part") or (_RESULT.fullmatch(key) and key not in keep):
            deleted += _delete(store, storage, key)

    deleted += _sweep_previews(store, storage, before, since)

    judged: dict[str, bool] = {}
    for key in storage.keys_older("inputs/", before, since):
        prefix = "/".join(key.split("/", 2)[:2])
        made_at = ulid_time(prefix.removeprefix("inputs/"))
        if key.endswith(".part"):
            deleted += _delete(store, storage, key)
            continue
        if made_at is None:
            continue  # not a name this server gives: leave it to the operator
        if prefix not in judged:
            try:
                judged[prefix] = store.files.inputs_in_use(prefix, made_at, SUBMIT_WINDOW_S)
            except Exception:
                log.exception("could not tell whether %s is in use; keeping it", prefix)
                store.tasks.report_error("sweep", prefix)
                judged[prefix] = True
        if not judged[prefix]:
            deleted += _delete(store, storage, key)
    if deleted:
        log.info("deleted %d files that no task owns", deleted)
    return deleted


def _sweep_previews(store: Store, storage: Storage, before: float, since: float | None) -> int:
    """Preview frames whose task's files are deleted, or whose task does not exist."""
    frames: dict[str, list[str]] = {}
    for key in storage.keys_older(PREVIEWS_PREFIX, before, since):
        task_id = key.removeprefix(PREVIEWS_PREFIX).split("/", 1)[0]
        frames.setdefault(task_id, []).append(key)
    if not frames:
        return 0
    try:
        live = store.files.tasks_with_files(list(frames))
    except Exception:
        log.exception("could not tell which previews are in use; keeping them")
        store.tasks.report_error("sweep", PREVIEWS_PREFIX)
        return 0
    return sum(
        _delete(store, storage, key)
        for task_id, keys in frames.items()
        if task_id not in live
        for key in keys
    )


def _delete(store: Store, storage: Storage, key: str) -> int:
    try:
        storage.delete(key)
    except StorageUnavailable:
        raise  # the bucket is down: the pass stops, and is counted once
    except Exception:
        log.exception("deleting the orphan %s failed; moving on", key)
        store.tasks.report_error("sweep", key)
        return 0
    return 1


def _sweep_parts(directory: Path, before: float) -> int:
    """``*.part`` files of uploads that never finished (their request died with a process)."""
    if not directory.is_dir():
        return 0
    deleted = 0
    for path in directory.glob("*.part"):
        try:
            if path.stat().st_mtime < before:
                path.unlink()
                deleted += 1
        except FileNotFoundError:
            continue
    return deleted
