"""Webhook write paths raced by several processes on one PostgreSQL database.

Senders: tasks end with a ``callback_url`` (their outbox rows written by the end hook);
then two processes, each with its own connection pool, run ``WebhookSender`` passes at
the same time until the outbox is drained.  The receiver fails the first attempt of every third
webhook, so retries race too.  Every webhook must arrive exactly as often as it was
answered with a failure plus one, with one ``webhook-id``, and end ``delivered``.

Events: processes cancel, complete and fail the same tasks at once; each task that
ended has exactly one outbox row, for the way it really ended.  Secrets: replicas make
a key's first secret at once (one is made) and rotate it at once (one stays current).
Deletions: several processes delete the same videos; each is deleted by exactly one.
Last, the OpenAI dialect and a webhook through a live server on PostgreSQL.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from omniflash.blobs import UrlSigner
from omniflash.contract import parse_generation_request
from omniflash.errors import Conflict
from omniflash.settings import Settings
from omniflash.store import Store
from omniflash.store.schema import webhook_outbox, webhook_secrets
from omniflash.store.videos import VideoStore
from omniflash.webhooks import WebhookSecrets, WebhookSender, install
from tests.conftest import running_server
from tests.integrations.conftest import Receiver, start_receiver
from tests.plain_reads import tasks_of

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(180)]

TASKS = 120


def _settings(url: str, tmp: str) -> Settings:
    return Settings(
        data_dir=Path(tmp),
        database_url_override=url,
        allow_private_urls=True,
        webhook_retry_delays="0",
        webhook_poll_s=0.02,
        webhook_timeout_s=5,
    )


def _sender(url: str, tmp: str, barrier: Any, results: Any) -> None:
    store = Store(url, migrate=False)
    sender = WebhookSender(_settings(url, tmp), store, concurrency=4)
    barrier.wait()
    idle_since = None
    while idle_since is None or time.monotonic() - idle_since < 1.0:
        if sender.run_once():
            idle_since = None
        elif idle_since is None:
            idle_since = time.monotonic()
        else:
            time.sleep(0.02)
    results.put(sender.sent)
    store.close()


@pytest.fixture
def pg(postgres_url: str) -> Iterator[Store]:
    store = Store(postgres_url)
    with store.db.write() as conn:
        conn.exec_driver_sql(
            "TRUNCATE idempotency, tasks, ledger, "
            "api_keys, worker_tokens, meta RESTART IDENTITY CASCADE"
        )
    try:
        yield store
    finally:
        store.close()


def test_two_senders_deliver_each_attempt_once(
    pg: Store, postgres_url: str, tmp_path: Path
) -> None:
    receiver: Receiver
    receiver, http_server = start_receiver()
    failing: set[str] = set()

    def status_for(msg_id: str, attempt: int) -> int:
        time.sleep(0.01)  # long enough for the two senders' batches to overlap
        return 500 if msg_id in failing and attempt == 1 else 200

    receiver.status_for = status_for
    try:
        settings = _settings(postgres_url, str(tmp_path))
        install(pg, settings, UrlSigner(b"secret"))
        _key, info = pg.keys.create("race", 10**9, 10**6, 10**6)
        spec = parse_generation_request(
            {
                "model": "Omni-Flash-Ext",
                "prompt": "race",
                "duration": 4,
                "callback_url": receiver.url,
            }
        )
        for _ in range(TASKS):
            task = pg.tasks.submit(info, spec, millicredits=1000, estimated_time=1, seed=1).task
            pg.tasks.cancel(task.id, info.id)
        with pg.db.read() as conn:
            ids = list(conn.execute(sa.select(webhook_outbox.c.id)).scalars())
        assert len(ids) == TASKS
        failing.update(ids[::3])

        ctx = mp.get_context("spawn")
        barrier, results = ctx.Barrier(2), ctx.Queue()
        procs = [
            ctx.Process(target=_sender, args=(postgres_url, str(tmp_path), barrier, results))
            for _ in range(2)
        ]
        for p in procs:
            p.start()
        sent = [results.get(timeout=150) for _ in procs]
        for p in procs:
            p.join(30)
            assert p.exitcode == 0
    finally:
        http_server.shutdown()
        http_server.server_close()

    arrivals = Counter(r.headers["webhook-id"] for r in receiver.received)
    expected = {i: 2 if i in failing else 1 for i in ids}
    assert arrivals == expected, "an attempt was sent twice, or a webhook was lost"
    assert sum(sent) == sum(expected.values())
    assert all(s > 0 for s in sent), f"one sender did all the work: {sent}"
    with pg.db.read() as conn:
        states = Counter(conn.execute(sa.select(webhook_outbox.c.state)).scalars())
        attempts = Counter(conn.execute(sa.select(webhook_outbox.c.attempts)).scalars())
    assert states == {"delivered": TASKS}
    assert attempts == {1: TASKS - len(failing), 2: len(failing)}


# -- one event per ended task, whoever ends it -----------------------------------------------


def _ender(
    url: str, tmp: str, key_id: int, leases: list[tuple[str, int]], i: int, start: Any
) -> None:
    store = Store(url, migrate=False)
    install(store, _settings(url, tmp), UrlSigner(b"secret"))  # as create_app does
    try:
        start.wait(60)  # all three ready before any begins: they really race
        for task_id, epoch in leases if i % 2 else leases[::-1]:
            if i == 0:
                with contextlib.suppress(Conflict):  # it ended first another way
                    store.tasks.cancel(task_id, key_id)
            elif i == 1:
                store.tasks.complete(task_id, epoch, result_key=f"results/{task_id}", ttl_s=60)
            else:
                store.tasks.fail(task_id, epoch, "boom", retry=False, max_attempts=1)
    finally:
        store.close()


def test_a_task_ended_by_racing_processes_queues_one_event(
    pg: Store, postgres_url: str, tmp_path: Path
) -> None:
    _key, info = pg.keys.create("race", 10**9, 10**6, 10**6)
    spec = parse_generation_request(
        {
            "model": "Omni-Flash-Ext",
            "prompt": "race",
            "duration": 4,
            "callback_url": "https://hooks.example/x",
        }
    )
    ids = [
        pg.tasks.submit(info, spec, millicredits=1000, estimated_time=1, seed=1).task.id
        for _ in range(60)
    ]
    leases = []
    for _ in ids:
        claim = pg.tasks.claim("w", lease_s=60)
        assert claim is not None
        leases.append((claim.task.id, claim.epoch))
    ctx = mp.get_context("spawn")
    start = ctx.Barrier(3)
    procs = [
        ctx.Process(target=_ender, args=(postgres_url, str(tmp_path), info.id, leases, i, start))
        for i in range(3)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    with pg.db.read() as conn:
        events = conn.execute(sa.select(webhook_outbox.c.task_id, webhook_outbox.c.event)).all()
    statuses = {t.id: t.status.value for t in tasks_of(pg, info.id, limit=100)}
    assert Counter(task for task, _ in events) == dict.fromkeys(ids, 1)
    assert {task: event for task, event in events} == {
        task: f"task.{status}" for task, status in statuses.items()
    }
    assert len(set(statuses.values())) > 1  # the enders really raced


# -- secrets made and rotated by several replicas at once -------------------------------------


def _secret_side(url: str, key_id: int, rotate: bool, _i: int) -> str:
    store = Store(url, migrate=False)
    try:
        secrets = WebhookSecrets(store.db)
        return secrets.rotate(key_id)[0] if rotate else secrets.current(key_id)
    finally:
        store.close()


def test_secrets_made_once_and_rotations_serialised(pg: Store, postgres_url: str) -> None:
    _key, info = pg.keys.create("secrets", 0, 60, 4)
    ctx = mp.get_context("spawn")
    with ctx.Pool(6) as pool:
        made = pool.starmap(_secret_side, [(postgres_url, info.id, False, i) for i in range(6)])
        assert len(set(made)) == 1, "two replicas made two current secrets"
        rotated = pool.starmap(_secret_side, [(postgres_url, info.id, True, i) for i in range(6)])
    assert len(set(rotated)) == 6 and made[0] not in rotated
    with pg.db.read() as conn:
        rows = conn.execute(
            sa.select(webhook_secrets.c.secret, webhook_secrets.c.expires_at).where(
                webhook_secrets.c.key_id == info.id
            )
        ).all()
    current = [s for s, expires in rows if expires is None]
    assert len(rows) == 7 and len(current) == 1 and current[0] in rotated


# -- a video deleted by two requests at once ---------------------------------------------------


def _delete_side(url: str, task_ids: list[str], _i: int) -> int:
    store = Store(url, migrate=False)
    try:
        return sum(VideoStore(store.db).mark_deleted(task_id) for task_id in task_ids)
    finally:
        store.close()


def test_a_video_is_deleted_once(pg: Store, postgres_url: str) -> None:
    _key, info = pg.keys.create("deleter", 10**9, 10**6, 10**6)
    spec = parse_generation_request({"model": "Omni-Flash-Ext", "prompt": "d", "duration": 4})
    ids = [
        pg.tasks.submit(info, spec, millicredits=1000, estimated_time=1, seed=1).task.id
        for _ in range(40)
    ]
    ctx = mp.get_context("spawn")
    with ctx.Pool(4) as pool:
        won = pool.starmap(
            _delete_side, [(postgres_url, ids[:: 1 - 2 * (i % 2)], i) for i in range(4)]
        )
    assert sum(won) == len(ids)
    assert all(VideoStore(pg.db).is_deleted(task_id) for task_id in ids)


# -- the OpenAI dialect and a webhook, live, on PostgreSQL -------------------------------------


@pytest.mark.filterwarnings(
    "ignore:The Sora API is scheduled to permanently shut down:DeprecationWarning"
)
def test_openai_dialect_and_webhook_on_postgres(
    pg: Store, postgres_url: str, tmp_path: Path
) -> None:
    import openai
    import standardwebhooks

    receiver, http_server = start_receiver()
    try:
        with running_server(
            tmp_path, "--workers", "1", OMNIFLASH_DATABASE_URL=postgres_url
        ) as server:
            with server.client() as http:
                secret = http.get("/v1/account").json()["data"]["webhook_secret"]
            with openai.OpenAI(
                base_url=server.url + "/v1", api_key=server.api_key, max_retries=0
            ) as client:
                video = client.videos.create_and_poll(
                    prompt="on postgres",
                    poll_interval_ms=200,
                    extra_body={"callback_url": receiver.url},
                )
                assert video.status == "completed"
                remix = client.videos.poll(
                    client.videos.remix(video.id, prompt="again").id, poll_interval_ms=200
                )
                assert remix.remixed_from_video_id == video.id
                assert [v.id for v in client.videos.list(order="asc")] == [video.id, remix.id]
                assert client.videos.delete(video.id).deleted
                with pytest.raises(openai.NotFoundError):
                    client.videos.retrieve(video.id)
            hooks = receiver.wait_for(video.id) + receiver.wait_for(remix.id)
    finally:
        http_server.shutdown()
        http_server.server_close()
    events = [standardwebhooks.Webhook(secret).verify(h.body, h.headers) for h in hooks]
    assert [(e["type"], e["data"]["id"]) for e in events] == [
        ("task.completed", video.id),
        ("task.completed", remix.id),  # the remix keeps the source's callback_url
    ]
