"""The webhook outbox, as the sender imports it: the rows and their leases live in the store
(``omniflash.store.outbox``), where every query of omniflash is kept."""

from __future__ import annotations

from omniflash.store.outbox import Delivery, Outbox, retry_delay

__all__ = ["Delivery", "Outbox", "retry_delay"]
