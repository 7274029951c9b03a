"""``/metrics`` parsed with ``prometheus_client``'s own parser; JSON logs with request ids."""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from omniflash.api.app import create_app
from omniflash.logs import JsonFormatter, RedactFilter, request_context
from omniflash.settings import Settings
from tests.conftest import LiveServer, wait_for_task
from tests.integrations.conftest import METRICS_TOKEN

pytestmark = pytest.mark.timeout(120)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(server: LiveServer) -> Samples:
    response = httpx.get(
        server.url + "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics_want_the_token(server: LiveServer) -> None:
    assert httpx.get(server.url + "/metrics").status_code == 401
    wrong = httpx.get(server.url + "/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["type"] == "authentication_error"


def test_a_task_moves_the_counters(server: LiveServer) -> None:
    before = scrape(server)
    with server.client() as http:
        task_id = http.post(
            "/v1/videos/generations",
            json={"model": "Omni-Flash-Ext", "prompt": "counted", "duration": 4},
        ).json()["data"][0]["task_id"]
        wait_for_task(http, task_id)
    after = scrape(server)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    text = {"mode": "text", "resolution": "720p"}
    assert delta("omniflash_tasks_submitted_total", **text) == 1
    assert delta("omniflash_tasks_finished_total", status="completed", **text) == 1
    run = {"engine": "preview", "mode": "text"}
    assert delta("omniflash_task_run_seconds_count", **run) == 1
    assert delta("omniflash_queue_wait_seconds_count", **run) == 1
    assert value(after, "omniflash_task_run_seconds_sum", **run) > 0
    ok = {"method": "GET", "route": "/v1/tasks/{task_id}", "status": "200"}
    assert delta("omniflash_http_requests_total", **ok) >= 1
    assert (
        delta(
            "omniflash_http_request_duration_seconds_count",
            method="POST",
            route="/v1/videos/generations",
        )
        == 1
    )
    assert value(after, "omniflash_queue_depth") == 0
    assert value(after, "omniflash_workers", state="running") == 2
    assert value(after, "omniflash_workers", state="stopped") == 0
    outcomes = {"delivered", "retry", "gave_up", "refused"}
    assert {
        dict(k[1])["outcome"] for k in after if k[0] == "omniflash_webhook_deliveries_total"
    } == outcomes


def test_logs_are_json_with_request_ids_and_no_signed_query(server: LiveServer) -> None:
    with server.client() as http:
        task_id = http.post(
            "/v1/videos/generations",
            json={"model": "Omni-Flash-Ext", "prompt": "logged", "duration": 4},
        ).json()["data"][0]["task_id"]
        done = wait_for_task(http, task_id)
        response = http.get(f"/v1/tasks/{task_id}", headers={"X-Request-Id": "trace-42"})
        assert response.headers["x-request-id"] == "trace-42"
        assert http.get("/v1/account").headers["x-request-id"].startswith("req_")
    url = done["result"]["videos"][0]["url"][0]  # type: ignore[index]
    assert httpx.get(url).status_code == 200
    assert httpx.get(url.replace("sig=", "sig=0")).status_code == 403

    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    assert lines and all(
        {"time", "level", "logger", "message", "request_id", "task_id"} <= set(e) for e in lines
    )
    traced = [e for e in lines if e["request_id"] == "trace-42"]
    assert any(e["logger"] == "uvicorn.access" and e["task_id"] == task_id for e in traced)
    worker = [e for e in lines if e["logger"].startswith("omniflash.worker")]
    assert any(task_id in e["message"] for e in worker)
    # The worker's and the engine process's lines about the task carry its id, as JSON.
    assert any(
        e["logger"].startswith("omniflash.worker") and e["task_id"] == task_id for e in lines
    )
    assert any(e["logger"] == "omniflash.engines.preview" for e in lines)
    assert not any("[engine]" in line for line in server.log().splitlines())
    downloads = [e["message"] for e in lines if "/v1/files/" in e["message"]]
    assert len(downloads) >= 2 and all("?[redacted]" in m for m in downloads)
    assert "sig=" not in server.log() and "expires=" not in server.log()


def test_text_logs_are_redacted_too() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(RedactFilter())
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("tests.redaction")
    logger.addHandler(handler)
    try:
        logger.warning(
            '%s - "%s %s HTTP/%s" %d',
            "127.0.0.1:1",
            "GET",
            "/v1/files/results/t.mp4?expires=9&sig=abc",
            "1.1",
            200,
        )
        logger.warning("presigned https://b.s3.example/k?X-Amz-Signature=f00&X-Amz-Date=1 ok")
        logger.warning("listing /v1/tasks?limit=5")
    finally:
        logger.removeHandler(handler)
    assert out.getvalue().splitlines() == [
        'WARNING tests.redaction: 127.0.0.1:1 - "GET /v1/files/results/t.mp4?[redacted] '
        'HTTP/1.1" 200',
        "WARNING tests.redaction: presigned https://b.s3.example/k?[redacted] ok",
        "WARNING tests.redaction: listing /v1/tasks?limit=5",
    ]


def test_json_formatter_carries_the_context() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello %s", ("you",), None)
    with request_context("req_1"):
        RedactFilter().filter(record)
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "hello you" and entry["request_id"] == "req_1"
    assert entry["task_id"] is None and entry["level"] == "INFO"


def test_gpu_memory_from_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where ``nvidia-smi`` answers, each GPU's memory is a gauge (a stand-in answers here)."""
    smi = tmp_path / "bin" / "nvidia-smi"
    smi.parent.mkdir()
    smi.write_text("#!/bin/sh\necho '0, 1024, 143771'\necho '1, 0, 143771'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{smi.parent}:{os.environ['PATH']}")
    settings = Settings(data_dir=tmp_path / "data", workers=0)
    with TestClient(create_app(settings, start_workers=False)) as client:
        text = client.get("/metrics").text  # no OMNIFLASH_METRICS_TOKEN: open
    samples = {
        (s.name, s.labels.get("gpu")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("omniflash_gpu_memory_used_bytes", "0")] == 1024 * 1024 * 1024
    assert samples[("omniflash_gpu_memory_used_bytes", "1")] == 0
    assert samples[("omniflash_gpu_memory_total_bytes", "1")] == 143771 * 1024 * 1024
