"""The webhook events: an outbox row written in the transaction that ends a task.

``install(store, settings, signer)`` registers the end hook; ``create_app`` calls it for
every process that can end tasks (API replicas and their in-process workers).
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Any

from omniflash.blobs import UrlSigner
from omniflash.settings import Settings
from omniflash.store import Store, TaskRow, TaskStatus
from omniflash.store.outbox import Outbox
from omniflash.task_view import task_public

if TYPE_CHECKING:
    import sqlalchemy as sa

__all__ = ["event_body", "install", "webhook_base_url"]


def webhook_base_url(settings: Settings) -> str:
    """Where links in webhooks point: ``OMNIFLASH_PUBLIC_URL``, else the listening address."""
    return settings.public_url or f"http://{settings.host}:{settings.port}"


def event_body(task: TaskRow, data: dict[str, Any]) -> dict[str, Any]:
    """``{"type": "task.<status>", "timestamp": …, "data": <the task as GET shows it>}``."""
    ended = task.completed_at if task.completed_at is not None else task.created_at
    stamp = datetime.datetime.fromtimestamp(ended, tz=datetime.UTC)
    return {
        "type": f"task.{task.status.value}",
        "timestamp": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "data": data,
    }


def install(store: Store, settings: Settings, signer: UrlSigner) -> None:
    """Queue a webhook for every task with a ``callback_url``, in the transaction that ends it."""
    outbox = Outbox(store.db)
    base_url = webhook_base_url(settings)

    def on_end(conn: sa.Connection, task: TaskRow, status: TaskStatus) -> None:
        if task.spec.callback_url is None:
            return
        data = task_public(task, base_url=base_url, signer=signer, pricing=settings.pricing)
        outbox.enqueue(
            conn,
            task_id=task.id,
            key_id=task.key_id,
            url=task.spec.callback_url,
            event=f"task.{status.value}",
            body=event_body(task, data),
        )

    store.tasks.end_hooks.append(on_end)
