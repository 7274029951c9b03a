"""The webhook sender: one delivery that raises does not stop the others."""

from __future__ import annotations

from pathlib import Path

import pytest

from omniflash import webhooks
from omniflash.blobs import UrlSigner
from omniflash.contract import parse_generation_request
from omniflash.metrics import Metrics
from omniflash.pricing import Pricing
from omniflash.settings import Settings
from omniflash.store import Store
from omniflash.webhooks import Outbox, WebhookSender
from tests.integrations.conftest import start_receiver

pytestmark = pytest.mark.timeout(60)


def test_a_delivery_that_raises_is_counted_and_the_batch_goes_on(
    store: Store, tmp_path: Path
) -> None:
    receiver, server = start_receiver()
    try:
        settings = Settings(data_dir=tmp_path, allow_private_urls=True, webhook_retry_delays="0")
        metrics = Metrics(store, settings)
        metrics.install(store)
        webhooks.install(store, settings, UrlSigner(b"s" * 32))
        spec = parse_generation_request(
            {"model": "Omni-Flash-Ext", "prompt": "a", "duration": 4, "callback_url": receiver.url}
        )
        hold = Pricing().hold(spec)
        keys = [store.keys.create(f"k{n}", 10**9, 10**6, 10**6)[1] for n in range(3)]
        ids = [
            store.tasks.submit(k, spec, millicredits=hold, estimated_time=1, seed=1).task.id
            for k in keys
        ]
        for task_id, key in zip(ids, keys, strict=True):
            store.tasks.cancel(task_id, key.id)
        sender = WebhookSender(settings, store, on_outcome=metrics.webhook_outcome)
        signing = sender.secrets.signing

        def poisoned(key_id: int) -> list[str]:
            if key_id == keys[1].id:
                raise RuntimeError("this key's secret cannot be read")
            return signing(key_id)

        sender.secrets.signing = poisoned  # type: ignore[method-assign]
        try:
            assert sender.run_once() == 3
        finally:
            sender.close()
        assert {task_id for task_id in ids if receiver.for_task(task_id)} == {ids[0], ids[2]}
        errors = metrics.registry.get_sample_value(
            "omniflash_maintenance_errors_total", {"job": "webhook"}
        )
        assert errors == 1
        # The broken one is settled as a failed attempt: retried on the schedule, not lost.
        (row,) = Outbox(store.db).for_task(ids[1])
        assert row["state"] == "pending" and row["attempts"] == 1
        assert row["last_error"] == "internal error: RuntimeError"
        assert row["lease_owner"] is None
    finally:
        server.shutdown()
        server.server_close()
