"""Signed webhooks from a live server, verified with the ``standardwebhooks`` package."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import pytest
import standardwebhooks
from fastapi.testclient import TestClient

from omniflash import webhooks
from omniflash.api.app import create_app
from omniflash.blobs import UrlSigner
from omniflash.contract import parse_generation_request
from omniflash.settings import Settings
from omniflash.store import Store
from omniflash.webhooks import Outbox, WebhookSender
from tests.conftest import LiveServer, running_server
from tests.integrations.conftest import Receiver

pytestmark = pytest.mark.timeout(120)


def submit(server: LiveServer, callback_url: str, **fields: object) -> str:
    body = {"model": "Omni-Flash-Ext", "prompt": "a kite", "duration": 4}
    body.update(fields, callback_url=callback_url)
    with server.client() as http:
        response = http.post("/v1/videos/generations", json=body)
    assert response.status_code == 200, response.text
    return str(response.json()["data"][0]["task_id"])


def secret_of(server: LiveServer) -> str:
    with server.client() as http:
        secret = http.get("/v1/account").json()["data"]["webhook_secret"]
    assert isinstance(secret, str) and secret.startswith("whsec_")
    return secret


def test_completed_task_posts_the_task_signed(server: LiveServer, receiver: Receiver) -> None:
    secret = secret_of(server)
    task_id = submit(server, receiver.url)
    [hook] = receiver.wait_for(task_id)
    payload = standardwebhooks.Webhook(secret).verify(hook.body, hook.headers)
    assert payload["type"] == "task.completed"
    with server.client() as http:
        assert payload["data"] == http.get(f"/v1/tasks/{task_id}").json()["data"]
    assert payload["timestamp"].endswith("Z")
    assert hook.headers["webhook-id"].startswith("msg_")
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(secret).verify(hook.body.replace(b"kite", b"kitE"), hook.headers)


def test_failed_attempts_are_retried_with_the_same_id(
    server: LiveServer, receiver: Receiver
) -> None:
    receiver.status_for = lambda _id, attempt: 500 if attempt < 3 else 200
    task_id = submit(server, receiver.url)
    hooks = receiver.wait_for(task_id, count=3)
    time.sleep(1.5)  # a fourth would come by now if the third's 200 had not been taken
    hooks = receiver.for_task(task_id)
    assert [h.status for h in hooks] == [500, 500, 200]
    assert len({h.headers["webhook-id"] for h in hooks}) == 1
    assert hooks[1].at - hooks[0].at >= 0.2  # OMNIFLASH_WEBHOOK_RETRY_DELAYS=0.2
    secret = secret_of(server)
    bodies = {standardwebhooks.Webhook(secret).verify(h.body, h.headers)["type"] for h in hooks}
    assert bodies == {"task.completed"}


def test_cancelled_video_from_the_openai_dialect(server: LiveServer, receiver: Receiver) -> None:
    with server.client() as http:
        created = http.post(
            "/v1/videos",
            json={
                "prompt": "a long one",
                "seconds": "10",
                "size": "1920x1080",
                "callback_url": receiver.url,
            },
        ).json()
        assert http.post(f"/v1/tasks/{created['id']}/cancel").status_code == 200
    [hook] = receiver.wait_for(created["id"])
    payload = standardwebhooks.Webhook(secret_of(server)).verify(hook.body, hook.headers)
    assert payload["type"] == "task.cancelled"
    assert payload["data"]["status"] == "cancelled" and payload["data"]["cost"] == 0


def test_rotation_signs_with_old_and_new_secret(server: LiveServer, receiver: Receiver) -> None:
    old = secret_of(server)
    with server.client() as http:
        rotated = http.post("/v1/account/webhook-secret").json()["data"]
    new = rotated["webhook_secret"]
    assert new != old and new == secret_of(server)
    assert rotated["previous_secret_expires_at"] - time.time() == pytest.approx(24 * 3600, abs=60)
    task_id = submit(server, receiver.url)
    [hook] = receiver.wait_for(task_id)
    assert len(hook.headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        standardwebhooks.Webhook(secret).verify(hook.body, hook.headers)


def test_sigkill_loses_no_webhook(tmp_path: Path, receiver: Receiver) -> None:
    """Attempts fail, the server is killed, and the restarted one delivers, same id."""
    receiver.status_for = lambda _id, _n: 503
    with running_server(
        tmp_path,
        "--workers",
        "1",
        OMNIFLASH_WEBHOOK_RETRY_DELAYS="0.5",
        OMNIFLASH_WEBHOOK_TIMEOUT="2",
    ) as server:
        task_id = submit(server, receiver.url)
        first = receiver.wait_for(task_id)[0]
        server.kill()
        receiver.status_for = lambda _id, _n: 200
        before = len(receiver.for_task(task_id))
        server.start()
        hooks = receiver.wait_for(task_id, count=before + 1)
        assert hooks[-1].status == 200
        assert {h.headers["webhook-id"] for h in hooks} == {first.headers["webhook-id"]}


def test_private_callback_is_refused_without_allow_private(
    tmp_path: Path, receiver: Receiver
) -> None:
    settings = Settings(data_dir=tmp_path / "data", workers=0, allow_private_urls=False)
    store = Store(settings.database_url)
    key, info = store.keys.create("t", 10_000, 1000, 4)
    with TestClient(create_app(settings, store=store, start_workers=False)) as client:
        response = client.post(
            "/v1/videos/generations",
            json={
                "model": "Omni-Flash-Ext",
                "prompt": "x",
                "duration": 4,
                "callback_url": receiver.url,
            },
            headers={"Authorization": f"Bearer {key}"},
        )
        task_id = response.json()["data"][0]["task_id"]
        store.tasks.cancel(task_id, info.id)
        outcomes: list[str] = []
        sender = WebhookSender(settings, store, on_outcome=outcomes.append)
        assert sender.run_once() == 1
        assert sender.run_once() == 0  # given up at once: never retried
    assert outcomes == ["refused"] and receiver.received == []
    [row] = Outbox(store.db).for_task(task_id)
    assert row["state"] == "failed" and "127.0.0.1 is not public" in row["last_error"]
    assert json.loads(row["payload"])["data"]["id"] == task_id


def test_retries_stop_after_retry_for(tmp_path: Path, receiver: Receiver) -> None:
    receiver.status_for = lambda _id, _n: 500
    settings = Settings(
        data_dir=tmp_path / "data",
        workers=0,
        allow_private_urls=True,
        webhook_retry_delays="0.1,0.3",
        webhook_retry_for_s=1.0,
    )
    store = Store(settings.database_url)
    webhooks.install(store, settings, UrlSigner(b"s"))
    _key, info = store.keys.create("t", 10_000, 1000, 4)
    spec = parse_generation_request(
        {"model": "Omni-Flash-Ext", "prompt": "x", "duration": 4, "callback_url": receiver.url}
    )
    task = store.tasks.submit(info, spec, millicredits=1000, estimated_time=1, seed=1).task
    store.tasks.cancel(task.id, info.id)
    outcomes: list[str] = []
    sender = WebhookSender(settings, store, on_outcome=outcomes.append)
    deadline = time.monotonic() + 10
    while "gave_up" not in outcomes and time.monotonic() < deadline:
        sender.run_once()
        time.sleep(0.05)
    [row] = Outbox(store.db).for_task(task.id)
    assert row["state"] == "failed" and row["last_error"] == "HTTP 500"
    assert outcomes[-1] == "gave_up" and set(outcomes[:-1]) == {"retry"}
    # 0.1 s, then 0.3 s repeated, within 1 s of the event: about 4 attempts in all.
    assert 3 <= len(receiver.for_task(task.id)) == row["attempts"] <= 5
    gaps = [b.at - a.at for a, b in itertools.pairwise(receiver.for_task(task.id))]
    assert gaps[0] >= 0.1 and all(g >= 0.3 for g in gaps[1:])
    assert Outbox(store.db).purge(older_than_s=3600) == 0
    assert Outbox(store.db).purge(older_than_s=0) == 1


def test_public_names_are_exported() -> None:
    for name in webhooks.__all__:
        assert getattr(webhooks, name) is not None, name
