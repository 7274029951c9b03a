"""``omniflash generate`` and ``omniflash tasks``, run as a user would: in a subprocess."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from omniflash.media.encode import probe_mp4
from tests.client.stubs import ImageHost, png_bytes
from tests.conftest import LiveServer, free_port, omniflash_cmd, wait_for_task

TASK_ID = re.compile(r"task_[0-9A-Z]{26}")


def cli_env(server: LiveServer | None = None, key: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIFLASH_")}
    env["COLUMNS"] = "120"
    if server is not None:
        env["OMNIFLASH_SERVER"] = server.url
        env["OMNIFLASH_API_KEY"] = key or server.api_key
    return env


def omniflash(
    *args: str, env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        omniflash_cmd(*args), env=env, cwd=cwd, capture_output=True, text=True, timeout=90
    )


def test_generate_saves_the_video(server: LiveServer, tmp_path: Path) -> None:
    out = tmp_path / "kite.mp4"
    result = omniflash(
        "generate",
        "a red kite over the sea",
        "--duration", "4",
        "--resolution", "720p",
        "--aspect-ratio", "16:9",
        "--seed", "3",
        "-o", str(out),
        "--server", server.url,
        "--api-key", server.api_key,
        env=cli_env(),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(
        rf"completed {TASK_ID.pattern} in \d+ s, 1 credit: saved {re.escape(str(out))} "
        r"\(\d+\.\d KB\)\n",
        result.stdout,
    ), result.stdout
    assert re.match(rf"submitted {TASK_ID.pattern}\n", result.stderr)
    assert "completed" in result.stderr and "100%" in result.stderr, "the progress bar"
    info = probe_mp4(out)
    assert (info.width, info.height, info.frames) == (1280, 720, 96)


def test_generate_with_a_local_image_from_the_environment(
    server: LiveServer, tmp_path: Path
) -> None:
    (tmp_path / "first.png").write_bytes(png_bytes())
    result = omniflash(
        "generate",
        "the first frame comes alive",
        "--duration", "4",
        "--aspect-ratio", "9:16",
        "--image", "first.png",
        "--type", "frame",
        env=cli_env(server),
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    task_id = TASK_ID.search(result.stdout)
    assert task_id is not None
    saved = tmp_path / f"{task_id.group()}.mp4"
    info = probe_mp4(saved)
    assert (info.width, info.height) == (720, 1280)
    with server.client() as http:
        task = http.get(f"/v1/tasks/{task_id.group()}").json()["data"]
    assert task["request"]["mode"] == "frame" and task["request"]["image_count"] == 1


def test_tasks_list_get_and_cancel(server: LiveServer, images: ImageHost, tmp_path: Path) -> None:
    key = server.create_key(100, "--rpm", "100000")
    env = cli_env(server, key)
    submitted = omniflash("generate", "listed", "--duration", "4", "--no-wait", env=env)
    assert submitted.returncode == 0, submitted.stderr
    task_id = submitted.stdout.strip()
    assert TASK_ID.fullmatch(task_id)
    with server.client(key) as http:
        wait_for_task(http, task_id)

    listed = omniflash("tasks", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()
    assert header.split() == ["ID", "STATUS", "PROG", "CREATED", "CREDITS", "PROMPT"]
    assert row.split()[:3] == [task_id, "completed", "100%"] and row.endswith("listed")

    shown = omniflash("tasks", "get", task_id, "-o", str(tmp_path / "got.mp4"), env=env)
    assert shown.returncode == 0, shown.stderr
    fields = dict(line.split(":", 1) for line in shown.stdout.splitlines() if ": " in line)
    assert fields["status"].strip() == "completed" and fields["prompt"].strip() == "listed"
    assert fields["video"].strip().startswith(server.url + "/v1/files/")
    assert probe_mp4(tmp_path / "got.mp4").frames == 96

    as_json = omniflash("tasks", "get", task_id, "--json", env=env)
    assert json.loads(as_json.stdout)["id"] == task_id

    held_url = images.held_url()
    try:
        held = omniflash(
            "generate", "held", "--duration", "4", "--image", held_url, "--no-wait", env=env
        )
        held_id = held.stdout.strip()
        cancelled = omniflash("tasks", "cancel", held_id, env=env)
        assert cancelled.returncode == 0, cancelled.stderr
        assert cancelled.stdout == f"cancelled {held_id}\n"
    finally:
        images.release(held_url)

    refused = omniflash("tasks", "cancel", task_id, env=env)
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr == (
        f"Error: Task {task_id} is already completed and cannot be cancelled "
        "(conflict_error, HTTP 409)\n"
    )


@pytest.mark.parametrize(
    ("args", "env_kind", "expected"),
    [
        (
            ["generate", "x", "--duration", "5"],
            "ok",
            "Error: invalid duration 5, must be one of 4/6/8/10 (invalid_duration, HTTP 400)",
        ),
        (
            ["tasks", "list"],
            "bad key",
            "Error: Authentication failed. Please check your API key "
            "(authentication_error, HTTP 401)",
        ),
        (
            ["tasks", "get", "task_00000000000000000000000000"],
            "ok",
            "Error: No task 'task_00000000000000000000000000' for this API key "
            "(not_found_error, HTTP 404)",
        ),
        (["tasks", "list"], "no key", "Error: no API key: pass --api-key or set OMNIFLASH_API_KEY"),
        (
            ["generate", "x", "--image", "missing.png"],
            "ok",
            "Error: cannot read image 'missing.png': No such file or directory",
        ),
    ],
)
def test_errors_are_one_line_and_exit_non_zero(
    server: LiveServer, tmp_path: Path, args: list[str], env_kind: str, expected: str
) -> None:
    env = cli_env(server, "of_wrong" if env_kind == "bad key" else None)
    if env_kind == "no key":
        del env["OMNIFLASH_API_KEY"]
    result = omniflash(*args, env=env, cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (1, "", expected + "\n")


def test_unreachable_server_is_one_line(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = omniflash("tasks", "list", "--server", url, "--api-key", "k", env=cli_env())
    assert result.returncode == 1
    assert re.fullmatch(rf"Error: GET {url}/v1/tasks failed: .+\n", result.stderr)


def test_a_failed_task_ends_with_its_message(server: LiveServer) -> None:
    gone = f"http://127.0.0.1:{free_port()}/gone.png"
    result = omniflash("generate", "x", "--duration", "4", "--image", gone, env=cli_env(server))
    assert result.returncode == 1
    last = result.stderr.splitlines()[-1]
    assert re.fullmatch(rf"Error: task {TASK_ID.pattern} failed: image_urls\[0\]: .+", last)
    assert sum(line.startswith("Error:") for line in result.stderr.splitlines()) == 1


@pytest.mark.parametrize(("answer", "status"), [("y", "cancelled"), ("n", "processing")])
def test_ctrl_c_asks_whether_to_cancel(
    server: LiveServer, images: ImageHost, answer: str, status: str
) -> None:
    key = server.create_key(100, "--rpm", "100000")
    held_url = images.held_url()
    proc = subprocess.Popen(
        omniflash_cmd("generate", "interrupted", "--duration", "4", "--image", held_url),
        env=cli_env(server, key),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        first_line = proc.stderr.readline()
        assert first_line.startswith("submitted task_"), first_line
        task_id = first_line.split()[1]
        with server.client(key) as http:
            wait_for_task(http, task_id, until=("processing",))
            proc.send_signal(signal.SIGINT)
            _, stderr = proc.communicate(answer + "\n", timeout=30)
            assert proc.returncode == 130, stderr
            assert f"Cancel task {task_id}? [y/N]" in stderr
            assert http.get(f"/v1/tasks/{task_id}").json()["data"]["status"] == status
            if answer == "n":
                assert f"omniflash tasks get {task_id}" in stderr
    finally:
        images.release(held_url)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_the_progress_bar_follows_the_task_events(server: LiveServer, tmp_path: Path) -> None:
    out = str(tmp_path / "followed.mp4")
    result = omniflash("generate", "followed", "--duration", "4", "-o", out, env=cli_env(server))
    assert result.returncode == 0, result.stderr
    task_id = TASK_ID.search(result.stderr)
    assert task_id is not None and "100%" in result.stderr
    log = server.log()
    assert f"GET /v1/tasks/{task_id.group()}/events" in log, "the bar followed the events"
    assert f"GET /v1/tasks/{task_id.group()} HTTP" not in log, "and never polled"
