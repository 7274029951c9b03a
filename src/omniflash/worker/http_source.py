"""``HttpTaskSource``: a remote worker's tasks, from an API server's ``/worker/v1/`` endpoints.

This is the worker protocol's client side; ``omniflash.worker.remote`` runs a pool of
workers over it.  The same ``Worker`` loop that runs beside the API runs on a GPU
machine over this source; the machine needs the server's URL and a worker token, no
database and no storage credentials.  Errors map onto what the loop already handles:

- the server unreachable, a timeout, a 5xx: ``SourceUnavailable`` (the loop backs off
  and retries, and keeps offering a finished result for a while);
- 401 (the token was revoked or is wrong): fatal.  The source calls ``on_rejected``
  once, so that the process stops, and from then on answers "not yours" everywhere;
- a lease that is no longer ours: ``False``, as from the store;
- a result the server refused (not the asked video): ``False``; the server has failed
  the attempt, to be retried.

At start the worker and the server compare ``PROTOCOL_VERSION``: a worker of another
version stops with a message naming both, rather than claiming tasks it would drop.

>>> source = HttpTaskSource("https://api.example.com", token)          # doctest: +SKIP
>>> WorkerPool(settings, source, claim_wait_s=20).start()               # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from omniflash import __version__
from omniflash.input_blobs import blob_inputs
from omniflash.worker.source import PROTOCOL_VERSION, Lease, SourceUnavailable

__all__ = ["HttpTaskSource", "ProtocolError", "ServerConfig", "WorkerRejected"]

log = logging.getLogger(__name__)

CONNECT_S = 10.0
READ_S = 30.0
UPLOAD_S = 120.0
TIMEOUT = httpx.Timeout(READ_S, connect=CONNECT_S)
CHUNK = 1024 * 1024


class WorkerRejected(Exception):
    """The server refused this worker's token (revoked or mistyped): not worth retrying."""


class ProtocolError(Exception):
    """An answer this worker does not understand (not an omniflash server, or another version)."""


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """What the server tells a worker at start (``GET /worker/v1/config``)."""

    worker: str
    """The worker's name, as given to ``omniflash workers create``."""
    version: str
    protocol: int
    lease_s: float
    task_timeout_s: float
    max_claim_wait_s: float


@dataclasses.dataclass(frozen=True)
class _Held:
    lease: Lease
    input_urls: dict[str, str]
    upload_url: str | None


class HttpTaskSource:
    """``TaskSource`` over HTTP; thread-safe, so one serves every worker of a pool."""

    def __init__(
        self,
        server_url: str,
        token: str,
        *,
        client: httpx.Client | None = None,
        on_rejected: Callable[[str], None] | None = None,
    ) -> None:
        self.server_url = server_url.rstrip("/")
        self.client = client or httpx.Client(base_url=self.server_url, timeout=TIMEOUT)
        self.client.headers["Authorization"] = f"Bearer {token}"
        self.client.headers["User-Agent"] = f"omniflash-worker/{__version__}"
        # Presigned URLs carry their own permission: never send them the token.
        self._bare = httpx.Client(timeout=TIMEOUT)
        self.on_rejected = on_rejected
        self.rejected: str | None = None
        """Why the server refused the token, once it has."""
        self.broken: str | None = None
        """Why this worker cannot work with the server (a lease it cannot read), if so."""
        self.max_claim_wait_s = 60.0
        self._closed = False
        self._held: dict[tuple[str, int], _Held] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<HttpTaskSource {self.server_url} held={self.held()}>"

    # -- the worker's side of the lifecycle ---------------------------------------------------

    def config(self) -> ServerConfig:
        """The server's settings for workers; checks the token (``WorkerRejected``)."""
        data = self._json(self._send("GET", "/worker/v1/config"))
        protocol = data.get("protocol")
        if protocol != PROTOCOL_VERSION:
            raise ProtocolError(
                f"{self.server_url} runs omniflash {data.get('version', '?')}, whose worker "
                f"protocol is {protocol if protocol is not None else 'older than 2'}; this "
                f"worker is omniflash {__version__} (protocol {PROTOCOL_VERSION}). "
                "Run the same omniflash version on the server and its workers"
            )
        config = ServerConfig(
            worker=str(data["worker"]),
            version=str(data["version"]),
            protocol=PROTOCOL_VERSION,
            lease_s=float(data["lease_s"]),
            task_timeout_s=float(data["task_timeout_s"]),
            max_claim_wait_s=float(data["max_claim_wait_s"]),
        )
        self.max_claim_wait_s = config.max_claim_wait_s
        return config

    def held(self) -> int:
        """Leases claimed and not yet settled (completed, failed, released or lost)."""
        with self._lock:
            return len(self._held)

    def close(self) -> None:
        """Claim nothing more: a lease that arrives from now on is handed straight back."""
        self._closed = True

    def shutdown(self) -> None:
        self.close()
        self.client.close()
        self._bare.close()

    # -- TaskSource -----------------------------------------------------------------------------

    def claim(self, owner: str, wait_s: float) -> Lease | None:
        if self._closed or self.rejected:
            return None
        # A fifth of jitter: a fleet that started together (or came back after a restart)
        # spreads its returning polls instead of arriving at a replica all at once.
        wait = max(0.0, min(wait_s, self.max_claim_wait_s)) * random.uniform(0.8, 1.0)
        try:
            response = self._send(
                "POST",
                "/worker/v1/claim",
                json={"owner": owner, "wait_s": wait},
                timeout=httpx.Timeout(READ_S + wait, connect=CONNECT_S),
            )
        except WorkerRejected:
            return None
        if response.status_code == 204:
            return None
        data = self._json(response)
        try:
            lease = Lease.from_dict(data["lease"])
        except (KeyError, TypeError, ValueError) as exc:
            # Not tolerated: a field this worker does not know would be silently ignored
            # in the video.  The task goes back for a worker that reads it, and this one
            # stops (the protocol check at start makes this rare).
            self._hand_back(data.get("lease"))
            message = (
                f"{self.server_url} sent a lease this worker cannot read ({exc!r}); "
                "run the same omniflash version on the server and its workers"
            )
            self.close()
            self.broken = message
            if self.on_rejected is not None:
                self.on_rejected(message)
            raise ProtocolError(message) from exc
        with self._lock:
            self._held[(lease.task_id, lease.epoch)] = _Held(
                lease, dict(data.get("input_urls") or {}), data.get("upload_url")
            )
        if self._closed:
            # Stopping: the task goes back at once, untried, for another worker.
            self.release(lease)
            return None
        return lease

    def heartbeat(self, lease: Lease, progress: int) -> bool:
        return self._write(lease, "heartbeat", {"progress": progress}, settles=False)

    def fetch_inputs(self, lease: Lease, dest: Path) -> dict[str, Path]:
        dest.mkdir(parents=True, exist_ok=True)
        with self._lock:
            held = self._held.get((lease.task_id, lease.epoch))
        presigned = held.input_urls if held else {}
        paths = {}
        for n, label in enumerate(blob_inputs(lease.spec)):
            path = dest / f"input-{n}"
            if label in presigned:
                self._download(self._bare, presigned[label], {}, path, label)
            else:
                url = f"/worker/v1/tasks/{lease.task_id}/inputs/{n}"
                self._download(self.client, url, {"epoch": lease.epoch}, path, label)
            paths[label] = path
        return paths

    def complete(self, lease: Lease, output: Path, result: dict[str, Any]) -> bool:
        with self._lock:
            held = self._held.get((lease.task_id, lease.epoch))
        try:
            if held is not None and held.upload_url:
                self._upload_presigned(held.upload_url, output)
            else:
                response = self._send(
                    "PUT",
                    f"/worker/v1/tasks/{lease.task_id}/result",
                    params={"epoch": lease.epoch},
                    content=_chunks(output),
                    headers={
                        "Content-Type": "video/mp4",
                        "Content-Length": str(output.stat().st_size),
                    },
                    timeout=httpx.Timeout(UPLOAD_S, connect=CONNECT_S),
                )
                if not self._held_answer(response):
                    self._forget(lease)
                    return False
        except WorkerRejected:
            self._forget(lease)
            return False
        except SourceUnavailable:
            raise
        except Exception:
            self._forget(lease)
            raise
        try:
            return self._write(lease, "complete", {"result": result})
        except ProtocolError as exc:
            # A 4xx: the server refused the file (and failed the attempt) or the numbers.
            log.warning("the server refused the result of %s: %s", lease.task_id, exc)
            return False

    def fail(self, lease: Lease, message: str, *, retry: bool) -> bool:
        return self._write(lease, "fail", {"message": message[:4000], "retry": retry})

    def release(self, lease: Lease) -> bool:
        return self._write(lease, "release", {})

    def preview(self, lease: Lease, data: bytes, width: int, height: int) -> None:
        """``POST /worker/v1/tasks/{id}/previews?epoch=E`` with the WebP bytes; the server
        reads the size from the image itself (``width`` and ``height`` go unsent)."""
        response = self._send(
            "POST",
            f"/worker/v1/tasks/{lease.task_id}/previews",
            params={"epoch": lease.epoch},
            content=data,
            headers={"Content-Type": "image/webp"},
        )
        if response.status_code != 404:  # 404: the task is not this worker's any more
            self._json(response)

    # -- HTTP -----------------------------------------------------------------------------------

    def _write(
        self, lease: Lease, what: str, body: dict[str, Any], *, settles: bool = True
    ) -> bool:
        """A write under the lease's epoch; the lease is forgotten once it is settled or lost."""
        try:
            response = self._send(
                "POST",
                f"/worker/v1/tasks/{lease.task_id}/{what}",
                json={"epoch": lease.epoch, **body},
            )
            held = self._held_answer(response)
        except WorkerRejected:
            held = False
        except SourceUnavailable:
            raise  # the worker tries again
        except Exception:
            self._forget(lease)  # the worker gives up on this lease
            raise
        if settles or not held:
            self._forget(lease)
        return held

    def _hand_back(self, raw: Any) -> None:
        """Release a lease this worker cannot read, so that it is not left to expire."""
        try:
            task_id, epoch = str(raw["task_id"]), int(raw["epoch"])
            self._send("POST", f"/worker/v1/tasks/{task_id}/release", json={"epoch": epoch}).read()
        except Exception:
            log.warning("could not hand back an unreadable lease", exc_info=True)

    def _forget(self, lease: Lease) -> None:
        with self._lock:
            self._held.pop((lease.task_id, lease.epoch), None)

    def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.client.send(self.client.build_request(method, url, **kwargs))
        except httpx.TransportError as exc:
            raise SourceUnavailable(f"{self.server_url}: {_describe(exc)}") from exc
        self._raise_for_status(response)
        return response

    def _raise_for_status(self, response: httpx.Response) -> None:
        if response.status_code == 401:
            raise self._reject(_error_message(response))
        if response.status_code >= 500:
            raise SourceUnavailable(
                f"{self.server_url} answered HTTP {response.status_code}: "
                f"{_error_message(response)}"
            )

    def _reject(self, detail: str) -> WorkerRejected:
        message = (
            f"{self.server_url} refused this worker's token (HTTP 401: {detail}); "
            "ask for a new one (omniflash workers create) and restart the worker"
        )
        first = self.rejected is None
        self.rejected = message
        if first and self.on_rejected is not None:
            self.on_rejected(message)
        return WorkerRejected(message)

    def _json(self, response: httpx.Response) -> dict[str, Any]:
        where = f"{self.server_url}: {response.request.method} {response.request.url.path}"
        if response.status_code != 200:
            raise ProtocolError(
                f"{where} answered HTTP {response.status_code}: {_error_message(response)}"
            )
        try:
            data = response.json()
        except ValueError as exc:
            raise ProtocolError(f"{where} did not answer JSON; is it an omniflash server?") from exc
        if not isinstance(data, dict):
            raise ProtocolError(f"{where} answered {type(data).__name__}, not an object")
        return data

    def _held_answer(self, response: httpx.Response) -> bool:
        if response.status_code == 404:  # the task itself is gone: nothing to hold
            return False
        return bool(self._json(response)["held"])

    def _download(
        self, client: httpx.Client, url: str, params: dict[str, Any], dest: Path, label: str
    ) -> None:
        try:
            # No params at all for a presigned URL: an empty mapping would drop its query.
            with client.stream("GET", url, params=params or None) as response:
                if client is self.client:
                    self._raise_for_status(response)
                if response.status_code == 404:
                    raise FileNotFoundError(f"{label}: the stored input is missing")
                if response.status_code != 200:
                    raise SourceUnavailable(
                        f"{label}: download answered HTTP {response.status_code}"
                    )
                with dest.open("wb") as out:
                    for chunk in response.iter_bytes(CHUNK):
                        out.write(chunk)
        except httpx.TransportError as exc:
            raise SourceUnavailable(f"{label}: {_describe(exc)}") from exc
        except WorkerRejected as exc:
            raise SourceUnavailable(str(exc)) from exc

    def _upload_presigned(self, url: str, output: Path) -> None:
        try:
            response = self._bare.put(
                url,
                content=_chunks(output),
                headers={"Content-Length": str(output.stat().st_size)},
                timeout=httpx.Timeout(UPLOAD_S, connect=CONNECT_S),
            )
        except httpx.TransportError as exc:
            raise SourceUnavailable(f"result upload: {_describe(exc)}") from exc
        if response.status_code >= 300:
            raise SourceUnavailable(f"result upload answered HTTP {response.status_code}")


def _chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            yield chunk


def _describe(exc: httpx.TransportError) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _error_message(response: httpx.Response) -> str:
    """The message of the server's ``{"error": {...}}``, else the start of the body."""
    try:
        response.read()
        return str(response.json()["error"]["message"])
    except Exception:
        return response.text[:200] or response.reason_phrase
