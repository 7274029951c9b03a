"""The ``omniflash`` command: serve, keys, and (in ``cli_client``) generate and tasks.

Every command builds its ``Settings`` once, here, from the environment and its flags.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

import click

from omniflash import __version__
from omniflash.pricing import credits, to_millicredits
from omniflash.settings import Settings

__all__ = ["main"]

data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the database, results and secret live [env OMNIFLASH_DATA_DIR; ./omniflash-data].",
)


def build_settings(**overrides: Any) -> Settings:
    return Settings.from_env(os.environ, **overrides)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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
    from omniflash.engines import available_engines
    from omniflash.logs import configure_logging
    from omniflash.store import Store

    settings = build_settings(
        host=host, port=port, data_dir=data_dir, workers=workers, engine=engine
    )
    configure_logging(log_level, settings.log_format)
    if settings.engine not in available_engines() and ":" not in settings.engine:
        raise click.UsageError(
            f"unknown engine {settings.engine!r}; available: {', '.join(available_engines())}"
        )
    if settings.engine == "diffusers":
        _check_diffusers(settings.recipes_path)
        if workers is None and not os.environ.get("OMNIFLASH_WORKERS"):
            # Each worker holds its own copy of the models: one per GPU, not two on one.
            settings = dataclasses.replace(settings, workers=1)
    store = Store(settings.database_url)
    first = store.keys.create_first(
        "default", to_millicredits(100), settings.default_rpm, settings.default_max_concurrent
    )
    if first is not None:
        key, _info = first
        click.echo("No API keys yet; created one with 100 credits. It is shown only once:")
        click.echo(f"  {key}")
    app = create_app(settings, store=store)
    click.echo(
        f"omniflash {__version__}: engine {settings.engine}, {settings.workers} worker(s), "
        f"data in {settings.data_dir.resolve()}, listening on http://{settings.host}:{settings.port}"
    )
    # log_config=None: uvicorn keeps configure_logging's handler (formats, redaction).
    uvicorn.run(
        app, host=settings.host, port=settings.port, log_level=log_level.lower(), log_config=None
    )


def _check_diffusers(recipes_path: Path | None) -> None:
    """Stop before anything starts when the extra is missing or the recipes are wrong."""
    from omniflash.engines.diffusion import load_recipes, require_gpu_extra

    try:
        require_gpu_extra()
        load_recipes(recipes_path)
    except (RuntimeError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc


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


def _add_client_commands() -> None:
    from omniflash.cli_client import generate, tasks

    main.add_command(generate)
    main.add_command(tasks)


_add_client_commands()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
