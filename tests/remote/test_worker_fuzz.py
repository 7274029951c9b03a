"""Arbitrary bodies, ids and epochs to every ``/worker/v1/`` route: never a 5xx, money exact.

The routes are outside the public OpenAPI document, so Hypothesis drives them here, with
a valid worker token, over a task that token holds, another token's task and made-up
ids.  ``OMNIFLASH_FUZZ_EXAMPLES`` raises the count (CI runs the default).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omniflash.api.app import create_app
from omniflash.settings import Settings
from omniflash.store import Store, TaskStatus
from tests.conftest import _truncate
from tests.plain_reads import tasks_of
from tests.remote.conftest import Api
from tests.store.test_races import assert_money

EXAMPLES = int(os.environ.get("OMNIFLASH_FUZZ_EXAMPLES", "150"))

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
fields = st.sampled_from(
    ["epoch", "progress", "message", "retry", "result", "owner", "wait_s", "duration", "frames"]
)
bodies = (
    st.dictionaries(fields, values, max_size=5)
    | values
    # Near-valid: a live epoch, and a result of plausible numbers with hostile extras.
    | st.builds(
        lambda epoch, result, extra: {"epoch": epoch, "result": result, **extra},
        st.integers(0, 4),
        st.fixed_dictionaries(
            {},
            optional={
                "duration": st.integers(-5, 20) | st.floats(),
                "frames": st.integers(-5, 300),
                "width": st.sampled_from([1280, 64, 0]),
                "fps": st.sampled_from([24, 0, 24.0001]),
                "note": values,
            },
        ),
        st.dictionaries(fields, values, max_size=2),
    )
)
epochs = st.one_of(
    st.integers(min_value=-(2**40), max_value=2**40).map(str),
    st.sampled_from(["NaN", "inf", "1e400", "", "%00", "1.5", "０"]),
)
ROUTES = ["heartbeat", "complete", "fail", "release"]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def books(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Api]:
    """The app on SQLite or PostgreSQL, its money checked once the fuzz is over."""
    settings = Settings(data_dir=tmp_path / "data", workers=0, lease_s=5.0, poll_interval_s=0.2)
    if request.param == "postgres":
        settings = dataclasses.replace(
            settings, database_url_override=request.getfixturevalue("postgres_url")
        )
    store = Store(settings.database_url)
    if request.param == "postgres":
        _truncate(store)
    try:
        with TestClient(create_app(settings, store=store, start_workers=False)) as client:
            key, _ = store.keys.create("t", 10_000_000, 100_000, 10)
            token, _ = store.workers.create("gpu-1")
            api = Api(client, store, settings, key, token)
            yield api
            assert_money(api.store)
    finally:
        store.close()


def _json_text(value: Any) -> str:
    # Python's encoder writes NaN and Infinity and escapes lone surrogates: a hostile body.
    return json.dumps(value)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    data=st.data(),
    body=bodies,
    epoch=epochs,
    route=st.sampled_from([*ROUTES, "inputs", "result", "claim"]),
)
def test_no_worker_request_answers_5xx(
    books: Api, data: st.DataObject, body: Any, epoch: str, route: str
) -> None:
    api = books
    mine = _held_task(api)
    theirs = data.draw(
        st.sampled_from([mine, "task_01ARZ3NDEKTSV4RRFFQ69G5FAV", "task_%00", "x" * 300, "ä"])
    )
    text = _json_text(body)
    if route == "claim":
        response = _send(api, "POST", "/claim", content=text)
    elif route == "inputs":
        response = _send(api, "GET", f"/tasks/{theirs}/inputs/0", params={"epoch": epoch})
    elif route == "result":
        response = _send(
            api, "PUT", f"/tasks/{theirs}/result", params={"epoch": epoch}, content=text
        )
    else:
        response = _send(api, "POST", f"/tasks/{theirs}/{route}", content=text)
    assert response.status_code < 500, (route, body, epoch, response.text)
    if response.status_code >= 400:
        assert set(response.json()["error"]) == {"code", "message", "type"}


def _send(api: Api, method: str, path: str, **kwargs: Any) -> Any:
    headers = {"Authorization": f"Bearer {api.token}", "Content-Type": "application/json"}
    return api.client.request(method, "/worker/v1" + path, headers=headers, **kwargs)


def _held_task(api: Api) -> str:
    """A task the fuzzing token holds: the one it holds, or a new one claimed now."""
    processing = [
        t
        for t in tasks_of(api.store, api.store.keys.get(1).id, limit=5)
        if t.status is TaskStatus.PROCESSING
    ]
    if processing:
        return processing[0].id
    task_id = api.submit()
    claimed = api.worker("POST", "/claim", json={"owner": "fuzz", "wait_s": 0})
    if claimed.status_code == 200:
        return str(claimed.json()["lease"]["task_id"])
    return task_id


@pytest.mark.postgres
@pytest.mark.parametrize("books", ["postgres"], indirect=True)
def test_worker_calls_survive_dropped_database_connections(books: Api) -> None:
    """Every pooled connection dropped while the database stays up: the next worker call
    runs again on a fresh connection instead of answering 500."""
    api = books
    task_id = api.submit()
    epoch = _send(api, "POST", "/claim", json={"owner": "w"}).json()["lease"]["epoch"]
    calls = [
        ("/heartbeat", {"epoch": epoch, "progress": 10}, True),
        ("/release", {"epoch": epoch}, True),
    ]
    for path, body, held in calls:
        _drop_connections(api)
        answer = _send(api, "POST", f"/tasks/{task_id}{path}", json=body)
        assert answer.status_code == 200 and answer.json() == {"held": held}, answer.text
    _drop_connections(api)
    assert _send(api, "GET", "/config").status_code == 200


def _drop_connections(api: Api) -> None:
    admin = sa.create_engine(api.store.db.engine.url, poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        conn.execute(
            sa.text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
        conn.commit()
    admin.dispose()
