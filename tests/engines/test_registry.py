"""Engines by name: the ``omniflash.engines`` entry-point group, in this process and in a
real server's spawned engine processes; ``register_engine`` only in this process."""

from __future__ import annotations

import os
import tomllib
from importlib.metadata import EntryPoint, EntryPoints
from pathlib import Path

import pytest

from omniflash.engines import base
from omniflash.engines.base import (
    ENTRY_POINT_GROUP,
    available_engines,
    create_engine,
    register_engine,
)
from omniflash.engines.preview import PreviewEngine
from omniflash.settings import Settings
from tests.conftest import running_server, wait_for_task

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"

STRIPES_MODULE = '''
"""A third-party engine: the preview engine, recording where each job ran."""

import os

from omniflash.engines.preview import PreviewEngine


class StripesEngine(PreviewEngine):
    name = "stripes"

    def generate(self, job, progress, cancelled):
        result = super().generate(job, progress, cancelled)
        with open(self.settings.data_dir / "stripes.log", "a") as log:
            log.write(f"{job.task_id} {os.getpid()}\\n")
        return result
'''


class FakeEngine(PreviewEngine):
    name = "fake"


def stripes_package(root: Path) -> Path:
    """An installed distribution as pip leaves it: a module and its ``*.dist-info``."""
    root.mkdir()
    (root / "omniflash_stripes.py").write_text(STRIPES_MODULE)
    info = root / "omniflash_stripes-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: omniflash-stripes\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\nstripes = omniflash_stripes:StripesEngine\n"
    )
    return root


def only_entry_points(monkeypatch: pytest.MonkeyPatch, **targets: str) -> None:
    points = EntryPoints(EntryPoint(n, t, ENTRY_POINT_GROUP) for n, t in targets.items())
    monkeypatch.setattr(base, "entry_points", lambda group: points.select(group=group))


def test_pyproject_declares_the_builtins_as_the_fallback_does() -> None:
    declared = tomllib.loads(PYPROJECT.read_text())["project"]["entry-points"][ENTRY_POINT_GROUP]
    assert declared == base._BUILTIN_FALLBACK


def test_builtins_are_found_through_the_entry_point_group(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    only_entry_points(monkeypatch, preview=f"{__name__}:FakeEngine")
    assert isinstance(create_engine("preview", Settings(data_dir=tmp_path)), FakeEngine)


def test_builtins_work_when_the_installed_metadata_predates_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    only_entry_points(monkeypatch)
    assert {"preview", "diffusers"} <= set(available_engines())
    assert type(create_engine("preview", Settings(data_dir=tmp_path))) is PreviewEngine


def test_a_third_party_entry_point_is_found_in_this_process(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.syspath_prepend(str(stripes_package(tmp_path / "site")))
    assert "stripes" in available_engines()
    engine = create_engine("stripes", Settings(data_dir=tmp_path))
    assert engine.name == "stripes" and type(engine).__module__ == "omniflash_stripes"


def test_register_engine_and_unknown_names(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(base, "_registered", {})
    with pytest.raises(
        ValueError, match=r"unknown engine 'fake'.*'omniflash\.engines' entry-point"
    ):
        create_engine("fake", Settings(data_dir=tmp_path))
    register_engine("fake", FakeEngine)
    assert "fake" in available_engines()
    assert isinstance(create_engine("fake", Settings(data_dir=tmp_path)), FakeEngine)


@pytest.mark.timeout(120)
def test_an_entry_point_engine_runs_in_a_real_servers_engine_process(tmp_path: Path) -> None:
    """``omniflash serve --engine stripes`` with the package on PYTHONPATH: the engine
    process the worker spawns finds it through the entry point and completes a task."""
    site = stripes_package(tmp_path / "site")
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
    with running_server(tmp_path, "--workers", "1", "--engine", "stripes", PYTHONPATH=path) as srv:
        assert "engine stripes" in srv.log()
        with srv.client() as http:
            body = {"model": "Omni-Flash-Ext", "prompt": "stripes", "duration": 4}
            submitted = http.post("/v1/videos/generations", json=body)
            assert submitted.status_code == 200, submitted.text
            task_id = submitted.json()["data"][0]["task_id"]
            done = wait_for_task(http, task_id, timeout=90)
        assert done["status"] == "completed", done
        assert srv.proc is not None
        server_pid = srv.proc.pid
    ran = (srv.data_dir / "stripes.log").read_text().split()
    assert ran[0] == task_id
    assert int(ran[1]) != server_pid, "the job ran in the worker's spawned engine process"
