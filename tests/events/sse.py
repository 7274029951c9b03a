"""Reading server-sent events in tests, and driving a task by hand through the worker API."""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Iterator
from typing import Any

import httpx
from PIL import Image

from tests.conftest import LiveServer

__all__ = ["Event", "HandWorker", "events_of", "read_until", "webp"]


@dataclasses.dataclass(frozen=True)
class Event:
    """One server-sent event; ``kind == "comment"`` for a comment line (``data`` empty)."""

    id: int
    kind: str
    data: dict[str, Any]


def events_of(response: httpx.Response) -> Iterator[Event]:
    """The events of a streamed response, as they arrive (comments too)."""
    fields: dict[str, str] = {}
    for line in response.iter_lines():
        if line.startswith(":"):
            yield Event(-1, "comment", {"text": line[1:].strip()})
            continue
        if line == "":
            if fields:
                yield Event(int(fields["id"]), fields["event"], json.loads(fields["data"]))
                fields = {}
            continue
        name, _, value = line.partition(":")
        fields[name] = value.removeprefix(" ")


def read_until(events: Iterator[Event], kind: str, *, comments: bool = False) -> list[Event]:
    """Events up to and including the first of ``kind`` (comments left out unless asked)."""
    got = []
    for event in events:
        if event.kind == "comment" and not comments:
            continue
        got.append(event)
        if event.kind == kind:
            return got
    raise AssertionError(f"the stream ended before a {kind} event: {got}")


def webp(size: tuple[int, int] = (160, 90), colour: tuple[int, int, int] = (40, 120, 200)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="WEBP", quality=70)
    return buffer.getvalue()


@dataclasses.dataclass
class HandWorker:
    """A remote worker played by the test: claims, heartbeats, previews, fails by hand."""

    server: LiveServer
    token: str

    @classmethod
    def create(cls, server: LiveServer, name: str) -> HandWorker:
        out = server.cli("workers", "create", "--name", name)
        return cls(server, out.stdout.strip().splitlines()[-1])

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}", **kwargs.pop("headers", {})}
        return httpx.post(
            self.server.url + "/worker/v1" + path, headers=headers, timeout=30, **kwargs
        )

    def claim(self) -> tuple[str, int]:
        response = self.post("/claim", json={"owner": "hand", "wait_s": 5})
        assert response.status_code == 200, response.text
        lease = response.json()["lease"]
        return str(lease["task_id"]), int(lease["epoch"])

    def heartbeat(self, task_id: str, epoch: int, progress: int) -> bool:
        response = self.post(
            f"/tasks/{task_id}/heartbeat", json={"epoch": epoch, "progress": progress}
        )
        assert response.status_code == 200, response.text
        return bool(response.json()["held"])

    def preview(self, task_id: str, epoch: int, data: bytes) -> httpx.Response:
        return self.post(
            f"/tasks/{task_id}/previews",
            params={"epoch": epoch},
            content=data,
            headers={"Content-Type": "image/webp"},
        )

    def fail(self, task_id: str, epoch: int, *, retry: bool = False) -> bool:
        response = self.post(
            f"/tasks/{task_id}/fail", json={"epoch": epoch, "message": "broke", "retry": retry}
        )
        assert response.status_code == 200, response.text
        return bool(response.json()["held"])


def submit(client: httpx.Client, prompt: str = "a cat") -> str:
    body = {"model": "Omni-Flash-Ext", "prompt": prompt, "duration": 4}
    response = client.post("/v1/videos/generations", json=body)
    assert response.status_code == 200, response.text
    return str(response.json()["data"][0]["task_id"])
