"""A remote worker's result put straight into the bucket is checked there before it counts."""

from __future__ import annotations

from pathlib import Path

import httpx
from fastapi.testclient import TestClient

from omniflash.api.app import create_app
from omniflash.settings import Settings
from omniflash.store import Store, TaskStatus
from tests.blobs.conftest import unique_prefix
from tests.remote.videos import mp4_bytes
from tests.s3_server import S3Server
from tests.store.test_races import assert_money


def test_a_presigned_upload_is_checked_in_the_bucket(tmp_path: Path, s3: S3Server) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        workers=0,
        storage_url=s3.storage_url(unique_prefix()),
        s3_endpoint_url=s3.endpoint_url,
    )
    store = Store(settings.database_url)
    key, _ = store.keys.create("t", 100_000, 1000, 4)
    token, _ = store.workers.create("rented")
    app = create_app(settings, store=store, start_workers=False)
    worker = {"Authorization": f"Bearer {token}"}
    try:
        with TestClient(app) as client:
            body = {"model": "Omni-Flash-Ext", "prompt": "p", "duration": 4}
            submitted = client.post(
                "/v1/videos/generations", json=body, headers={"Authorization": f"Bearer {key}"}
            )
            task_id = submitted.json()["data"][0]["task_id"]
            storage = app.state.services.storage
            for attempt, data in enumerate([bytes(4096), mp4_bytes()], start=1):
                claim = client.post("/worker/v1/claim", json={"owner": "w"}, headers=worker)
                answer = claim.json()
                epoch, upload_url = answer["lease"]["epoch"], answer["upload_url"]
                assert upload_url and upload_url.startswith(s3.endpoint_url)
                assert httpx.put(upload_url, content=data, timeout=30).status_code == 200
                result = f"results/{task_id}.{epoch}.mp4"
                assert storage.exists(result)
                done = client.post(
                    f"/worker/v1/tasks/{task_id}/complete",
                    json={"epoch": epoch, "result": {}},
                    headers=worker,
                )
                task = store.tasks.get(task_id)
                if attempt == 1:
                    assert done.status_code == 400 and "ftyp" in done.json()["error"]["message"]
                    assert not storage.exists(result), "the refused object is deleted"
                    assert (task.status, task.attempts) == (TaskStatus.PENDING, 1)
                else:
                    assert done.json() == {"held": True}
                    assert task.status is TaskStatus.COMPLETED and task.credits == 1000
            assert_money(store)
    finally:
        app.state.services.storage.close()
        store.close()
