"""The sans-I/O event stream: the SSE parser on bytes cut anywhere, the event model, and
the core's flows that follow a task's events (driven by hand, no I/O)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from omniflash.client import EventsUnavailable, NotFoundError, RetryPolicy, Task, WaitPolicy
from omniflash.client.core import ClientCore
from omniflash.client.effects import Close, Emit, Flow, Open, Opened, Read, Report, Send, Sleep
from omniflash.client.following import SILENCE_S
from omniflash.client.sse import SSEMessage, SSEParser
from omniflash.client.task_events import TaskEvent
from tests.client.stubs import error_body, task_body

STREAM = (
    "\ufeff: keep-alive\r\n"
    'id: 1\r\nevent: status\r\ndata: {"task_id": "t", "status": "processing"}\r\n\r\n'
    ": a comment between events\n"
    'id: 2\revent: progress\rdata: {"task_id": "t",\rdata:  "progress": 40}\r\r'
    "retry: 1500\n"
    'id: 3\x00bad\nevent: preview\ndata: {"caption": "ünïcødé ✓ 🎬"}\n\n'
    "id\n"
    "data\n\n"
    "event: ignored-without-data\n\n"
    'id: 4\nevent: end\ndata:{"task_id": "t", "task": {"status": "completed"}}\n\n'
    "id: 5\ndata: incomplete, never dispatched"
).encode()
EXPECTED = [
    SSEMessage("status", '{"task_id": "t", "status": "processing"}', "1"),
    SSEMessage("progress", '{"task_id": "t",\n "progress": 40}', "2"),
    SSEMessage("preview", '{"caption": "ünïcødé ✓ 🎬"}', "2"),
    SSEMessage("message", "", ""),
    SSEMessage("end", '{"task_id": "t", "task": {"status": "completed"}}', "4"),
]


def parse(chunks: list[bytes]) -> tuple[list[SSEMessage], SSEParser]:
    parser = SSEParser()
    out: list[SSEMessage] = []
    for chunk in chunks:
        out += parser.feed(chunk)
    return out, parser


def test_the_parser_reads_the_stream_whole() -> None:
    messages, parser = parse([STREAM])
    assert messages == EXPECTED
    assert parser.retry_ms == 1500
    assert parser.last_event_id == "4", "an event's id counts once the event is dispatched"


@pytest.mark.parametrize("cut", range(1, len(STREAM)))
def test_the_parser_reads_the_stream_cut_anywhere(cut: int) -> None:
    assert parse([STREAM[:cut], STREAM[cut:]])[0] == EXPECTED


def test_the_parser_reads_the_stream_a_byte_at_a_time() -> None:
    assert parse([bytes([b]) for b in STREAM])[0] == EXPECTED


def test_a_cr_at_a_chunk_end_is_one_line_end_with_the_next_lf() -> None:
    messages, _ = parse([b"data: a\r", b"\n", b"\r", b"\n"])
    assert messages == [SSEMessage("message", "a", "")]
    # Without the LF, a CR alone ends the line: two CRs dispatch the event.
    messages, _ = parse([b"data: b\r", b"\r", b"data: c\r\r"])
    assert messages == [SSEMessage("message", "b", ""), SSEMessage("message", "c", "")]


def test_huge_data_a_nul_and_a_lone_surrogate_in_the_stream() -> None:
    huge = "x" * 1_000_000
    payload = f"data: {huge}\ndata: a\x00b\n\n".encode() + b"data: \xed\xa0\x80\n\n"
    messages, _ = parse([payload[i : i + 4096] for i in range(0, len(payload), 4096)])
    assert messages[0].data == f"{huge}\na\x00b"
    assert messages[1].data == "\ufffd" * 3, "bytes that are not UTF-8 read as replacements"
    assert TaskEvent.from_message(messages[1]) is None, "data that is not JSON is skipped"


def test_the_event_model() -> None:
    end_task = {"id": "t", "status": "cancelled", "progress": 30}
    end = TaskEvent.from_message(
        SSEMessage("end", json.dumps({"task_id": "t", "task": end_task}), "9")
    )
    assert end is not None and (end.id, end.kind, end.task_id, end.status) == (
        "9",
        "end",
        "t",
        "cancelled",
    )
    assert end.progress == 30 and isinstance(end.task, Task) and end.task.finished
    preview = {"task_id": "t", "index": 2, "url": "http://h/p.webp", "progress": 55.5}
    event = TaskEvent.from_message(SSEMessage("preview", json.dumps(preview), "4"))
    assert event is not None and event.preview_url == "http://h/p.webp" and event.progress == 55
    assert event.task is None and event.status is None
    odd = TaskEvent.from_message(SSEMessage("later", '{"task_id": 7, "eta_s": 12}', "5"))
    assert odd is not None and odd.task_id == "" and odd.eta_s == 12.0
    assert TaskEvent.from_message(SSEMessage("status", "[1, 2]", "6")) is None


# -- the core's flows, driven by hand -------------------------------------------------------------


def core(**retry: Any) -> ClientCore:
    policy = RetryPolicy(backoff=0.01, **retry)
    return ClientCore("http://api.test", "of_key", retry=policy, wait=WaitPolicy(0, 0, 60))


def opened(status: int = 200, body: Any = None, kind: str = "text/event-stream") -> Opened:
    if body is None:
        return Opened(httpx.Response(status, headers={"content-type": kind}), handle=None)
    return Opened(httpx.Response(status, json=body), handle=None)


def sse(event_id: int, kind: str, **data: Any) -> bytes:
    return f"id: {event_id}\nevent: {kind}\ndata: {json.dumps(data)}\n\n".encode()


def test_events_resume_after_a_drop_with_last_event_id() -> None:
    flow: Flow[Any] = core().events("task/A")
    first = next(flow)
    assert isinstance(first, Open)
    assert first.url == "http://api.test/v1/tasks/task%2FA/events"
    assert first.headers["Accept"] == "text/event-stream" and "Last-Event-ID" not in first.headers
    assert first.headers["Authorization"] == "Bearer of_key"
    assert first.read_timeout == SILENCE_S, "no deadline: a silent stream counts as dropped"
    stream = opened()
    assert flow.send(stream) == Read(stream)
    chunk = b": keep-alive\n\n" + sse(3, "status", task_id="task/A", status="processing")
    emitted = flow.send(chunk[:20])
    assert emitted == Read(stream), "half an event is not handed out"
    emitted = flow.send(chunk[20:] + sse(4, "progress", task_id="task/A", progress=10)[:9])
    assert isinstance(emitted, Emit) and (emitted.event.id, emitted.event.kind) == ("3", "status")
    assert flow.send(None) == Read(stream)
    # The connection drops in the middle of event 4: it is read again, whole, after a resume.
    assert flow.throw(httpx.RemoteProtocolError("peer closed")) == Close(stream)
    assert isinstance(flow.send(None), Sleep)
    again = flow.send(None)
    assert isinstance(again, Open) and again.headers["Last-Event-ID"] == "3"
    stream = opened()
    assert flow.send(stream) == Read(stream)
    emitted = flow.send(sse(4, "progress", task_id="task/A", progress=10) + b"retry: 250\n\n")
    assert isinstance(emitted, Emit) and emitted.event.progress == 10
    assert flow.send(None) == Read(stream)
    # A clean close before the end is a drop too; the server's retry: sets the pause.
    assert flow.send(b"") == Close(stream)
    assert flow.send(None) == Sleep(0.25)
    again = flow.send(None)
    assert isinstance(again, Open) and again.headers["Last-Event-ID"] == "4"
    stream = opened()
    flow.send(stream)
    emitted = flow.send(
        sse(5, "end", task_id="task/A", task={"id": "task/A", "status": "completed"})
    )
    assert isinstance(emitted, Emit) and emitted.event.kind == "end"
    assert flow.send(None) == Close(stream)
    with pytest.raises(StopIteration) as stop:
        flow.send(None)
    assert stop.value.value.id == "5"


def test_events_give_up_after_the_retries_and_raise_the_refusals() -> None:
    flow: Flow[Any] = core(max_retries=1).events("task_A", last_event_id="7")
    assert next(flow).headers["Last-Event-ID"] == "7"
    assert isinstance(flow.throw(httpx.ConnectError("refused")), Sleep)
    assert isinstance(flow.send(None), Open)
    with pytest.raises(Exception, match="refused"):
        flow.throw(httpx.ConnectError("refused"))
    flow = core().events("task_A")
    next(flow)
    with pytest.raises(NotFoundError):
        flow.send(opened(404, error_body(404, "Not found", "not_found_error")))
    flow = core().events("task_A")
    next(flow)
    with pytest.raises(EventsUnavailable) as caught:
        flow.send(opened(405, error_body(405, "Method not allowed", "invalid_request_error")))
    assert caught.value.status_code == 405
    flow = core().events("task_A")
    next(flow)
    with pytest.raises(EventsUnavailable):
        flow.send(opened(kind="application/json"))


def answer(status: int, body: Any) -> httpx.Response:
    return httpx.Response(status, json=body)


def test_wait_follows_events_and_reports_progress() -> None:
    seen: list[tuple[str, int]] = []
    flow: Flow[Any] = core().wait(
        "task_A", on_progress=lambda t: seen.append((t.status, t.progress))
    )
    assert isinstance(next(flow), Open), "a server with events is not polled"
    stream = opened()
    flow.send(stream)
    report = flow.send(sse(1, "status", task_id="task_A", status="processing", progress=0))
    assert isinstance(report, Report)
    report.callback(report.task)
    assert flow.send(None) == Read(stream)
    report = flow.send(sse(2, "progress", task_id="task_A", progress=60, eta_s=3))
    report.callback(report.task)
    flow.send(None)
    failed = {"id": "task_A", "status": "failed", "progress": 60, "error": {"message": "no GPU"}}
    report = flow.send(sse(3, "end", task_id="task_A", task=failed))
    report.callback(report.task)
    assert flow.send(None) == Close(stream)
    with pytest.raises(Exception, match="no GPU"):
        flow.send(None)
    assert seen == [("processing", 0), ("processing", 60), ("failed", 60)]


def test_wait_polls_a_server_without_events_and_remembers_it() -> None:
    client = core()
    flow: Flow[Any] = client.wait("task_A")
    assert isinstance(next(flow), Open)
    look = flow.send(opened(404, error_body(404, "Not found", "not_found_error")))
    assert isinstance(look, Send) and look.url == "http://api.test/v1/tasks/task_A"
    assert flow.send(answer(200, task_body("task_A", "processing", 20))) == Sleep(0)
    assert isinstance(flow.send(None), Send)
    with pytest.raises(StopIteration) as stop:
        flow.send(answer(200, task_body("task_A", "completed", 100)))
    assert stop.value.value.status == "completed"
    assert client.streams.unsupported
    again: Flow[Any] = client.wait("task_B")
    assert next(again) == Sleep(0), "the second wait polls at once"
    # A 404 for a task that is not there is the caller's error, not a server without events.
    fresh = core()
    flow = fresh.wait("task_X")
    next(flow)
    flow.send(opened(404, error_body(404, "Not found", "not_found_error")))
    with pytest.raises(NotFoundError):
        flow.send(answer(404, error_body(404, "Task not found", "not_found_error")))
    assert not fresh.streams.unsupported


def test_wait_polls_when_the_stream_fails_and_keeps_the_deadline() -> None:
    client = core(max_retries=0)
    flow: Flow[Any] = client.wait("task_A", timeout=60)
    deadline_open = next(flow)
    assert isinstance(deadline_open, Open) and deadline_open.read_timeout <= SILENCE_S
    assert flow.throw(httpx.ConnectError("refused")) == Sleep(0)
    assert isinstance(flow.send(None), Send), "polling takes over, within the same deadline"
    assert not client.streams.unsupported, "a failed stream is not a server without events"
    with pytest.raises(Exception, match="did not finish in time"):
        short: Flow[Any] = core().wait("task_A", timeout=0)
        next(short)
