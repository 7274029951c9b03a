"""``omniflash generate`` on a pseudo-terminal, as a person runs it: Ctrl-C is a keystroke."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest

from omniflash.media.encode import probe_mp4
from tests.cli.test_cli_client import cli_env
from tests.client.stubs import ImageHost
from tests.conftest import LiveServer, omniflash_cmd, wait_for_task

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# Run the command as the leader of a new session whose controlling terminal is the pty,
# so that the terminal turns Ctrl-C into SIGINT for it, as a shell's terminal does.
TAKE_TERMINAL = (
    "import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)
CTRL_C = b"\x03"


class Terminal:
    """A command whose stdin, stdout and stderr are one pseudo-terminal, 120 columns wide."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        assert args[0] == sys.executable
        self.proc = subprocess.Popen(
            [sys.executable, "-c", TAKE_TERMINAL, *args[1:]],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            start_new_session=True,
        )
        os.close(slave)
        self._master = master
        self._output = bytearray()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self._master, 4096)
            except OSError:  # EIO: the command closed the terminal
                return
            if not chunk:
                return
            with self._lock:
                self._output += chunk

    @property
    def text(self) -> str:
        """Everything shown so far, without colours and cursor moves."""
        with self._lock:
            raw = bytes(self._output)
        return ANSI.sub("", raw.decode(errors="replace")).replace("\r\n", "\n")

    def expect(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while (found := re.search(pattern, self.text)) is None:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"no {pattern!r} on the terminal:\n{self.text}")
            time.sleep(0.05)
        return found

    def type(self, keys: bytes) -> None:
        os.write(self._master, keys)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        self._reader.join(timeout=10)
        os.close(self._master)


def interrupt_after_completion(
    server: LiveServer, images: ImageHost, out: Path, answer: bytes
) -> tuple[str, str, int, float]:
    """Ctrl-C while the task waits on its image, the task completes while the question is
    asked, then ``answer``: the task id, the terminal's text, the exit status, the balance."""
    key = server.create_key(100, "--rpm", "100000")
    held_url = images.held_url()
    args = omniflash_cmd("generate", "too late", "--duration", "4", "--image", held_url)
    terminal = Terminal([*args, "-o", str(out)], cli_env(server, key))
    try:
        task_id = terminal.expect(r"submitted (task_[0-9A-Z]{26})").group(1)
        with server.client(key) as http:
            wait_for_task(http, task_id, until=("processing",))
            terminal.expect(r"processing")  # the progress bar is waiting
            terminal.type(CTRL_C)
            terminal.expect(rf"Cancel task {task_id}\? \[y/N\]: ")
            images.release(held_url)
            assert wait_for_task(http, task_id)["status"] == "completed"
            terminal.type(answer + b"\r")
            status = terminal.proc.wait(timeout=60)
            balance = http.get("/v1/account").json()["data"]["balance"]
    finally:
        images.release(held_url)
        terminal.close()
    return task_id, terminal.text, status, balance


@pytest.mark.timeout(120)
def test_ctrl_c_then_cancel_after_the_task_completed_saves_the_video(
    server: LiveServer, images: ImageHost, tmp_path: Path
) -> None:
    """The cancel gets 409: the CLI says the task completed, saves the video that was
    paid for, and exits 130 as documented."""
    out = tmp_path / "late.mp4"
    task_id, shown, status, balance = interrupt_after_completion(server, images, out, b"y")
    assert status == 130, shown
    assert f"{task_id} completed before it could be cancelled" in shown
    assert re.search(
        rf"completed {task_id} in \d+ s, 1 credit: saved {re.escape(str(out))} \(\d+\.\d KB\)",
        shown,
    ), shown
    assert "Error" not in shown and "409" not in shown
    assert probe_mp4(out).frames == 96
    assert balance == 99, "the task was charged, not refunded"


@pytest.mark.timeout(120)
def test_ctrl_c_then_leave_it_after_the_task_completed_says_how_to_save_it(
    server: LiveServer, images: ImageHost, tmp_path: Path
) -> None:
    out = tmp_path / "later.mp4"
    task_id, shown, status, _ = interrupt_after_completion(server, images, out, b"n")
    assert status == 130, shown
    assert f"{task_id} completed; save it with: omniflash tasks get {task_id} -o {out}" in shown
    assert "still running" not in shown and not out.exists()


@pytest.mark.timeout(120)
def test_ctrl_c_then_cancel_while_running_refunds(server: LiveServer, images: ImageHost) -> None:
    key = server.create_key(100, "--rpm", "100000")
    held_url = images.held_url()
    args = omniflash_cmd("generate", "stopped", "--duration", "4", "--image", held_url)
    terminal = Terminal(args, cli_env(server, key))
    try:
        task_id = terminal.expect(r"submitted (task_[0-9A-Z]{26})").group(1)
        with server.client(key) as http:
            wait_for_task(http, task_id, until=("processing",))
            terminal.expect(r"processing")
            terminal.type(CTRL_C)
            terminal.expect(rf"Cancel task {task_id}\? \[y/N\]: ")
            terminal.type(b"y\r")
            assert terminal.proc.wait(timeout=60) == 130, terminal.text
            task = http.get(f"/v1/tasks/{task_id}").json()["data"]
            balance = http.get("/v1/account").json()["data"]["balance"]
    finally:
        images.release(held_url)
        terminal.close()
    assert f"cancelled {task_id} (refunded)" in terminal.text
    assert task["status"] == "cancelled" and balance == 100
