"""``omniflash workers`` and the argument checks of ``omniflash worker``, in process."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from omniflash.cli import main
from omniflash.settings import Settings
from omniflash.store import Store


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in ("OMNIFLASH_DATABASE_URL", "OMNIFLASH_SERVER", "OMNIFLASH_WORKER_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "data"


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_create_list_revoke(data_dir: Path) -> None:
    code, out = run("workers", "create", "--name", "gpu-1", "--data-dir", str(data_dir))
    assert code == 0, out
    token = out.strip().splitlines()[-1]
    assert token.startswith("ofw_") and len(token) > 40 and token not in out.splitlines()[0]
    store = Store(Settings(data_dir=data_dir).database_url)
    try:
        info = store.workers.authenticate(token)
        assert info is not None and info.name == "gpu-1"
        code, out = run("workers", "create", "--name", "gpu-1", "--data-dir", str(data_dir))
        assert code == 1 and "exists" in out
        code, out = run("workers", "list", "--data-dir", str(data_dir))
        lines = out.splitlines()
        assert lines[0].split() == ["NAME", "PREFIX", "CREATED", "LAST", "SEEN", "STATE"]
        assert lines[1].split()[:2] == ["gpu-1", token[:11]] and lines[1].endswith("active")
        assert token not in out
        code, out = run("workers", "revoke", "gpu-1", "--data-dir", str(data_dir))
        assert code == 0 and "revoked worker gpu-1" in out
        assert store.workers.authenticate(token) is None
        code, out = run("workers", "revoke", "gpu-1", "--data-dir", str(data_dir))
        assert code == 1 and "no active worker" in out
        # The name is free again; the revoked token is listed under its own name.
        assert run("workers", "create", "--name", "gpu-1", "--data-dir", str(data_dir))[0] == 0
        rows = run("workers", "list", "--data-dir", str(data_dir))[1].splitlines()[1:]
        assert [(r.split()[0], r.split()[-1]) for r in rows] == [
            ("gpu-1", "revoked"),
            ("gpu-1", "active"),
        ]
    finally:
        store.close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "--server URL or OMNIFLASH_SERVER"),
        (("--server", "http://127.0.0.1:9"), "OMNIFLASH_WORKER_TOKEN or --token"),
        (("--server", "http://x", "--token", "t", "--engine", "nope"), "unknown engine 'nope'"),
    ],
)
def test_worker_needs_a_server_a_token_and_a_known_engine(
    data_dir: Path, args: tuple[str, ...], message: str
) -> None:
    code, out = run("worker", *args, "--data-dir", str(data_dir))
    assert code == 2 and message in out
