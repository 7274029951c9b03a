"""Arbitrary JSON bodies through the submit routes of both dialects: 200 or 4xx, never 5xx.

The whole HTTP path runs (reading, parsing, the Idempotency-Key hash, charging, the
answer's encoding), and the money stays exact: every key's balance is its ledger's sum.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from omniflash.api.app import create_app
from omniflash.settings import Settings
from omniflash.store import Store
from tests.test_contract_properties import (
    EXT_FIELDS,
    OPENAI_FIELDS,
    hostile_text,
    json_values,
    mutated,
    valid_ext,
)

pytestmark = pytest.mark.timeout(120)

BODIES = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


class App:
    def __init__(self, client: TestClient, store: Store) -> None:
        self.client = client
        self.store = store
        self.key, self.info = store.keys.create("fuzz", 10**12, 10**9, 10**9)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def post(self, path: str, body: Any, idempotency_key: str | None) -> Any:
        headers = {"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"}
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        return self.client.post(path, content=json.dumps(body), headers=headers)

    def money_is_exact(self) -> None:
        fresh = self.store.keys.get(self.info.id)
        assert fresh.balance == self.store.keys.ledger_sum(self.info.id)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    data = Path(tmp_path_factory.mktemp("bodies")) / "data"
    settings_ = Settings(data_dir=data, workers=0, allow_private_urls=False)
    store = Store(settings_.database_url)
    with TestClient(
        create_app(settings_, store=store, start_workers=False), raise_server_exceptions=False
    ) as client:
        yield App(client, store)
    store.close()


def answered(response: Any) -> None:
    assert response.status_code < 500, response.text
    body = response.json()
    if response.status_code >= 400:
        assert body["error"]["message"]


# Mostly fresh keys: a reused key with another body is a 422 before the rest is reached.
idempotency_keys = st.one_of(st.none(), st.uuids().map(str), st.just("reused"))
SURROGATE_PROMPT = {"prompt": "a \ud800 cat"}


@BODIES
@given(st.one_of(json_values, mutated(valid_ext(), EXT_FIELDS)), idempotency_keys)
@example({"model": "Omni-Flash-Ext", **SURROGATE_PROMPT}, None)
@example({"model": "Omni-Flash-Ext", "prompt": "a", "callback_url": "https://x.y/\x00"}, "nul")
def test_any_json_to_the_ext_submit(app: App, body: Any, idempotency_key: str | None) -> None:
    response = app.post("/v1/videos/generations", body, idempotency_key)
    answered(response)
    if response.status_code == 200:  # what was accepted can be read back, in both dialects
        task_id = response.json()["data"][0]["task_id"]
        answered(app.client.get(f"/v1/tasks/{task_id}", headers=app.auth))
        answered(app.client.get(f"/v1/videos/{task_id}", headers=app.auth))
    app.money_is_exact()


@BODIES
@given(
    st.one_of(
        json_values,
        mutated(st.just({"prompt": "a cat", "seconds": "4", "size": "720x1280"}), OPENAI_FIELDS),
        st.dictionaries(st.sampled_from(OPENAI_FIELDS), hostile_text, max_size=5),
    ),
    idempotency_keys,
)
@example(SURROGATE_PROMPT, None)
@example({**SURROGATE_PROMPT, "seconds": "8"}, "surrogate")
def test_any_json_to_the_openai_create(app: App, body: Any, idempotency_key: str | None) -> None:
    answered(app.post("/v1/videos", body, idempotency_key))
    app.money_is_exact()
