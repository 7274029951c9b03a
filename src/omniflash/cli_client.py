"""Client commands of the ``omniflash`` CLI: ``generate`` and ``tasks list|get|cancel``.

They are thin wrappers over ``omniflash.client.Client``: every server error becomes one
line on stderr (the server's own words) and a non-zero exit status.
"""

from __future__ import annotations

import contextlib
import datetime
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from omniflash.client import (
    APIStatusError,
    Client,
    ConflictError,
    NotFoundError,
    OmniflashClientError,
    Task,
    TaskFailedError,
    TaskStatus,
)
from omniflash.client.images import image_reference, is_url
from omniflash.client.protocol import DEFAULT_SERVER

__all__ = ["generate", "tasks"]

EXIT_INTERRUPTED = 130
F = TypeVar("F", bound=Callable[..., Any])


def connection_options(func: F) -> F:
    """``--server`` and ``--api-key``, read from the environment when not given."""
    func = click.option(
        "--api-key",
        envvar="OMNIFLASH_API_KEY",
        default=None,
        help="API key [env OMNIFLASH_API_KEY].",
    )(func)
    func = click.option(
        "--server",
        envvar="OMNIFLASH_SERVER",
        default=DEFAULT_SERVER,
        show_default=True,
        help="Server URL [env OMNIFLASH_SERVER].",
    )(func)
    return func


def error_line(exc: OmniflashClientError) -> str:
    """One line for an SDK error: the server's message, then its type and status."""
    if isinstance(exc, APIStatusError):
        return f"{exc.message} ({exc.type}, HTTP {exc.status_code})"
    return exc.message


@contextlib.contextmanager
def reported_errors() -> Iterator[None]:
    """Turn SDK errors into click's one-line ``Error: …`` and exit status 1."""
    try:
        yield
    except OmniflashClientError as exc:
        raise click.ClickException(error_line(exc)) from exc


class Interrupted(click.ClickException):
    """An error after Ctrl-C: one ``Error: …`` line, and the interrupted exit status."""

    exit_code = EXIT_INTERRUPTED


def open_client(server: str, api_key: str | None) -> Client:
    if not api_key:
        raise click.ClickException("no API key: pass --api-key or set OMNIFLASH_API_KEY")
    return Client(server, api_key)


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def credits_text(amount: float) -> str:
    return f"{amount:g} credit" + ("" if amount == 1 else "s")


def when(timestamp: int | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


# -- generate ---------------------------------------------------------------------------------


@click.command(short_help="Generate a video, show its progress, save it.")
@click.argument("prompt")
@click.option("--duration", type=int, default=None, help="Seconds: 4, 6, 8 or 10 [6].")
@click.option("--resolution", default=None, help="720p, 1080p or 4k [720p].")
@click.option("--aspect-ratio", default=None, help="16:9, 9:16, 1:1, … [16:9].")
@click.option(
    "--image",
    "images",
    multiple=True,
    metavar="PATH_OR_URL",
    help="An image: a local file (uploaded) or a URL. Repeat for 3 references.",
)
@click.option("--video", default=None, metavar="URL", help="A reference video URL.")
@click.option(
    "--type",
    "generation_type",
    type=click.Choice(["frame", "reference"]),
    default=None,
    help="How the images are used: first frame, or references.",
)
@click.option("--seed", type=int, default=None, help="Seed, for repeatable results.")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where to save the video [TASK_ID.mp4].",
)
@click.option("--no-wait", is_flag=True, help="Submit, print the task id and exit.")
@click.option(
    "--timeout", type=float, default=900.0, show_default=True, help="Seconds to wait at most."
)
@connection_options
def generate(
    prompt: str,
    duration: int | None,
    resolution: str | None,
    aspect_ratio: str | None,
    images: tuple[str, ...],
    video: str | None,
    generation_type: str | None,
    seed: int | None,
    output: Path | None,
    no_wait: bool,
    timeout: float,
    server: str,
    api_key: str | None,
) -> None:
    """Generate a video from PROMPT, wait for it with a progress bar, and save it.

    Ctrl-C while waiting asks whether to cancel the task (it is refunded) or leave it
    running on the server; a task that completed meanwhile is saved.  Either way the
    exit status is 130.
    """
    with reported_errors(), open_client(server, api_key) as client:
        task = client.videos.generate(
            prompt,
            duration=duration,
            resolution=resolution,
            aspect_ratio=aspect_ratio,
            images=[image_url(client, image) for image in images],
            video=video,
            generation_type=generation_type,
            seed=seed,
        )
        if no_wait:
            click.echo(task.id)
            return
        click.echo(f"submitted {task.id}", err=True)
        try:
            done = wait_with_progress(client, task.id, timeout)
        except KeyboardInterrupt:
            after_interrupt(client, task.id, output)
        except TaskFailedError as exc:
            raise click.ClickException(
                f"task {exc.task_id} {exc.task.status}: {exc.reason}"
            ) from exc
        save_video(client, done, output)


def image_url(client: Client, image: str) -> str:
    """A URL for ``image``: a local file is uploaded (``POST /v1/uploads/images``).

    A server without uploads (404) gets the file inline, as a ``data:`` URI.
    """
    if is_url(image):
        return image
    try:
        return client.uploads.create(image).url
    except NotFoundError:
        return image_reference(image)


def save_video(client: Client, done: Task, output: Path | None) -> None:
    """Download a completed task's video and print the result line on stdout."""
    target = output or Path(f"{done.id}.mp4")
    try:
        client.tasks.download(done, target)
    except OmniflashClientError as exc:
        raise click.ClickException(
            f"task {done.id} completed but the download failed: {error_line(exc)}; "
            f"retry with: omniflash tasks get {done.id} -o {target}"
        ) from exc
    seconds = f" in {done.actual_time} s" if done.actual_time is not None else ""
    cost = f", {credits_text(done.credits_cost)}" if done.credits_cost is not None else ""
    click.echo(
        f"completed {done.id}{seconds}{cost}: saved {target} ({human_size(target.stat().st_size)})"
    )


def wait_with_progress(client: Client, task_id: str, timeout: float) -> Task:
    """``tasks.wait`` with a rich progress bar on stderr: status, percent, elapsed time.

    The bar moves with the task's events (``GET /v1/tasks/{id}/events``) as they happen;
    against a server without them, ``wait`` polls (after 1 s, then every 2 s)."""
    console = Console(stderr=True)
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("submitted", total=100)

        def show(task: Task) -> None:
            progress.update(bar, completed=task.progress, description=task.status)

        return client.tasks.wait(
            task_id, timeout=timeout, first_delay=1.0, poll_interval=2.0, on_progress=show
        )


def after_interrupt(client: Client, task_id: str, output: Path | None) -> NoReturn:
    """After Ctrl-C: cancel the task if the user says so, else leave it; exit 130 either way.

    A task that finished meanwhile cannot be cancelled any more: a completed one was paid
    for, so its video is saved; a failed one was refunded.
    """
    try:
        cancel = click.confirm(f"\nCancel task {task_id}?", default=False, err=True)
    except click.Abort:
        cancel = False
    try:
        with reported_errors():
            report_interrupted(client, task_id, output, cancel)
    except click.ClickException as exc:
        raise Interrupted(exc.message) from exc
    raise SystemExit(EXIT_INTERRUPTED)


def report_interrupted(client: Client, task_id: str, output: Path | None, cancel: bool) -> None:
    """Cancel (or look at) the task after Ctrl-C, and say where it stands."""
    try:
        task = client.tasks.cancel(task_id) if cancel else client.tasks.get(task_id)
    except ConflictError:
        task = client.tasks.get(task_id)  # it finished before the cancel arrived
    if task.status == TaskStatus.CANCELLED:
        click.echo(f"cancelled {task_id} (refunded)", err=True)
    elif task.status == TaskStatus.COMPLETED and cancel:
        click.echo(f"{task_id} completed before it could be cancelled", err=True)
        save_video(client, task, output)
    elif task.status == TaskStatus.COMPLETED:
        target = output or Path(f"{task_id}.mp4")
        click.echo(
            f"{task_id} completed; save it with: omniflash tasks get {task_id} -o {target}",
            err=True,
        )
    elif task.status == TaskStatus.FAILED:
        reason = task.error.message if task.error else "no reason given"
        click.echo(f"{task_id} failed: {reason} (refunded)", err=True)
    else:
        click.echo(
            f"{task_id} is still running; see it with: omniflash tasks get {task_id}",
            err=True,
        )


# -- tasks ------------------------------------------------------------------------------------


@click.group()
def tasks() -> None:
    """List, show and cancel your tasks."""


@tasks.command("list")
@click.option("--limit", type=click.IntRange(1, 100), default=20, show_default=True)
@click.option("--after", default=None, metavar="TASK_ID", help="Start after this task.")
@click.option("--json", "as_json", is_flag=True, help="Print the tasks as a JSON array.")
@connection_options
def tasks_list(
    limit: int, after: str | None, as_json: bool, server: str, api_key: str | None
) -> None:
    """Your tasks, newest first."""
    with reported_errors(), open_client(server, api_key) as client:
        page = client.tasks.list(limit=limit, after=after)
    if as_json:
        click.echo(json.dumps([dict(t.raw) for t in page], indent=2))
        return
    click.echo(f"{'ID':<31} {'STATUS':<10} {'PROG':>4} {'CREATED':<19} {'CREDITS':>7}  PROMPT")
    for t in page:
        credit = "-" if t.credits_cost is None else f"{t.credits_cost:g}"
        click.echo(
            f"{t.id:<31} {t.status:<10} {t.progress:>3}% {when(t.created):<19} {credit:>7}  "
            f"{(t.prompt or '')[:40]}"
        )
    if page.has_more and page.next_after:
        click.echo(f"(more: omniflash tasks list --after {page.next_after})")


@tasks.command("get")
@click.argument("task_id")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Save the video here (a completed task).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the task's data as JSON.")
@connection_options
def tasks_get(
    task_id: str, output: Path | None, as_json: bool, server: str, api_key: str | None
) -> None:
    """Show one task; with -o, save its video."""
    with reported_errors(), open_client(server, api_key) as client:
        task = client.tasks.get(task_id)
        if output is not None:
            client.tasks.download(task, output)
    if as_json:
        click.echo(json.dumps(dict(task.raw), indent=2))
    else:
        for name, value in describe(task):
            click.echo(f"{name + ':':<10} {value}")
    if output is not None:
        click.echo(f"saved {output} ({human_size(output.stat().st_size)})", err=as_json)


def describe(task: Task) -> list[tuple[str, str]]:
    """The lines ``tasks get`` prints, in the order a person reads them."""
    rows = [("id", task.id), ("status", task.status), ("progress", f"{task.progress}%")]
    if task.prompt is not None:
        rows.append(("prompt", task.prompt))
    rows.append(("created", when(task.created)))
    if task.completed is not None:
        rows.append(("completed", f"{when(task.completed)} ({task.actual_time} s)"))
    if task.credits_cost is not None:
        cost = "" if task.cost is None else f" (cost {task.cost:g})"
        rows.append(("credits", f"{task.credits_cost:g}{cost}"))
    if task.video_url:
        rows.append(("video", task.video_url))
        rows.append(("expires", when(task.expires_at)))
    if task.error is not None:
        rows.append(("error", task.error.message))
    return rows


@tasks.command("cancel")
@click.argument("task_id")
@connection_options
def tasks_cancel(task_id: str, server: str, api_key: str | None) -> None:
    """Cancel a pending or processing task; it is refunded."""
    with reported_errors(), open_client(server, api_key) as client:
        task = client.tasks.cancel(task_id)
    click.echo(f"{task.status} {task.id}")
