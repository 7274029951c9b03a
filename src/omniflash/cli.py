"""The ``omniflash`` command: serve, keys, and (in ``cli_client``) generate and tasks.

Every command builds its ``Settings`` once, here, from the environment and its flags.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import click

from omniflash import __version__
from omniflash.pricing import credits, to_millicredits
from omniflash.settings import Settings

__all__ = ["main"]

REVOKED_MARK = "#revoked-"

data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the database, results and secret live [env OMNIFLASH_DATA_DIR; ./omniflash-data].",
)


def build_settings(**overrides: Any) -> Settings:
    return Settings.from_env(os.environ, **overrides)


class _Commands(click.Group):
    """The client commands load on use: a server process never imports the SDK or rich."""

    LAZY: ClassVar[frozenset[str]] = frozenset({"generate", "tasks"})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.LAZY})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.LAZY:
            from omniflash import cli_client

            command: click.Command = getattr(cli_client, cmd_name)
            return command
        return super().get_command(ctx, cmd_name)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="omniflash")
def main() -> None:
    """omniflash: self-hostable video generation speaking the Omni-Flash-Ext API."""


@main.command()
@click.option("--host", default=None, help="Address to listen on [127.0.0.1].")
@click.option("--port", type=int, default=None, help="Port to listen on [8000].")
@data_dir_option
@click.option("--workers", type=int, default=None, help="In-process workers (0: API only) [2].")
@click.option("--engine", default=None, help="Engine name: preview, diffusers, … [preview].")
@click.option("--log-level", default="info", show_default=True)
def serve(
    host: str | None,
    port: int | None,
    data_dir: Path | None,
    workers: int | None,
    engine: str | None,
    log_level: str,
) -> None:
    """Run the API server and its workers."""
    import uvicorn

    from omniflash.api.app import create_app
    from omniflash.api.http_protocol import protocol_class
    from omniflash.blobs import StorageUnavailable
    from omniflash.logs import configure_logging
    from omniflash.store import Store

    settings = _checked_engine(
        build_settings(host=host, port=port, data_dir=data_dir, workers=workers, engine=engine),
        workers_given=workers is not None,
    )
    configure_logging(log_level, settings.log_format)
    store = Store(settings.database_url)
    first = store.keys.create_first(
        "default", to_millicredits(100), settings.default_rpm, settings.default_max_concurrent
    )
    if first is not None:
        key, _info = first
        click.echo("No API keys yet; created one with 100 credits. It is shown only once:")
        click.echo(f"  {key}")
    try:
        app = create_app(settings, store=store)
    except (ValueError, RuntimeError, StorageUnavailable) as exc:
        # A wrong bucket, a missing extra, presigned results on a local directory.
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"omniflash {__version__}: engine {settings.engine}, {settings.workers} worker(s), "
        f"data in {settings.data_dir.resolve()}, listening on http://{settings.host}:{settings.port}"
    )
    server = uvicorn.Server(
        # log_config=None: uvicorn keeps configure_logging's handler (formats, redaction).
        uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_level=log_level.lower(),
            log_config=None,
            # A client that dawdles over its request head is cut off (bodies: BodyLimit).
            http=protocol_class(settings.header_timeout_s),
        )
    )
    # Remote workers' long polls end as soon as a shutdown begins, rather than holding it up.
    app.state.stopping = lambda: server.should_exit
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    if not server.started:
        sys.exit(3)  # uvicorn's code for a failed start (say, the port is taken)


def _checked_engine(settings: Settings, *, workers_given: bool) -> Settings:
    """Refuse an unknown engine before anything starts; diffusers runs one worker per GPU."""
    from omniflash.engines import available_engines

    if settings.engine not in available_engines() and ":" not in settings.engine:
        raise click.UsageError(
            f"unknown engine {settings.engine!r}; available: {', '.join(available_engines())}"
        )
    if settings.engine == "diffusers":
        _check_diffusers(settings.recipes_path)
        if not workers_given and not os.environ.get("OMNIFLASH_WORKERS"):
            # Each worker holds its own copy of the models: one per GPU, not two on one.
            settings = dataclasses.replace(settings, workers=1)
    return settings


def _check_diffusers(recipes_path: Path | None) -> None:
    """Stop before anything starts when the extra is missing or the recipes are wrong."""
    from omniflash.engines.diffusion import load_recipes, require_gpu_extra

    try:
        require_gpu_extra()
        load_recipes(recipes_path)
    except (RuntimeError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
@data_dir_option
def migrate(data_dir: Path | None) -> None:
    """Bring the database's schema up to date and exit (a deploy step before `serve`)."""
    from omniflash.store.db import Database

    db = Database(build_settings(data_dir=data_dir).database_url)
    try:
        version = db.migrate()
    finally:
        db.dispose()
    click.echo(f"database schema at version {version}")


@main.group()
def keys() -> None:
    """Create, list, revoke and top up API keys."""


def _store(data_dir: Path | None) -> Any:
    from omniflash.store import Store

    return Store(build_settings(data_dir=data_dir).database_url)


@keys.command("create")
@click.option("--name", required=True, help="A label for the key.")
@click.option("--credits", "amount", type=float, required=True, help="Starting balance.")
@click.option("--rpm", type=int, default=None, help="Requests per minute [60].")
@click.option("--max-concurrent", type=int, default=None, help="Tasks in flight at once [4].")
@data_dir_option
def keys_create(
    name: str, amount: float, rpm: int | None, max_concurrent: int | None, data_dir: Path | None
) -> None:
    """Create a key; the key itself is the last line of the output."""
    settings = build_settings(data_dir=data_dir)
    if amount < 0:
        raise click.BadParameter("must be >= 0", param_hint="--credits")
    key, info = _store(data_dir).keys.create(
        name,
        to_millicredits(amount),
        rpm or settings.default_rpm,
        max_concurrent or settings.default_max_concurrent,
    )
    click.echo(
        f"created key {info.prefix}… ({name}): {credits(info.balance)} credits, "
        f"{info.rpm} rpm, {info.max_concurrent} concurrent. Store it now; it is not shown again:"
    )
    click.echo(key)


@keys.command("list")
@data_dir_option
def keys_list(data_dir: Path | None) -> None:
    """List keys (prefix, name, balance, limits); never the keys themselves."""
    rows = _store(data_dir).keys.all()
    click.echo(f"{'PREFIX':<12} {'NAME':<20} {'BALANCE':>10} {'RPM':>5} {'MAX':>4}  STATE")
    for k in rows:
        state = "revoked" if k.revoked_at else "active"
        click.echo(
            f"{k.prefix:<12} {k.name[:20]:<20} {credits(k.balance):>10} "
            f"{k.rpm:>5} {k.max_concurrent:>4}  {state}"
        )


@keys.command("revoke")
@click.argument("key")
@data_dir_option
def keys_revoke(key: str, data_dir: Path | None) -> None:
    """Revoke KEY (the whole key, or its printed prefix)."""
    from omniflash.errors import NotFound

    try:
        info = _store(data_dir).keys.revoke(key)
    except NotFound as exc:
        raise click.ClickException(exc.message) from exc
    click.echo(f"revoked {info.prefix}… ({info.name})")


@keys.command("topup")
@click.argument("key")
@click.option("--credits", "amount", type=float, required=True, help="Credits to add.")
@data_dir_option
def keys_topup(key: str, amount: float, data_dir: Path | None) -> None:
    """Add credits to KEY (the whole key, or its printed prefix)."""
    from omniflash.errors import NotFound

    if amount <= 0:
        raise click.BadParameter("must be > 0", param_hint="--credits")
    try:
        info = _store(data_dir).keys.topup(key, to_millicredits(amount))
    except NotFound as exc:
        raise click.ClickException(exc.message) from exc
    click.echo(f"{info.prefix}… ({info.name}) now has {credits(info.balance)} credits")


@main.command("worker")
@click.option("--server", default=None, help="The API server's URL [env OMNIFLASH_SERVER].")
@click.option(
    "--token",
    default=None,
    help="This worker's token from `omniflash workers create` [env OMNIFLASH_WORKER_TOKEN; "
    "the variable keeps it out of the process list].",
)
@click.option("--engine", default=None, help="Engine name: preview, diffusers, … [preview].")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Scratch space for the running tasks' files [env OMNIFLASH_DATA_DIR; ./omniflash-data].",
)
@click.option(
    "--workers", type=int, default=None, help="Tasks run at once, one engine each [2; diffusers 1]."
)
@click.option("--log-level", default="info", show_default=True)
def worker_command(
    server: str | None,
    token: str | None,
    engine: str | None,
    data_dir: Path | None,
    workers: int | None,
    log_level: str,
) -> None:
    """Run workers for a remote API server: no database or storage credentials needed.

    Stops on SIGTERM or Ctrl-C, handing a running task back to the queue untried.
    """
    from omniflash.logs import configure_logging
    from omniflash.worker.http_source import ProtocolError, WorkerRejected
    from omniflash.worker.remote import run_remote_workers

    settings = _checked_engine(
        build_settings(
            server_url=server,
            worker_token=token,
            engine=engine,
            data_dir=data_dir,
            workers=workers,
        ),
        workers_given=workers is not None,
    )
    configure_logging(log_level, settings.log_format)
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per heartbeat
    if not settings.server_url:
        raise click.UsageError("name the API server: --server URL or OMNIFLASH_SERVER")
    if not settings.worker_token:
        raise click.UsageError(
            "give a worker token (omniflash workers create prints one): "
            "OMNIFLASH_WORKER_TOKEN or --token"
        )
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        if stop.is_set():
            # A second Ctrl-C: out now; a task not yet handed back returns when its lease runs out.
            os._exit(128 + signum)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    try:
        run_remote_workers(settings, stop, echo=click.echo)
    except (WorkerRejected, ProtocolError) as exc:
        raise click.ClickException(str(exc)) from exc


@main.group()
def workers() -> None:
    """Create, list and revoke the tokens of remote workers (omniflash worker)."""


@workers.command("create")
@click.option("--name", required=True, help="The worker machine's name, unique among active ones.")
@data_dir_option
def workers_create(name: str, data_dir: Path | None) -> None:
    """Create a worker token; the token itself is the last line of the output."""
    from omniflash.errors import Conflict

    try:
        token, info = _store(data_dir).workers.create(name)
    except Conflict as exc:
        raise click.ClickException(exc.message) from exc
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--name") from exc
    click.echo(
        f"created worker token {info.prefix}… ({info.name}); run "
        "`omniflash worker --server URL` with it in OMNIFLASH_WORKER_TOKEN. "
        "Store it now; it is not shown again:"
    )
    click.echo(token)


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(t)) if t else "never"


@workers.command("list")
@data_dir_option
def workers_list(data_dir: Path | None) -> None:
    """List worker tokens (name, prefix, created, last seen, state; times in UTC)."""
    rows = _store(data_dir).workers.all()
    click.echo(f"{'NAME':<20} {'PREFIX':<12} {'CREATED':<16} {'LAST SEEN':<16} STATE")
    for w in rows:
        name = w.name.split(REVOKED_MARK, 1)[0]  # a revoked token's name is freed for reuse
        state = "revoked" if w.revoked_at else "active"
        click.echo(
            f"{name[:20]:<20} {w.prefix:<12} {_when(w.created_at):<16} "
            f"{_when(w.last_seen_at):<16} {state}"
        )


@workers.command("revoke")
@click.argument("name")
@data_dir_option
def workers_revoke(name: str, data_dir: Path | None) -> None:
    """Revoke worker NAME's token; the worker stops at its next request."""
    from omniflash.errors import NotFound

    try:
        info = _store(data_dir).workers.revoke(name)
    except NotFound as exc:
        raise click.ClickException(exc.message) from exc
    click.echo(
        f"revoked worker {name} ({info.prefix}…); the tasks it was running are back in the queue"
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
