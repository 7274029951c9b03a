"""The sender: a thread in every API replica that claims due webhooks and POSTs them.

Replicas share the work through the outbox's leases (see ``omniflash.store.outbox``);
each claims a few attempts at a time and sends them in parallel.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from omniflash.logs import task_context
from omniflash.settings import Settings
from omniflash.store import Store
from omniflash.store.outbox import Delivery, Outbox
from omniflash.webhooks.delivery import DeliveryRefused, post_webhook
from omniflash.webhooks.secret_store import WebhookSecrets
from omniflash.webhooks.signing import signature_header

__all__ = ["OUTCOMES", "WebhookSender", "parse_delays"]

log = logging.getLogger(__name__)

PURGE_EVERY_S = 600.0
KEEP_SETTLED_S = 7 * 24 * 3600.0
"""Delivered and given-up rows are kept this long (for support questions), then deleted."""

OUTCOMES = ("delivered", "retry", "gave_up", "refused")
"""``omniflash_webhook_deliveries_total{outcome}``: one per attempt."""


def parse_delays(text: str) -> list[float]:
    """``OMNIFLASH_WEBHOOK_RETRY_DELAYS``: seconds, comma-separated.

    >>> parse_delays("5, 60,300")
    [5.0, 60.0, 300.0]
    """
    delays = [float(part) for part in text.split(",") if part.strip()]
    if not delays or any(d < 0 for d in delays):
        raise ValueError(f"webhook retry delays must be seconds >= 0, got {text!r}")
    return delays


class WebhookSender(threading.Thread):
    """Claims due attempts, signs and POSTs them, settles each; ``run_once`` for one pass."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        on_outcome: Callable[[str], None] | None = None,
        lease_margin_s: float = 5.0,
        concurrency: int = 8,
    ) -> None:
        super().__init__(name="webhooks", daemon=True)
        self.settings = settings
        self.store = store
        self.outbox = Outbox(store.db)
        self.secrets = WebhookSecrets(store.db)
        self.delays = parse_delays(settings.webhook_retry_delays)
        self.on_outcome = on_outcome
        # The lease outlasts an attempt (its timeout) with room to sign and settle it; a
        # sender that dies mid-attempt holds its rows no longer than this.
        self.lease_s = settings.webhook_timeout_s + lease_margin_s
        self.concurrency = concurrency
        self.owner = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.stop_event = threading.Event()
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="omniflash-webhook")
        self.sent = 0

    def __repr__(self) -> str:
        return f"<WebhookSender {self.owner} sent={self.sent}>"

    def run(self) -> None:
        last_purge = 0.0
        while not self.stop_event.is_set():
            try:
                if time.monotonic() - last_purge >= PURGE_EVERY_S:
                    last_purge = time.monotonic()
                    self.outbox.purge(KEEP_SETTLED_S)
                busy = self.run_once()
            except Exception:
                log.exception("webhook pass failed; trying again shortly")
                self.store.tasks.report_error("webhook", "-")
                busy = 0
            if not busy:
                self.stop_event.wait(self.settings.webhook_poll_s)

    def run_once(self) -> int:
        """Claim and send one batch; returns how many attempts it made."""
        claimed = self.outbox.claim(self.owner, self.lease_s, limit=self.concurrency)
        list(self._pool.map(self._attempt, claimed))
        return len(claimed)

    def _attempt(self, delivery: Delivery) -> None:
        with task_context(delivery.task_id):
            try:
                outcome = self._send(delivery)
            except Exception as exc:
                # One poisoned row (a key without a secret, a row the database refuses to
                # settle) must not stop the batch: it is logged, counted, and retried on
                # the schedule like a failed attempt, so it gives up in the end.
                log.exception("webhook %s of task %s failed", delivery.id, delivery.task_id)
                self.store.tasks.report_error("webhook", delivery.id)
                outcome = self._settle_broken(delivery, exc)
        self.sent += 1
        if self.on_outcome is not None and outcome != "lost":
            self.on_outcome(outcome)

    def _send(self, delivery: Delivery) -> str:
        timestamp = int(time.time())
        headers = {
            "webhook-id": delivery.id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature_header(
                self.secrets.signing(delivery.key_id), delivery.id, timestamp, delivery.payload
            ),
        }
        status: int | None = None
        try:
            status = post_webhook(
                delivery.url,
                delivery.payload,
                headers,
                allow_private=self.settings.allow_private_urls,
                timeout_s=self.settings.webhook_timeout_s,
            )
        except DeliveryRefused as exc:
            log.warning("webhook %s refused: %s", delivery.id, exc)
            self._failed(delivery, None, f"refused: {exc}", give_up=True)
            return "refused"
        except TimeoutError:
            error = f"timed out after {self.settings.webhook_timeout_s:g} s"
        except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # whatever it was, it is this attempt's failure, not the row's
            log.exception("webhook %s attempt %d: unexpected error", delivery.id, delivery.attempt)
            error = f"{type(exc).__name__}: {exc}"
        else:
            if 200 <= status < 300:
                return "delivered" if self.outbox.delivered(delivery, status) else "lost"
            error = f"HTTP {status}"
        outcome = self._failed(delivery, status, error)
        log.info(
            "webhook %s attempt %d failed (%s): %s",
            delivery.id,
            delivery.attempt,
            error,
            "giving up" if outcome == "gave_up" else "will retry",
        )
        return outcome

    def _settle_broken(self, delivery: Delivery, exc: Exception) -> str:
        try:
            return self._failed(delivery, None, f"internal error: {type(exc).__name__}")
        except Exception:
            log.exception("webhook %s: its failed attempt could not be recorded", delivery.id)
            return "lost"  # its lease runs out and another pass tries again

    def _failed(
        self, delivery: Delivery, status: int | None, error: str, *, give_up: bool = False
    ) -> str:
        return self.outbox.failed_attempt(
            delivery,
            status=status,
            error=error,
            delays=self.delays,
            retry_for_s=self.settings.webhook_retry_for_s,
            give_up=give_up,
        )

    def close(self, timeout: float = 15.0) -> None:
        self.stop_event.set()
        with contextlib.suppress(RuntimeError):
            self.join(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)
