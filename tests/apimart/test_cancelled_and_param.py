"""What APIMart's clients met: a cancelled task in response version 2026-07-27, and
``param`` in the seed's error envelope.

APIMart's own client is not published (no package on PyPI or npm), so
``ApimartPoller`` below is a re-implementation of its polling rule, stated here as
such: it polls ``GET /v1/tasks/{id}`` with ``X-APIMart-Response-Version: 2026-07-27``
and stops only at ``completed`` (the result) or ``failed`` (the error), the two end
states APIMart's task documentation names results and errors for; any other status,
``cancelled`` included, is polled again.  The test gives it a bounded number of polls,
so that "for ever" shows as running out of them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer, running_server

pytestmark = pytest.mark.timeout(120)

VERSION = "X-APIMart-Response-Version"
BODY = {"model": "Omni-Flash-Ext", "prompt": "a cat", "duration": 4}


@dataclasses.dataclass
class ApimartPoller:
    """APIMart's client's polling rule (a re-implementation): ends at completed or failed."""

    http: httpx.Client
    version: str | None = "2026-07-27"
    max_polls: int = 20
    polls: int = 0

    def wait(self, task_id: str) -> dict[str, Any] | None:
        """The task's data at its end, or ``None`` when it never read as ended."""
        headers = {VERSION: self.version} if self.version else {}
        for _ in range(self.max_polls):
            self.polls += 1
            data = self.http.get(f"/v1/tasks/{task_id}", headers=headers).json()["data"]
            if data["status"] in ("completed", "failed"):
                return dict(data)
        return None


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    # No workers: a submitted task stays pending until it is cancelled.
    with running_server(tmp_path_factory.mktemp("apimart"), "--workers", "0") as live:
        yield live


def cancelled_task(http: httpx.Client) -> str:
    task_id = str(http.post("/v1/videos/generations", json=BODY).json()["data"][0]["task_id"])
    assert http.post(f"/v1/tasks/{task_id}/cancel").json()["data"]["status"] == "cancelled"
    return task_id


def test_apimart_client_stops_polling_a_cancelled_task(server: LiveServer) -> None:
    with server.client() as http:
        task_id = cancelled_task(http)
        poller = ApimartPoller(http)
        ended = poller.wait(task_id)
        assert ended is not None and poller.polls == 1, "one look, and it is over"
        assert ended["status"] == "failed" and ended["error"]["code"] == "task_cancelled"
        assert ended["id"] == task_id and ended.get("result") is None
        # The default version keeps the truth, and there the rule would never stop.
        plain = http.get(f"/v1/tasks/{task_id}").json()["data"]
        assert plain["status"] == "cancelled" and plain["error"]["code"] == "task_cancelled"
        old = ApimartPoller(http, version=None, max_polls=5)
        assert old.wait(task_id) is None and old.polls == 5
        # The list and the cancel's own answer read the same in each version.
        page = http.get("/v1/tasks", headers={VERSION: "2026-07-27"}).json()["data"]
        assert {t["status"] for t in page if t["id"] == task_id} == {"failed"}
        assert {t["status"] for t in http.get("/v1/tasks").json()["data"]} == {"cancelled"}
        fresh = http.post("/v1/videos/generations", json=BODY).json()["data"][0]["task_id"]
        answer = http.post(f"/v1/tasks/{fresh}/cancel", headers={VERSION: "2026-07-27"})
        assert answer.json()["data"]["status"] == "failed", answer.text


def test_the_version_reads_a_localised_cancel_and_refuses_bad_headers(server: LiveServer) -> None:
    with server.client() as http:
        task_id = cancelled_task(http)
        zh = http.get(f"/v1/tasks/{task_id}?language=zh", headers={VERSION: "2026-07-27"})
        data = zh.json()["data"]
        assert data["status"] == "failed" and data["error"]["message"].startswith("已取消")
        # (A NUL cannot travel in a header: HTTP clients refuse to send one.)
        for bad in ("", "x" * 10_000, "2026-07-\udc80"):
            headers = {VERSION: bad.encode("utf-8", "surrogateescape")}
            answer = http.get(f"/v1/tasks/{task_id}", headers=headers)
            if bad == "":
                assert answer.json()["data"]["status"] == "cancelled", "no version: the seed's"
            else:
                assert answer.status_code == 400, (bad[:20], answer.text)
        other = server.create_key(10)
        with server.client(other) as stranger:
            seen = stranger.get(f"/v1/tasks/{task_id}", headers={VERSION: "2026-07-27"})
            assert seen.status_code == 404, "another key's task is not there, in any version"


@pytest.mark.parametrize(
    "value",
    ["", "x" * 100_000, "https://example.com/\x00hook", "https://example.com/\udc80"],
    ids=["empty", "huge", "nul", "lone-surrogate"],
)
def test_apimart_errors_name_the_param_at_fault(server: LiveServer, value: str) -> None:
    body = {**BODY, "callback_url": value}
    content = httpx.Request("POST", "/", json=body).content if "\udc80" not in value else None
    with server.client() as http:
        if content is None:  # a lone surrogate cannot be UTF-8: sent as its JSON escape
            raw = '{"model": "Omni-Flash-Ext", "prompt": "a cat", "duration": 4, '
            raw += '"callback_url": "https://example.com/\\udc80"}'
            answer = http.post(
                "/v1/videos/generations",
                content=raw.encode(),
                headers={"Content-Type": "application/json"},
            )
        else:
            answer = http.post("/v1/videos/generations", json=body)
    if value == "":
        assert answer.status_code == 200, "an empty callback_url is no callback_url"
        return
    assert answer.status_code in (400, 413), answer.text
    error = answer.json()["error"]
    if answer.status_code == 400:
        assert error["param"] == "callback_url", error
        assert set(error) == {"code", "message", "type", "param"}


def test_an_error_without_a_field_at_fault_has_no_param(server: LiveServer) -> None:
    with server.client() as http:
        answer = http.post("/v1/videos/generations", json={**BODY, "duration": 7})
        assert answer.status_code == 400 and "param" not in answer.json()["error"]
        missing = http.get("/v1/tasks/task_missing")
        assert missing.status_code == 404 and "param" not in missing.json()["error"]
