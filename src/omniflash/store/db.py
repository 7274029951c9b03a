"""The SQL engine, transactions, and migrations, for SQLite and PostgreSQL alike.

SQLite runs in WAL mode; a write transaction starts with ``BEGIN IMMEDIATE`` so two
writers queue on the database lock instead of failing halfway.  Within one process the
writers first queue on a lock of the process's own: SQLite's busy handler waits by
sleeping and polling (up to 100 ms a nap), which under a burst of submits left the lock
idle between naps and put whole seconds on the slowest requests.  PostgreSQL uses its
default READ COMMITTED with explicit row locks where it matters.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import sqlalchemy as sa

from omniflash.store.schema import MIGRATIONS, schema_version

__all__ = [
    "EVENT_KEYS",
    "OUTAGES",
    "Database",
    "OutcomeUnknown",
    "StoreUnavailable",
    "retry_disconnect",
    "retry_repeatable",
]

P = ParamSpec("P")
T = TypeVar("T")
MIGRATION_LOCK = 0x6F6D6E69  # any constant no other application of the database uses
EVENT_KEYS = "omniflash_event_keys"
"""SQLite: where a transaction's connection collects the key ids of the task events it
wrote (``store.events.record``), for ``Database.event_hooks`` after the commit."""


class StoreUnavailable(Exception):
    """The database cannot be reached just now, even on a fresh connection: retry later.

    The API answers it with a 503 (``api/app.py``); the store itself knows nothing of HTTP.
    """


OUTAGES: tuple[type[Exception], ...] = (
    StoreUnavailable,
    sa.exc.OperationalError,
    sa.exc.InterfaceError,
)
"""What a store call raises when the database is out of reach (after its own retry on a
fresh connection): callers catch these by this name and need not know the driver's."""


class OutcomeUnknown(sa.exc.OperationalError):
    """The connection dropped while a write committed: it may or may not have.

    Not retried by ``retry_disconnect``; a write whose repetition is harmless, or which
    finds its own earlier success, takes ``retry_repeatable`` instead.
    """

    @classmethod
    def of(cls, exc: sa.exc.DBAPIError) -> OutcomeUnknown:
        return cls(exc.statement, exc.params, exc.orig or exc)


def _dropped(exc: sa.exc.DBAPIError) -> bool:
    return bool(exc.connection_invalidated)


def _psycopg_drop(context: sa.engine.ExceptionContext) -> None:
    """Count every error of a lost connection as one, so the pool replaces it.

    SQLAlchemy asks psycopg whether the connection is closed, and psycopg does not always
    know yet: a server that ended the session (``pg_terminate_backend``, a restart) can
    surface as "connection socket closed", and the rollback after it as "another command
    is already in progress", on a connection psycopg still calls open.  Those errors carry
    no SQLSTATE (the client raised them), or one of class 08 (connection exception) or
    57P (the server shutting the session down).  Errors with other states (a deadlock, a
    lock timeout, a cancelled statement) leave the connection usable and are not drops.
    """
    import psycopg

    exc = context.original_exception
    if not isinstance(exc, psycopg.OperationalError):
        return
    state = exc.sqlstate or ""
    if not state or state.startswith(("08", "57P")):
        context.is_disconnect = True


def retry_disconnect(call: Callable[P, T]) -> Callable[P, T]:
    """Run ``call`` again, once, when the database dropped the connection under it.

    A PostgreSQL restart, or ``pg_terminate_backend``, leaves pooled connections dead;
    SQLAlchemy notices on first use, invalidates the pool, and the second try gets a
    fresh connection.  Safe for reads, and for writes through ``Database.write()``: a
    drop before the commit means the server rolled the transaction back.  A drop during
    the commit is ``OutcomeUnknown`` and is not retried here.
    """

    @functools.wraps(call)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return call(*args, **kwargs)
        except sa.exc.DBAPIError as exc:
            if not _dropped(exc):
                raise
            return call(*args, **kwargs)

    return wrapper


def retry_repeatable(call: Callable[P, T]) -> Callable[P, T]:
    """``retry_disconnect``, and a retry after ``OutcomeUnknown`` too: for writes that are
    harmless to repeat (a heartbeat) or that answer for their own earlier success (an
    epoch-matched finish finds the lease gone; its caller checks the result it left)."""

    @functools.wraps(call)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return call(*args, **kwargs)
        except sa.exc.DBAPIError as exc:
            if not (_dropped(exc) or isinstance(exc, OutcomeUnknown)):
                raise
            return call(*args, **kwargs)

    return wrapper


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self.event_hooks: list[Callable[[set[int]], None]] = []
        """SQLite: called after each commit that wrote task events, with their key ids
        (PostgreSQL announces them with ``NOTIFY`` instead, to every process)."""
        if self.is_sqlite:
            path = url.split("///", 1)[1] if "///" in url else ""
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            # As many connections as the API's thread pool has threads, so none is opened
            # and closed per request under load; SQLite connections cost little.
            self.engine = sa.create_engine(
                url,
                connect_args={"timeout": 30, "check_same_thread": False},
                pool_size=32,
                max_overflow=16,
            )
            self._writers: contextlib.AbstractContextManager[Any] = threading.Lock()
            sa.event.listen(self.engine, "connect", self._sqlite_connect)
            sa.event.listen(self.engine, "begin", self._sqlite_begin)
        else:
            if url.startswith("postgresql://") or url.startswith("postgres://"):
                url = "postgresql+psycopg://" + url.split("://", 1)[1]
            # No ping before every checkout (a round trip per transaction): connections are
            # recycled instead, and reads and writes retry once when the server dropped
            # them (``retry_disconnect``).
            self._writers = contextlib.nullcontext()
            self.engine = sa.create_engine(
                url, pool_size=24, max_overflow=8, pool_timeout=30, pool_recycle=1800
            )
            sa.event.listen(self.engine, "handle_error", _psycopg_drop)
            # Statements whose loss in a crash of the server is harmless (``statement``'s
            # ``durable=False``) commit without waiting for the WAL's flush to disk.
            self._lossy_engine = sa.create_engine(
                url,
                pool_size=4,
                max_overflow=4,
                pool_timeout=30,
                pool_recycle=1800,
                connect_args={"options": "-c synchronous_commit=off"},
            )
            sa.event.listen(self._lossy_engine, "handle_error", _psycopg_drop)

    @staticmethod
    def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event decide how transactions start.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @staticmethod
    def _sqlite_begin(conn: sa.Connection) -> None:
        options = conn.get_execution_options()
        if options.get("omniflash_autocommit"):
            return  # one statement: atomic by itself, no BEGIN and COMMIT around it
        conn.exec_driver_sql("BEGIN IMMEDIATE" if options.get("omniflash_write") else "BEGIN")

    @contextlib.contextmanager
    def write(self) -> Iterator[sa.Connection]:
        """A read-write transaction, committed on success and rolled back on error.

        A connection lost during the commit raises ``OutcomeUnknown``; lost before it, the
        driver's error (the transaction did not happen).  Not to be nested: on SQLite the
        inner one would wait for the outer one forever.
        """
        with self._writers, self.engine.connect() as conn:
            conn.execution_options(omniflash_write=True)
            conn.info.pop(EVENT_KEYS, None)
            committing = False
            try:
                with conn.begin():
                    yield conn
                    committing = True
            except sa.exc.DBAPIError as exc:
                if committing and _dropped(exc):
                    raise OutcomeUnknown.of(exc) from exc
                raise
            finally:
                announced: set[int] | None = conn.info.pop(EVENT_KEYS, None)
        if announced and committing:
            self._announce(announced)

    def _announce(self, key_ids: set[int]) -> None:
        for hook in self.event_hooks:
            try:
                hook(key_ids)
            except Exception:
                # A stream that is told late still finds the event by its next read.
                logging.getLogger(__name__).exception("an event hook failed")

    @contextlib.contextmanager
    def read(self) -> Iterator[sa.Connection]:
        """A connection for one read statement, without a transaction around it.

        A single SELECT is atomic by itself; skipping BEGIN and COMMIT saves two round
        trips on every poll.  Every read in the store is one statement; a read that
        needs several consistent statements would take ``write()``'s transaction.
        """
        with self.engine.connect() as conn:
            if self.is_sqlite:
                conn.execution_options(omniflash_autocommit=True)
            else:
                conn.execution_options(isolation_level="AUTOCOMMIT")
            yield conn

    @contextlib.contextmanager
    def statement(self, *, durable: bool = True) -> Iterator[sa.Connection]:
        """PostgreSQL: a connection for one statement that writes and commits by itself (its
        row locks last only while it runs).  SQLite writes take ``write()``.

        ``durable=False``: the commit does not wait for its WAL to reach the disk
        (``synchronous_commit = off``), for a write that a crash of the server may undo
        harmlessly: a heartbeat (the lease then ends sooner, and its progress shows less).
        Never a claim: the epoch a claim takes fences the lease, and a claim undone by a
        crash would let the next claim hand the same epoch to a second worker.
        """
        if self.is_sqlite:
            raise RuntimeError("SQLite writes go through write()")
        with (self.engine if durable else self._lossy_engine).connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT")
            yield conn

    def for_update(self, stmt: sa.Select[Any], *, skip_locked: bool = False) -> sa.Select[Any]:
        """Row locks on PostgreSQL; SQLite's BEGIN IMMEDIATE already serialises writers."""
        if self.is_sqlite:
            return stmt
        return stmt.with_for_update(skip_locked=skip_locked)

    def clock(self) -> sa.ColumnElement[float]:
        """The database's time, in Unix seconds: the one clock every process of a fleet shares."""
        if self.is_sqlite:
            return sa.cast((sa.func.julianday("now") - 2440587.5) * 86400.0, sa.Float)
        return sa.cast(sa.func.extract("epoch", sa.func.clock_timestamp()), sa.Float)

    def insert_ignore(self, table: sa.Table) -> sa.Insert:
        """An INSERT that does nothing when the row's key exists (``ON CONFLICT DO NOTHING``)."""
        if self.is_sqlite:
            from sqlalchemy.dialects import sqlite

            return sqlite.insert(table).on_conflict_do_nothing()
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(table).on_conflict_do_nothing()

    def migrate(self) -> int:
        """Apply pending migrations in one transaction; returns the schema version.

        Processes starting together on an empty database queue on one lock (an advisory
        lock on PostgreSQL, taken before anything is created; SQLite's write lock), so
        the first migrates and the others find the work done.
        """
        with self.write() as conn:
            if not self.is_sqlite:
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(MIGRATION_LOCK)))
            schema_version.create(conn, checkfirst=True)
            done = {row[0] for row in conn.execute(sa.select(schema_version.c.version))}
            for version, _name, apply in MIGRATIONS:
                if version in done:
                    continue
                apply(conn)
                conn.execute(
                    schema_version.insert().values(version=version, applied_at=time.time())
                )
        return max(v for v, _, _ in MIGRATIONS)

    def listen(self, channel: str, on_notify: Callable[[], None], stop: threading.Event) -> None:
        """PostgreSQL only: call ``on_notify`` for each NOTIFY on ``channel`` until ``stop``."""
        self.listen_payloads(channel, lambda _payload: on_notify(), stop)

    def listen_payloads(
        self, channel: str, on_notify: Callable[[str | None], None], stop: threading.Event
    ) -> None:
        """PostgreSQL only: call ``on_notify`` with each NOTIFY's payload on ``channel``
        until ``stop``, and with ``None`` each time the connection is made (what was sent
        while it was not listening is unknown: look at everything once)."""
        self.listen_channels({channel: on_notify}, stop)

    def listen_channels(
        self, handlers: Mapping[str, Callable[[str | None], None]], stop: threading.Event
    ) -> None:
        """``listen_payloads`` for several channels on ONE connection: each NOTIFY goes
        to its channel's handler, and ``None`` to every handler on each (re)connect."""
        import psycopg

        url = self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        while not stop.is_set():
            try:
                with psycopg.connect(url, autocommit=True) as conn:
                    for channel in handlers:
                        conn.execute(f'LISTEN "{channel}"')
                    # Sent while this was not listening: each handler looks once now.
                    for on_notify in handlers.values():
                        on_notify(None)
                    while not stop.is_set():
                        for notify in conn.notifies(timeout=1.0, stop_after=1):
                            handler = handlers.get(notify.channel)
                            if handler is not None:
                                handler(notify.payload)
            except psycopg.Error:
                # The workers still probe; listening is only what makes them prompt.
                stop.wait(5.0)

    def dispose(self) -> None:
        self.engine.dispose()
        if not self.is_sqlite:
            self._lossy_engine.dispose()
