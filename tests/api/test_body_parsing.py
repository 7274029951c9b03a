"""The off-the-loop pieces of parsing a large body agree with the one-call versions."""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

import anyio
import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

from omniflash.api.app import create_app
from omniflash.api.bodies import body_limit, off_loop
from omniflash.api.intake import check_inline_sizes
from omniflash.api.submission import idempotency_request
from omniflash.contract import parse_generation_request
from omniflash.data_uris import decoded, inline_size, valid_base64
from omniflash.errors import PayloadTooLarge
from omniflash.settings import Settings
from omniflash.store import Store

MIB = 1024 * 1024
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="


def strict(payload: str) -> bool:
    try:
        base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


@given(st.text(alphabet=ALPHABET + " \n-_", max_size=64))
def test_sliced_base64_checks_agree_with_one_strict_decode(payload: str) -> None:
    assert valid_base64(payload) == strict(payload)


@pytest.mark.parametrize("size", [MIB * 3 // 4 - 1, MIB * 3 // 4, MIB * 3 // 4 + 1, 3 * MIB + 5])
def test_sliced_base64_across_slice_edges(size: int) -> None:
    payload = base64.b64encode(bytes(range(256)) * (size // 256) + b"x" * (size % 256)).decode()
    assert valid_base64(payload) and decoded(payload) == base64.b64decode(payload)
    assert inline_size("data:image/png;base64," + payload) == size
    # A stray character or padding inside a later slice is refused, as by one strict decode.
    for broken in (payload[: MIB + 100] + "*" + payload[MIB + 101 :], payload[:-8] + "==AA" * 2):
        assert not valid_base64(broken) and not strict(broken)


def test_the_idempotency_hash_of_long_strings_tells_bodies_apart() -> None:
    image = "data:image/png;base64," + "A" * (100 * 1024)
    one = idempotency_request("k", {"prompt": "p", "image_urls": [image]})
    again = idempotency_request("k", {"image_urls": [image], "prompt": "p"})
    other = idempotency_request("k", {"prompt": "p", "image_urls": [image[:-1] + "B"]})
    assert one is not None and again is not None and other is not None
    assert one.body_hash == again.body_hash != other.body_hash
    short = idempotency_request("k", {"prompt": "p", "image_urls": ["https://x/a.png"]})
    assert short is not None and short.body_hash != one.body_hash


def test_an_inline_image_over_the_limit_is_refused_by_its_size() -> None:
    payload = base64.b64encode(b"\0" * (MIB + 1)).decode()
    spec = parse_generation_request(
        {
            "model": "Omni-Flash-Ext",
            "prompt": "p",
            "image_urls": ["data:image/png;base64," + payload],
        }
    )
    check_inline_sizes(spec, MIB + 1)
    with pytest.raises(PayloadTooLarge, match=r"^image_urls\[0\]: the inline image is larger"):
        check_inline_sizes(spec, MIB)


def test_limits_by_route() -> None:
    s = Settings(max_upload_bytes=MIB, max_body_bytes=4 * MIB, max_result_bytes=9 * MIB)
    assert body_limit(s, "POST", "/v1/videos/generations", "application/json").size == 4 * MIB
    assert body_limit(s, "POST", "/v1/videos", "application/json").size == 4 * MIB
    assert body_limit(s, "POST", "/v1/videos", "multipart/form-data; b=x").size < 2 * MIB
    assert body_limit(s, "POST", "/v1/uploads/images", "multipart/form-data").size < 2 * MIB
    assert body_limit(s, "PUT", "/worker/v1/tasks/t/result", "").size == 9 * MIB
    assert body_limit(s, "POST", "/worker/v1/claim", "application/json").size == MIB
    assert body_limit(s, "POST", "/worker/v1/tasks/t/previews", "image/webp").size == 256 * 1024
    assert body_limit(s, "POST", "/mcp", "application/json").size > MIB * 4 // 3


def test_off_loop_gives_the_same_answer_either_way() -> None:
    async def both() -> tuple[int, int]:
        return await off_loop(10, len, "abc"), await off_loop(10 * MIB, len, "abc")

    assert anyio.run(both) == (3, 3)


def test_a_body_refused_inside_a_parser_that_answers_its_own_error_is_413(tmp_path: Path) -> None:
    """FastAPI answers 400 when reading a model's body fails; the limit's 413 stands."""
    settings = Settings(data_dir=tmp_path / "data", workers=0)
    store = Store(settings.database_url)
    try:
        token, _ = store.workers.create("w")
        with TestClient(create_app(settings, store=store, start_workers=False)) as client:
            body = b'{"owner": "w", "wait_s": 0, "pad": "' + b"a" * (2 * MIB) + b'"}'
            answer = client.post(
                "/worker/v1/claim",
                content=iter([body[i : i + 65536] for i in range(0, len(body), 65536)]),
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            )
            assert answer.status_code == 413, answer.text
            assert answer.json()["error"]["message"] == "The request body is larger than 1 MB"
            assert answer.headers["connection"] == "close"
            small = client.post(
                "/worker/v1/claim",
                json={"owner": "w", "wait_s": 0},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert small.status_code == 204
    finally:
        store.close()
