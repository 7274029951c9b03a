"""Podman for the shipping tests: the base image, the omniflash images, containers.

The images are built once per machine and reused: ``localhost/debian-py:bookworm`` (a
Debian base made with debootstrap, standing in for the public ``python:3.11-slim``,
which cannot be pulled everywhere tests run) and ``localhost/omniflash-api:test``, which
is rebuilt when the sources it copies change (podman's layer cache does the work).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
BASE_IMAGE = "localhost/debian-py:bookworm"
API_IMAGE = "localhost/omniflash-api:test"
STANDINS_IMAGE = "localhost/omniflash-standins:test"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
DEBIAN_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")


def podman(*args: str, timeout: float = 120, check: bool = True) -> str:
    """Run ``podman ARGS``; returns stdout, raises with stderr on failure."""
    proc = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args[:3])}… failed:\n{proc.stderr[-4000:]}")
    return proc.stdout


def missing() -> str | None:
    """Why containers cannot run here, or None."""
    if shutil.which("podman") is None:
        return "podman is not installed (apt-get install podman runc)"
    probe = subprocess.run(["podman", "info"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return f"podman cannot run here: {probe.stderr.strip().splitlines()[-1:]}"
    return None


def image_exists(name: str) -> bool:
    probe = subprocess.run(["podman", "image", "exists", name], check=False, timeout=30)
    return probe.returncode == 0


def debian_mirror() -> str:
    """The Debian mirror apt uses on this machine (its ``URIs:`` line)."""
    if DEBIAN_SOURCES.exists():
        for line in DEBIAN_SOURCES.read_text().splitlines():
            if line.startswith("URIs:"):
                return line.split()[1]
    return "http://deb.debian.org/debian"


def ensure_base_image() -> None:
    """Make the Debian base with python3 once (about a minute), if it is not there."""
    if image_exists(BASE_IMAGE):
        return
    if shutil.which("debootstrap") is None:
        raise RuntimeError("the base image needs debootstrap (apt-get install debootstrap)")
    with tempfile.TemporaryDirectory(prefix="omniflash-base-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=python3,python3-venv,python3-pip,ca-certificates",
                "bookworm",
                str(rootfs),
                debian_mirror(),
            ],
            check=True,
            capture_output=True,
            timeout=900,
        )
        with subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE) as tar:
            subprocess.run(
                ["podman", "import", "-", BASE_IMAGE],
                stdin=tar.stdout,
                check=True,
                capture_output=True,
                timeout=600,
            )
        if tar.returncode != 0:
            raise RuntimeError(f"tar of the base image's root exited {tar.returncode}")


def build_api_image() -> float:
    """Build the ``api`` target on the local base; returns the seconds it took."""
    ensure_base_image()
    started = time.monotonic()
    args = ["build", "--network", "host", "--format", "docker", "--target", "api"]
    if CA_BUNDLE.exists():  # pip in the build trusts what pip on this machine trusts
        args += ["-v", f"{CA_BUNDLE}:{CA_BUNDLE}:ro"]
    args += ["--build-arg", f"BASE={BASE_IMAGE}", "-t", API_IMAGE, "-f", "Containerfile"]
    podman(*args, str(ROOT), timeout=900)
    return time.monotonic() - started


def build_standins_image() -> float:
    """PostgreSQL, nginx and moto in one image, for compose.yaml's public images."""
    ensure_base_image()
    started = time.monotonic()
    args = ["build", "--network", "host", "--build-arg", f"BASE={BASE_IMAGE}"]
    if CA_BUNDLE.exists():
        args += ["-v", f"{CA_BUNDLE}:{CA_BUNDLE}:ro"]
    podman(*args, "-t", STANDINS_IMAGE, str(ROOT / "tests/shipping/standins"), timeout=900)
    return time.monotonic() - started


@dataclass
class Container:
    """A detached container on the host's network, removed by ``remove``."""

    name: str

    def wait_log(self, text: str, timeout: float = 60) -> None:
        """Until ``text`` appears in the container's output."""
        deadline = time.monotonic() + timeout
        while text not in self.logs():
            if not self.running():
                raise RuntimeError(f"{self.name} exited:\n{self.logs()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no {text!r} from {self.name}:\n{self.logs()}")
            time.sleep(0.2)

    def logs(self) -> str:
        """Its stdout and stderr, interleaved."""
        proc = subprocess.run(
            ["podman", "logs", self.name],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=30,
            check=False,
        )
        return proc.stdout

    def running(self) -> bool:
        state = podman("inspect", "--format", "{{.State.Running}}", self.name, check=False)
        return state.strip() == "true"

    def stop(self, grace_s: int) -> float:
        """``podman stop``: SIGTERM, then SIGKILL after ``grace_s``; returns the seconds."""
        started = time.monotonic()
        podman("stop", "--time", str(grace_s), self.name, timeout=grace_s + 60)
        return time.monotonic() - started

    def exit_code(self) -> int:
        return int(podman("inspect", "--format", "{{.State.ExitCode}}", self.name).strip())

    def remove(self) -> None:
        podman("rm", "--force", "--time", "0", self.name, check=False, timeout=60)


def run(
    image: str, *args: str, env: dict[str, str] | None = None, healthcheck: bool = False
) -> Container:
    """``podman run -d`` of ``image`` with ``args`` after its entry point."""
    name = f"omniflash-test-{uuid.uuid4().hex[:8]}"
    flags = ["run", "-d", "--name", name, "--network", "host"]
    if not healthcheck:
        flags.append("--no-healthcheck")
    for key, value in (env or {}).items():
        flags += ["-e", f"{key}={value}"]
    podman(*flags, image, *args)
    return Container(name)


@contextlib.contextmanager
def running(
    image: str, *args: str, env: dict[str, str] | None = None, healthcheck: bool = False
) -> Iterator[Container]:
    """``run``, and the container removed on the way out."""
    container = run(image, *args, env=env, healthcheck=healthcheck)
    try:
        yield container
    finally:
        container.remove()


def wait_healthy(url: str, container: Container, timeout: float = 90) -> float:
    """Until ``url/healthz`` answers 200; returns the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return time.monotonic() - started
        if not container.running():
            raise RuntimeError(f"{container.name} exited:\n{container.logs()}")
        time.sleep(0.2)
    raise RuntimeError(f"{container.name} not healthy after {timeout} s:\n{container.logs()}")
