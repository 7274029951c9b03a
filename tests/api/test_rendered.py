"""``Services.rendered``: a task's view encoded once per row object and view, anew for a
changed row, and every time when the bucket signs the result URLs."""

from __future__ import annotations

import dataclasses
import types
from typing import Any

import orjson
import pytest

from omniflash.api.deps import Services
from omniflash.contract import parse_generation_request
from omniflash.store import TaskRow, TaskStatus

pytestmark = pytest.mark.timeout(30)

SPEC = parse_generation_request({"model": "Omni-Flash-Ext", "prompt": "a harbour", "duration": 4})


def _task(**changes: Any) -> TaskRow:
    row = TaskRow.from_mapping(
        {
            "id": "task_01JH0000000000000000000000",
            "key_id": 1,
            "status": "pending",
            "progress": 0,
            "spec": SPEC.to_json(),
            "seed": 1,
            "credits": 1000,
            "estimated_time": 3,
            "created_at": 1.0,
            "started_at": None,
            "completed_at": None,
            "error": None,
            "result_key": None,
            "result_expires_at": None,
            "result_deleted": False,
            "attempts": 0,
            "lease_epoch": 0,
            "info": "{}",
        }
    )
    return dataclasses.replace(row, **changes)


def _services(presigner: object | None = None) -> Any:
    return types.SimpleNamespace(presigner=presigner, _rendered={})


def test_a_row_object_is_rendered_once_per_view() -> None:
    services = _services()
    renders: list[str] = []

    def render(task: TaskRow, view: str) -> Any:
        def go() -> dict[str, Any]:
            renders.append(view)
            return {"id": task.id, "status": task.status.value, "view": view}

        return go

    pending = _task()
    first = Services.rendered(services, pending, ("a",), render(pending, "a"))
    assert Services.rendered(services, pending, ("a",), render(pending, "a")) == first
    assert orjson.loads(first) == {"id": pending.id, "status": "pending", "view": "a"}
    assert renders == ["a"]
    Services.rendered(services, pending, ("b",), render(pending, "b"))  # another view
    assert renders == ["a", "b"]
    # The same task changed is another row object: rendered anew, never the old bytes.
    running = _task(status=TaskStatus.PROCESSING, progress=40)
    assert running == _task(status=TaskStatus.PROCESSING, progress=40)
    answer = Services.rendered(services, running, ("a",), render(running, "a"))
    assert orjson.loads(answer)["status"] == "processing"
    assert renders == ["a", "b", "a"]


def test_presigned_results_are_rendered_every_time() -> None:
    services = _services(presigner=object())
    renders: list[int] = []
    task = _task()

    def render() -> dict[str, int]:
        renders.append(1)
        return {"n": len(renders)}

    assert Services.rendered(services, task, ("a",), render) == b'{"n":1}'
    assert Services.rendered(services, task, ("a",), render) == b'{"n":2}'
