"""The ``/worker/v1`` endpoints in process: auth, the long poll, epochs, files, settling."""

from __future__ import annotations

import base64
import threading
import time
from typing import Any

import pytest

from omniflash.store import TaskStatus
from tests.remote.conftest import Api, png_data_uri
from tests.remote.videos import mp4_bytes

RESULT = {"frames": 96, "width": 1280, "height": 720, "fps": 24, "duration": 4, "info": {}}


def claim(api: Api, wait_s: float = 0.0) -> dict[str, Any]:
    response = api.worker("POST", "/claim", json={"owner": "w-0", "wait_s": wait_s})
    assert response.status_code == 200, response.text
    lease: dict[str, Any] = response.json()["lease"]
    return lease


def assert_401(response: Any) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["error"]["type"] == "authentication_error"


def test_worker_tokens_and_api_keys_do_not_cross(api: Api) -> None:
    as_worker = {"Authorization": f"Bearer {api.token}"}
    as_key = {"Authorization": f"Bearer {api.key}"}
    assert_401(api.client.get("/v1/tasks", headers=as_worker))
    body = {"model": "Omni-Flash-Ext", "prompt": "a cat"}
    assert_401(api.client.post("/v1/videos/generations", json=body, headers=as_worker))
    assert_401(api.client.post("/worker/v1/claim", json={"owner": "w"}, headers=as_key))
    assert_401(api.client.get("/worker/v1/config", headers=as_key))
    assert_401(api.client.get("/worker/v1/config"))
    assert api.worker("GET", "/config").json()["worker"] == "gpu-1"
    api.store.workers.revoke("gpu-1")
    assert_401(api.worker("GET", "/config"))
    assert_401(api.worker("POST", "/claim", json={"owner": "w"}))


def test_worker_endpoints_stay_out_of_the_public_schema(api: Api) -> None:
    paths = api.client.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith("/worker/")]


def test_claim_long_poll_answers_204_when_nothing_comes(api: Api) -> None:
    started = time.monotonic()
    response = api.worker("POST", "/claim", json={"owner": "w-0", "wait_s": 0.4})
    elapsed = time.monotonic() - started
    assert response.status_code == 204 and response.content == b""
    assert 0.4 <= elapsed < 3.0


def test_claim_long_poll_is_woken_by_a_submit(api: Api) -> None:
    answers: list[tuple[float, Any]] = []

    def long_poll() -> None:
        response = api.worker("POST", "/claim", json={"owner": "w-0", "wait_s": 20})
        answers.append((time.monotonic(), response))

    poller = threading.Thread(target=long_poll)
    poller.start()
    time.sleep(0.5)  # the claim is parked on the waker by now
    submitted = time.monotonic()
    task_id = api.submit()
    poller.join(timeout=20)
    at, response = answers[0]
    print(f"\nlong poll answered {1000 * (at - submitted):.0f} ms after the submit began")
    assert response.status_code == 200 and response.json()["lease"]["task_id"] == task_id
    assert at - submitted < 1.0
    assert api.task(task_id).status is TaskStatus.PROCESSING


def test_a_stale_epoch_changes_nothing(api: Api) -> None:
    task_id = api.submit(image_urls=[png_data_uri()])
    lease = claim(api)
    epoch = lease["epoch"]
    assert epoch == 1 and lease["attempt"] == 1
    stale = epoch + 1
    tasks = f"/tasks/{task_id}"
    for path, body in [
        ("/heartbeat", {"epoch": stale, "progress": 50}),
        ("/fail", {"epoch": stale, "message": "boom", "retry": False}),
        ("/release", {"epoch": stale}),
        ("/complete", {"epoch": stale, "result": RESULT}),
    ]:
        response = api.worker("POST", tasks + path, json=body)
        assert response.status_code == 200 and response.json() == {"held": False}, path
    upload = api.worker("PUT", f"{tasks}/result", params={"epoch": stale}, content=b"x" * 1000)
    assert upload.json() == {"held": False}
    assert not api.client.app.state.services.storage.exists(f"results/{task_id}.{stale}.mp4")  # type: ignore[attr-defined]
    inputs = api.worker("GET", f"{tasks}/inputs/0", params={"epoch": stale})
    assert inputs.status_code == 409 and inputs.json()["error"]["type"] == "conflict_error"
    task = api.task(task_id)
    assert (task.status, task.lease_epoch, task.attempts, task.progress) == (
        TaskStatus.PROCESSING,
        1,
        1,
        0,
    )
    beat = api.worker("POST", f"{tasks}/heartbeat", json={"epoch": epoch, "progress": 40})
    assert beat.json() == {"held": True} and api.task(task_id).progress == 40


def test_inputs_stream_to_the_lease_holder(api: Api) -> None:
    image = png_data_uri((10, 200, 30))
    task_id = api.submit(image_urls=[image])
    lease = claim(api)
    assert lease["spec"]["image_urls"][0].startswith("blob:inputs/")
    tasks = f"/tasks/{task_id}"
    response = api.worker("GET", f"{tasks}/inputs/0", params={"epoch": lease["epoch"]})
    assert response.status_code == 200
    assert response.content == base64.b64decode(image.split(",", 1)[1])
    assert api.worker("GET", f"{tasks}/inputs/1", params={"epoch": 1}).status_code == 404
    assert api.worker("GET", "/tasks/task_nope/inputs/0", params={"epoch": 1}).status_code == 404


def test_upload_then_complete_settles_the_price_and_repeats_safely(api: Api) -> None:
    before = api.balance()
    task_id = api.submit(duration=4)
    lease = claim(api)
    tasks, epoch = f"/tasks/{task_id}", lease["epoch"]
    no_file = api.worker("POST", f"{tasks}/complete", json={"epoch": epoch, "result": RESULT})
    assert no_file.status_code == 400
    video = mp4_bytes()
    upload = api.worker("PUT", f"{tasks}/result", params={"epoch": epoch}, content=video)
    assert upload.json() == {"held": True}
    # The server prices what the file holds: 4 s of 720p.
    done = api.worker("POST", f"{tasks}/complete", json={"epoch": epoch, "result": RESULT})
    assert done.json() == {"held": True}
    task = api.task(task_id)
    assert task.status is TaskStatus.COMPLETED and task.result_key == f"results/{task_id}.1.mp4"
    assert before - api.balance() == api.settings.pricing.millicredits("720p", 4)
    # An answer lost on the way back: the worker asks again and hears the same.
    again = api.worker("PUT", f"{tasks}/result", params={"epoch": epoch}, content=b"video")
    assert again.json() == {"held": True}
    assert api.worker(
        "POST", f"{tasks}/complete", json={"epoch": epoch, "result": RESULT}
    ).json() == {"held": True}
    storage = api.client.app.state.services.storage  # type: ignore[attr-defined]
    assert storage.exists(task.result_key) and storage.size(task.result_key) == len(video)
    public = api.client.get(f"/v1/tasks/{task_id}", headers={"Authorization": f"Bearer {api.key}"})
    url = public.json()["data"]["result"]["videos"][0]["url"][0]
    assert api.client.get(url.split("testserver", 1)[1]).content == video


def test_complete_after_a_cancel_deletes_the_upload_and_refunds_once(api: Api) -> None:
    before = api.balance()
    task_id = api.submit()
    lease = claim(api)
    tasks, epoch = f"/tasks/{task_id}", lease["epoch"]
    assert api.worker("PUT", f"{tasks}/result", params={"epoch": epoch}, content=b"v").json() == {
        "held": True
    }
    cancel = api.client.post(
        f"/v1/tasks/{task_id}/cancel", headers={"Authorization": f"Bearer {api.key}"}
    )
    assert cancel.json()["data"]["status"] == "cancelled"
    beat = api.worker("POST", f"{tasks}/heartbeat", json={"epoch": epoch, "progress": 90})
    assert beat.json() == {"held": False}
    done = api.worker("POST", f"{tasks}/complete", json={"epoch": epoch, "result": RESULT})
    assert done.json() == {"held": False}
    storage = api.client.app.state.services.storage  # type: ignore[attr-defined]
    assert not storage.exists(f"results/{task_id}.{epoch}.mp4")
    assert api.task(task_id).status is TaskStatus.CANCELLED and api.balance() == before


@pytest.mark.parametrize("retry", [True, False])
def test_release_uses_no_attempt_and_fail_may_retry(api: Api, retry: bool) -> None:
    before = api.balance()
    task_id = api.submit()
    tasks = f"/tasks/{task_id}"
    first = claim(api)
    assert api.worker("POST", f"{tasks}/release", json={"epoch": first["epoch"]}).json() == {
        "held": True
    }
    task = api.task(task_id)
    assert task.status is TaskStatus.PENDING and task.attempts == 0
    second = claim(api)
    assert (second["attempt"], second["epoch"]) == (1, 2)
    body = {"epoch": second["epoch"], "message": "the engine crashed", "retry": retry}
    assert api.worker("POST", f"{tasks}/fail", json=body).json() == {"held": True}
    task = api.task(task_id)
    if retry:
        assert task.status is TaskStatus.PENDING and task.attempts == 1
    else:
        assert task.status is TaskStatus.FAILED and task.error == "the engine crashed"
        assert api.balance() == before


def test_requests_are_validated(api: Api) -> None:
    assert api.worker("POST", "/claim", json={"owner": "", "wait_s": 1}).status_code == 400
    assert api.worker("POST", "/claim", json={"owner": "w", "wait_s": -1}).status_code == 400
    task_id = api.submit()
    lease = claim(api)
    no_duration = {"epoch": lease["epoch"], "result": {"frames": 1}}
    assert api.worker("POST", f"/tasks/{task_id}/complete", json=no_duration).status_code == 400
    body = {"epoch": 1}
    assert api.worker("POST", "/tasks/task_nope/release", json=body).status_code == 404


def test_idle_long_polls_claim_nothing_and_a_submit_wakes_one(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    claims: list[str] = []
    real_claim = api.store.tasks.claim

    def counted(*args: Any, **kwargs: Any) -> Any:
        claims.append("claim")
        return real_claim(*args, **kwargs)

    monkeypatch.setattr(api.store.tasks, "claim", counted)
    answers: list[Any] = []

    def long_poll(n: int) -> None:
        answers.append(api.worker("POST", "/claim", json={"owner": f"w-{n}", "wait_s": 4}))

    polls = [threading.Thread(target=long_poll, args=(n,)) for n in range(8)]
    for poll in polls:
        poll.start()
    time.sleep(0.5)  # the polls that came together claimed once each, and found nothing
    del claims[:]
    time.sleep(1.0)  # five poll intervals: the old loop claimed 8 × 5 times
    assert claims == []
    task_id = api.submit()
    deadline = time.monotonic() + 3
    while not answers and time.monotonic() < deadline:
        time.sleep(0.01)
    assert answers and answers[0].status_code == 200
    assert answers[0].json()["lease"]["task_id"] == task_id
    time.sleep(0.5)
    # One waiter woken for one task (and at most one more, if a probe saw it pending
    # before that claim committed), not all eight.
    assert 1 <= len(claims) <= 2, claims
    for poll in polls:
        poll.join(timeout=10)
    assert sorted(a.status_code for a in answers) == [200] + [204] * 7


def test_a_token_revoked_while_its_claims_are_cached_gets_no_task(api: Api) -> None:
    assert api.worker("POST", "/claim", json={"owner": "w", "wait_s": 0}).status_code == 204
    api.store.workers.revoke("gpu-1")  # the claim route still knows the token, for a while
    task_id = api.submit()
    response = api.worker("POST", "/claim", json={"owner": "w", "wait_s": 1})
    assert response.status_code in (204, 401) and "lease" not in response.text
    assert api.task(task_id).status is TaskStatus.PENDING
    beat = api.worker("POST", f"/tasks/{task_id}/heartbeat", json={"epoch": 1})
    assert beat.status_code == 401  # every other route reads the token fresh
