"""Hostile text at every HTTP door, on SQLite and PostgreSQL: a 400 in the dialect's shape.

For each dialect and each text field: an empty value, a huge one, a NUL, a lone surrogate,
a C0 control, DEL and a C1 control.  Each is refused in the dialect's own error shape,
naming the field, before anything is charged or stored (balance = ledger, no task, no
blob).  Ids and cursors that cannot be ours, and another key's ids, are answered before
any SQL; the store answers normally afterwards.  Rows stored before these rules (a
prompt with a lone surrogate) are served, with U+FFFD in its place.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from omniflash.api.app import create_app
from omniflash.contract import parse_generation_request
from omniflash.settings import Settings
from omniflash.store import KeyInfo, Store
from omniflash.store.schema import tasks

pytestmark = pytest.mark.timeout(120)

HOSTILE = {
    "nul": "a\x00b",
    "surrogate": "a\ud800b",
    "low surrogate": "\udc00",
    "c0": "a\x01b",
    "escape": "a\x1b[31mb",
    "del": "a\x7fb",
    "c1": "a\x85b",
}
HUGE = "x" * 300_000


class Door:
    """The app on one store, with two funded keys."""

    def __init__(self, client: TestClient, store: Store, data_dir: Path) -> None:
        self.client = client
        self.store = store
        self.data_dir = data_dir
        self.key, self.info = store.keys.create("mine", 10_000, 100_000, 100)
        self.other_key, self.other = store.keys.create("other", 10_000, 100_000, 100)

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}"}

    def post_json(self, path: str, body: Any, **headers: str) -> Any:
        # ``json.dumps`` writes a lone surrogate as the ``\ud800`` escape, as a client would.
        return self.client.post(
            path,
            content=json.dumps(body),
            headers={**self.auth(), "Content-Type": "application/json", **headers},
        )

    def post_multipart(self, path: str, fields: dict[str, str]) -> Any:
        """``fields`` as multipart/form-data text parts (UTF-8), as the ``openai`` SDK sends."""
        boundary = "hostile-boundary"
        parts = [
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
            + value.encode()
            + b"\r\n"
            for name, value in fields.items()
        ]
        return self.client.post(
            path,
            content=b"".join(parts) + f"--{boundary}--\r\n".encode(),
            headers={
                **self.auth(),
                "Content-Type": f"multipart/form-data; boundary={boundary}",
            },
        )

    def untouched(self, info: KeyInfo | None = None) -> None:
        """Nothing charged or stored for the key: its balance is its start, as its ledger says."""
        info = info or self.info
        fresh = self.store.keys.get(info.id)
        assert fresh.balance == info.balance == self.store.keys.ledger_sum(info.id)
        with self.store.db.read() as conn:
            count = conn.execute(
                tasks.select().where(tasks.c.key_id == info.id).with_only_columns(tasks.c.id)
            ).all()
        assert count == []
        blobs = [p for p in (self.data_dir / "blobs").rglob("*") if p.is_file()]
        assert blobs == [], blobs


@pytest.fixture
def door(store: Store, tmp_path: Path) -> Iterator[Door]:
    settings = Settings(data_dir=tmp_path / "data", workers=0)
    with TestClient(create_app(settings, store=store, start_workers=False)) as client:
        yield Door(client, store, settings.data_dir)


def ext_error(response: Any, field: str, status: int = 400) -> None:
    """The Omni-Flash-Ext shape, naming ``field``."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "request_id"}, body
    assert set(body["error"]) - {"param"} == {"code", "message", "type"}
    assert isinstance(body["error"].get("param", "-"), str) and body["error"].get("param", "-")
    assert body["error"]["code"] == status
    assert field in body["error"]["message"], (field, body)
    assert len(body["error"]["message"]) < 400


def openai_error(response: Any, param: str | None, status: int = 400) -> None:
    """OpenAI's shape, ``param`` naming the field."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["param"] == param, body
    assert len(body["error"]["message"]) < 400


EXT_BASE = {"model": "Omni-Flash-Ext", "prompt": "a cat", "duration": 4}


def ext_body(field: str, text: str) -> tuple[dict[str, Any], str]:
    """A valid submit with ``text`` in ``field``; and the name the error must give."""
    body: dict[str, Any] = dict(EXT_BASE)
    if field in ("image_urls", "video_urls"):
        body.pop("duration")
        body[field] = [f"https://example.com/{text}.png"]
        return body, f"{field}[0]"
    if field == "callback_url":
        body[field] = f"https://example.com/{text}"
    elif field == "prompt":
        body[field] = f"a cat {text}"
    else:
        body[field] = text
    return body, field


EXT_FIELDS = [
    "prompt",
    "negative_prompt",
    "image_urls",
    "video_urls",
    "callback_url",
    "resolution",
    "aspect_ratio",
    "generation_type",
    "model",
]


@pytest.mark.parametrize("kind", HOSTILE)
def test_ext_submit_refuses_bad_text_in_every_field(door: Door, kind: str) -> None:
    for field in EXT_FIELDS:
        body, name = ext_body(field, HOSTILE[kind])
        ext_error(door.post_json("/v1/videos/generations", body), name)
        # The same with the dated response version, and as a key of an object.
        ext_error(
            door.post_json(
                "/v1/videos/generations", body, **{"X-APIMart-Response-Version": "2026-07-27"}
            ),
            name,
        )
    ext_error(door.post_json("/v1/videos/generations", {**EXT_BASE, HOSTILE[kind]: 1}), "key")
    door.untouched()


def test_ext_submit_refuses_empty_and_huge_text(door: Door) -> None:
    for body, field in (
        ({**EXT_BASE, "prompt": ""}, "prompt"),
        ({**EXT_BASE, "prompt": " \n\t "}, "prompt"),
        ({**EXT_BASE, "prompt": HUGE}, "prompt"),
        ({**EXT_BASE, "model": ""}, "model"),
        ({**EXT_BASE, "model": HUGE}, "model"),
        ({**EXT_BASE, "resolution": HUGE}, "resolution"),
        ({**EXT_BASE, "callback_url": HUGE}, "callback_url"),
        ({**EXT_BASE, "image_urls": [""], "duration": 4}, "image_urls[0]"),
        ({**EXT_BASE, "image_urls": [HUGE]}, "image_urls[0]"),
    ):
        ext_error(door.post_json("/v1/videos/generations", body), field)
    door.untouched()


def test_ext_idempotency_key_stays_visible_ascii(door: Door) -> None:
    for value in ("a b", "é", "x" * 192):
        response = door.client.post(
            "/v1/videos/generations",
            json=EXT_BASE,
            headers={**door.auth(), "Idempotency-Key": value.encode()},  # type: ignore[dict-item]
        )
        ext_error(response, "Idempotency-Key")
    door.untouched()


OPENAI_BASE = {"prompt": "a cat", "seconds": "4", "size": "1280x720"}
OPENAI_FIELDS = ["prompt", "model", "seconds", "size", "callback_url", "input_reference", "user"]


def openai_body(field: str, text: str) -> dict[str, Any]:
    body = dict(OPENAI_BASE)
    if field in ("callback_url", "input_reference"):
        body[field] = f"https://example.com/{text}"
    elif field == "prompt":
        body[field] = f"a cat {text}"
    else:
        body[field] = text
    return body


@pytest.mark.parametrize("kind", HOSTILE)
def test_openai_create_refuses_bad_text_in_every_field(door: Door, kind: str) -> None:
    for field in OPENAI_FIELDS:
        body = openai_body(field, HOSTILE[kind])
        openai_error(door.post_json("/v1/videos", body), field)
        if any("\ud800" <= c <= "\udfff" for c in HOSTILE[kind]):
            continue  # multipart text is UTF-8: it cannot carry a lone surrogate
        openai_error(door.post_multipart("/v1/videos", body), field)
    door.untouched()


def test_openai_multipart_refuses_bad_names_and_undecodable_text(door: Door) -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
    for name, filename in (("input_reference", "a\x00.png"), ("input_reference", "a\x1b.png")):
        response = door.client.post(
            "/v1/videos", data=OPENAI_BASE, files={name: (filename, png)}, headers=door.auth()
        )
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] in ("input_reference", "multipart field name")
    # A lone surrogate's UTF-8 form (ED A0 80) is not UTF-8: refused, never a 500.
    boundary = "b0undary"
    raw = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="prompt"\r\n\r\n'.encode()
        + b"a \xed\xa0\x80 cat\r\n"
        + f"--{boundary}--\r\n".encode()
    )
    response = door.client.post(
        "/v1/videos",
        content=raw,
        headers={**door.auth(), "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert 400 <= response.status_code < 500, response.text
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    door.untouched()


def test_openai_create_refuses_empty_and_huge_text(door: Door) -> None:
    for body, param in (
        ({**OPENAI_BASE, "prompt": ""}, "prompt"),
        ({**OPENAI_BASE, "prompt": HUGE}, "prompt"),
        ({**OPENAI_BASE, "model": HUGE}, "model"),
        ({**OPENAI_BASE, "size": HUGE}, "size"),
        ({**OPENAI_BASE, "seconds": 10**200}, "seconds"),
        ({**OPENAI_BASE, "seconds": "9" * 5000}, "seconds"),
        ({**OPENAI_BASE, "seed": "9" * 5000}, "seed"),
        ({**OPENAI_BASE, "callback_url": HUGE}, "callback_url"),
        ({**OPENAI_BASE, "input_reference": ""}, "input_reference"),
    ):
        openai_error(door.post_json("/v1/videos", body), param)
    door.untouched()


# -- ids and cursors ---------------------------------------------------------------------------

BAD_IDS = ["%00", "task_%00", "task_01JH00000000000000000000%00", "%ED%A0%80", "x" * 3000, "'"]


def other_task(door: Door) -> str:
    response = door.client.post(
        "/v1/videos/generations", json=EXT_BASE, headers=door.auth(door.other_key)
    )
    assert response.status_code == 200, response.text
    return str(response.json()["data"][0]["task_id"])


def test_ids_that_cannot_be_ours_and_other_keys_ids_are_404(door: Door) -> None:
    theirs = other_task(door)
    for task_id in [*BAD_IDS, theirs]:
        ext_error(door.client.get(f"/v1/tasks/{task_id}", headers=door.auth()), "task", 404)
        ext_error(door.client.get(f"/v1/tasks/{task_id}?language=zh", headers=door.auth()), "", 404)
        ext_error(door.client.post(f"/v1/tasks/{task_id}/cancel", headers=door.auth()), "", 404)
        for method, path in (
            ("GET", f"/v1/videos/{task_id}"),
            ("DELETE", f"/v1/videos/{task_id}"),
            ("GET", f"/v1/videos/{task_id}/content"),
            ("POST", f"/v1/videos/{task_id}/remix"),
        ):
            kwargs: dict[str, Any] = {"json": {"prompt": "a dog"}} if method == "POST" else {}
            response = door.client.request(method, path, headers=door.auth(), **kwargs)
            openai_error(response, None, 404)
    # the other key's task is untouched, and its owner still sees it
    answer = door.client.get(f"/v1/tasks/{theirs}", headers=door.auth(door.other_key))
    assert answer.status_code == 200 and answer.json()["data"]["status"] == "pending"
    door.untouched()


def test_cursors_that_cannot_be_ours_are_400(door: Door) -> None:
    theirs = other_task(door)
    for after in ["%00", "task_%00", "%ED%A0%80", "x" * 3000, "1 OR 1=1"]:
        ext_error(door.client.get(f"/v1/tasks?after={after}", headers=door.auth()), "after")
        openai_error(door.client.get(f"/v1/videos?after={after}", headers=door.auth()), "after")
    # A well-formed id is a fine cursor, even another key's: it only says where to start.
    for path in (f"/v1/tasks?after={theirs}", f"/v1/videos?after={theirs}&order=asc"):
        response = door.client.get(path, headers=door.auth())
        assert response.status_code == 200, response.text
    assert door.client.get("/v1/tasks?after=", headers=door.auth()).status_code == 200
    door.untouched()


def test_the_store_answers_normally_after_bad_ids(door: Door) -> None:
    for task_id in BAD_IDS:
        door.client.get(f"/v1/tasks/{task_id}", headers=door.auth())
        door.client.get(f"/v1/videos?after={task_id}", headers=door.auth())
    response = door.post_json("/v1/videos/generations", EXT_BASE)
    assert response.status_code == 200, response.text
    task_id = response.json()["data"][0]["task_id"]
    assert door.client.get(f"/v1/tasks/{task_id}", headers=door.auth()).status_code == 200
    assert door.client.get(f"/v1/videos/{task_id}", headers=door.auth()).status_code == 200
    listed = door.client.get("/v1/tasks", headers=door.auth()).json()["data"]
    assert [t["id"] for t in listed] == [task_id]


# -- Bearer tokens -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header", ["Bearer é", "Bearer \xff\xfe", "Bearer a\tb", "Bearer ", "Basic abc", "Bearer a b"]
)
def test_a_malformed_bearer_token_is_401_at_every_door(door: Door, header: str) -> None:
    sent = {"Authorization": header.encode("latin-1")}
    ext_error(door.client.get("/v1/tasks", headers=sent), "", 401)
    openai_error(door.client.get("/v1/videos", headers=sent), None, 401)
    assert door.client.get("/worker/v1/config", headers=sent).status_code == 401
    assert door.client.post("/mcp", json={}, headers=sent).status_code == 401


# -- rows stored before the rules --------------------------------------------------------------


def test_a_stored_lone_surrogate_is_served_as_a_replacement_character(door: Door) -> None:
    spec = parse_generation_request(EXT_BASE)
    spec = spec.__class__(**{**spec.__dict__, "prompt": "a \ud800 cat"})
    task = door.store.tasks.submit(
        door.info, spec, millicredits=1000, estimated_time=10, seed=1
    ).task
    for path in (
        f"/v1/tasks/{task.id}",
        "/v1/tasks",
        f"/v1/videos/{task.id}",
        "/v1/videos",
    ):
        response = door.client.get(path, headers=door.auth())
        assert response.status_code == 200, (path, response.text)
        assert "a \ufffd cat" in response.text, path


def test_an_upload_url_with_a_hostile_signature_is_not_a_500(door: Door) -> None:
    """``image_urls`` naming this server's upload URLs: their expiry and signature are the
    client's text too.  A URL whose signature cannot be ours is fetched like any URL (here
    a private address, refused at fetch time), never a 500 at submit."""
    base = "https://example.com/v1/files/uploads/x.png"
    for query in (
        "expires=%C2%B2&sig=abc",  # "²": a digit to str.isdigit, not to int
        f"expires={'9' * 5000}&sig=abc",
        "expires=9999999999&sig=%C3%A9",
        f"expires=9999999999&sig={'0' * 64}",
    ):
        body = {**EXT_BASE, "image_urls": [f"{base}?{query}"]}
        response = door.post_json("/v1/videos/generations", body)
        assert response.status_code in (200, 400), (query, response.text)
    assert door.store.keys.get(door.info.id).balance == door.store.keys.ledger_sum(door.info.id)


@pytest.mark.parametrize("filename", ["cat\x00.png", "cat\ud800.png", "cat\x1b.png", "c\x85.png"])
def test_an_upload_filename_follows_the_text_rules(door: Door, filename: str) -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
    boundary = "upload-boundary"
    raw = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="'.encode()
        + filename.encode("utf-8", "surrogatepass")
        + b'"\r\nContent-Type: image/png\r\n\r\n'
        + png
        + f"\r\n--{boundary}--\r\n".encode()
    )
    response = door.client.post(
        "/v1/uploads/images",
        content=raw,
        headers={**door.auth(), "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"
    door.untouched()
