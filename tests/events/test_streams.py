"""The event routes on a real server (SQLite, one process): a task driven by hand through
the worker API, its stream, a resume with ``Last-Event-ID``, the key's stream, and the
inputs the routes refuse."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer, running_server
from tests.events.sse import Event, HandWorker, events_of, read_until, submit, webp

LONG_LEASE = {"OMNIFLASH_LEASE_SECONDS": "120", "OMNIFLASH_EVENTS_KEEPALIVE_S": "1"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    tmp: Path = tmp_path_factory.mktemp("events")
    with running_server(tmp, "--workers", "0", **LONG_LEASE) as live:
        yield live


@pytest.fixture(scope="module")
def hand(server: LiveServer) -> HandWorker:
    return HandWorker.create(server, "hand")


def stream(
    client: httpx.Client, path: str, **headers: str
) -> contextlib.AbstractContextManager[httpx.Response]:
    return client.stream("GET", path, headers=headers)


def test_a_task_stream_from_claim_to_end(server: LiveServer, hand: HandWorker) -> None:
    with server.client() as client:
        task_id = submit(client)
        with stream(client, f"/v1/tasks/{task_id}/events") as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["cache-control"] == "no-cache"
            assert response.headers["x-accel-buffering"] == "no"
            events = events_of(response)
            first = next(events)
            assert (first.kind, first.id) == ("status", 0)
            assert first.data == {"task_id": task_id, "status": "pending", "progress": 0}
            claimed, epoch = hand.claim()
            assert claimed == task_id
            assert next(events).data == {"task_id": task_id, "status": "processing", "progress": 0}
            assert hand.heartbeat(task_id, epoch, 30)
            progress = next(events)
            assert progress.kind == "progress"
            assert progress.data["progress"] == 30
            assert progress.data["eta_s"] is None or progress.data["eta_s"] >= 0
            assert hand.heartbeat(task_id, epoch, 30)  # no rise: no event
            assert hand.heartbeat(task_id, epoch, 10)  # a fall: no event either
            assert hand.heartbeat(task_id, epoch, 60)
            assert next(events).data["progress"] == 60
            assert hand.fail(task_id, epoch)
            rest = read_until(events, "end")
            assert [e.kind for e in rest] == ["end"]
            poll = client.get(f"/v1/tasks/{task_id}").json()["data"]
            assert rest[0].data == {"task_id": task_id, "task": poll}
            assert list(events) == []  # the stream ends after the end
        ids = [first.id, progress.id, rest[0].id]
        assert ids == sorted(ids)
        # A finished task's stream sends its end at once, and closes.
        with stream(client, f"/v1/tasks/{task_id}/events") as response:
            done = list(events_of(response))
        assert [e.kind for e in done] == ["end"]
        assert done[0].id == rest[0].id and done[0].data["task"]["status"] == "failed"


def test_a_resume_misses_nothing(server: LiveServer, hand: HandWorker) -> None:
    """A stream that drops mid-task and comes back with ``Last-Event-ID`` gets exactly
    the events a stream that never dropped got."""
    with server.client() as client, server.client() as other:
        task_id = submit(client)
        with stream(other, f"/v1/tasks/{task_id}/events") as steady:
            whole = events_of(steady)
            assert next(whole).kind == "status"
            _, epoch = hand.claim()
            with stream(client, f"/v1/tasks/{task_id}/events") as dropped:
                seen = read_until(events_of(dropped), "status")
            assert seen[0].data["status"] == "processing"
            # Meanwhile, with nobody listening on the dropped stream:
            assert hand.heartbeat(task_id, epoch, 20)
            assert hand.preview(task_id, epoch, webp()).json() == {"held": True}
            assert hand.heartbeat(task_id, epoch, 50)
            with stream(
                client, f"/v1/tasks/{task_id}/events", **{"Last-Event-ID": str(seen[-1].id)}
            ) as resumed:
                again = events_of(resumed)
                missed = [next(again) for _ in range(3)]
                assert hand.heartbeat(task_id, epoch, 80)
                missed.append(next(again))
                assert hand.fail(task_id, epoch)
                missed += read_until(again, "end")
            steady_events = read_until(whole, "end")
    assert [e.kind for e in missed] == ["progress", "preview", "progress", "progress", "end"]
    assert [e.id for e in missed] == sorted({e.id for e in missed})

    # The same events, ids and contents (a preview's URL is signed per send: the rest).
    def same(e: Event) -> tuple[int, str, dict[str, object]]:
        return e.id, e.kind, {k: v for k, v in e.data.items() if k not in ("url", "expires_at")}

    assert [same(e) for e in missed] == [same(e) for e in steady_events[1:]]
    assert steady_events[0].id == seen[-1].id


def test_the_key_stream_sees_every_task(server: LiveServer, hand: HandWorker) -> None:
    with server.client() as client, stream(client, "/v1/events") as response:
        events = events_of(response)
        assert next(events).kind == "comment"  # nothing yet: a keep-alive
        first, second = submit(client, "one"), submit(client, "two")
        task_a, epoch_a = hand.claim()
        task_b, epoch_b = hand.claim()
        assert {task_a, task_b} == {first, second}
        assert hand.heartbeat(task_b, epoch_b, 40)
        assert client.post(f"/v1/tasks/{task_a}/cancel").status_code == 200
        assert hand.fail(task_b, epoch_b)
        got = []
        ends = 0
        for event in events:
            if event.kind == "comment":
                continue
            got.append(event)
            ends += event.kind == "end"
            if ends == 2:
                break
    assert [(e.kind, e.data["task_id"]) for e in got] == [
        ("status", task_a),
        ("status", task_b),
        ("progress", task_b),
        ("end", task_a),
        ("end", task_b),
    ]
    assert got[3].data["task"]["status"] == "cancelled"
    assert [e.id for e in got] == sorted(e.id for e in got)
    assert not hand.heartbeat(task_a, epoch_a, 50)


def test_another_keys_task_and_bad_ids_are_not_found(server: LiveServer) -> None:
    other_key = server.create_key(1)
    with server.client() as client, server.client(other_key) as other:
        task_id = submit(client)
        assert other.get(f"/v1/tasks/{task_id}/events").status_code == 404
        for bad in ("", "%00", "task_%00", "%ED%A0%80", "x" * 5000, "task_" + "Z" * 26):
            response = client.get(f"/v1/tasks/{bad}/events")
            assert response.status_code in (404, 414), (bad, response.status_code)
            assert response.headers["content-type"].startswith("application/json")
        assert client.post(f"/v1/tasks/{task_id}/cancel").status_code == 200


@pytest.mark.parametrize("path", ["/v1/tasks/{task}/events", "/v1/events"])
@pytest.mark.parametrize("value", ["abc", "-1", "1.5", "99999999999999999999", "1e3", "٣"])
def test_a_bad_last_event_id_is_a_400(server: LiveServer, path: str, value: str) -> None:
    """Text, a negative, a fraction, past a BIGINT, and a digit that is not ASCII."""
    with server.client() as client:
        task_id = submit(client)
        headers = {"Last-Event-ID": value.encode()}
        response = client.get(path.format(task=task_id), headers=headers)
        assert response.status_code == 400, response.text
        assert "Last-Event-ID" in response.json()["error"]["message"]
        client.post(f"/v1/tasks/{task_id}/cancel")


def test_an_old_or_empty_last_event_id_replays_everything(server: LiveServer) -> None:
    with server.client() as client:
        task_id = submit(client)
        assert client.post(f"/v1/tasks/{task_id}/cancel").status_code == 200
        for value in ("0", ""):
            with stream(client, f"/v1/tasks/{task_id}/events", **{"Last-Event-ID": value}) as r:
                assert r.status_code == 200
                assert [e.kind for e in events_of(r)] == ["end"]


def test_a_bad_language_or_version_is_a_400(server: LiveServer) -> None:
    with server.client() as client:
        task_id = submit(client)
        assert client.get(f"/v1/tasks/{task_id}/events?language=xx").status_code == 400
        assert client.get("/v1/events?language=%00").status_code == 400
        bad_version = {"X-APIMart-Response-Version": "yesterday"}
        assert client.get("/v1/events", headers=bad_version).status_code == 400
        client.post(f"/v1/tasks/{task_id}/cancel")


def test_the_end_speaks_the_polls_language(server: LiveServer) -> None:
    with server.client() as client:
        task_id = submit(client)
        client.post(f"/v1/tasks/{task_id}/cancel")
        with stream(client, f"/v1/tasks/{task_id}/events?language=zh") as response:
            (end,) = list(events_of(response))
        poll = client.get(f"/v1/tasks/{task_id}?language=zh").json()["data"]
        assert end.data["task"] == poll
        assert poll["error"]["message"].startswith("已取消")


def test_the_end_speaks_the_polls_response_version(server: LiveServer) -> None:
    """Opened with ``X-APIMart-Response-Version: 2026-07-27``, a cancelled task's end reads
    as that version's poll does (``failed``, ``task_cancelled``), so its clients stop."""
    version = {"X-APIMart-Response-Version": "2026-07-27"}
    with server.client() as client:
        task_id = submit(client)
        client.post(f"/v1/tasks/{task_id}/cancel")
        with stream(client, f"/v1/tasks/{task_id}/events", **version) as response:
            (end,) = list(events_of(response))
        poll = client.get(f"/v1/tasks/{task_id}", headers=version).json()["data"]
        assert end.data["task"] == poll
        assert (poll["status"], poll["error"]["code"]) == ("failed", "task_cancelled")


def test_streams_need_a_key(server: LiveServer) -> None:
    assert httpx.get(server.url + "/v1/events").status_code == 401
    assert httpx.get(server.url + "/v1/tasks/task_x/events").status_code == 401
