"""The SDK's ``client.uploads`` and the CLI's ``--image PATH``, against a real server."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from omniflash.client import AsyncClient, Client, InputError, Upload
from tests.conftest import LiveServer, omniflash_cmd, running_server

pytestmark = pytest.mark.timeout(90)


def png(color: tuple[int, int, int] = (20, 200, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with running_server(tmp_path_factory.mktemp("uploads"), "--workers", "1") as live:
        yield live


def test_sdk_uploads_a_path_or_bytes_and_generates_from_the_url(
    server: LiveServer, tmp_path: Path
) -> None:
    path = tmp_path / "green.png"
    path.write_bytes(png())
    with Client(server.url, server.api_key) as client:
        upload = client.uploads.create(path)
        assert isinstance(upload, Upload) and upload.filename == "green.png"
        assert upload.content_type == "image/png" and upload.bytes == len(png())
        assert upload.expires_at is not None and upload.created_at is not None
        assert upload.expires_at - upload.created_at == 72 * 3600
        assert httpx.get(upload.url).content == png()
        from_bytes = client.uploads.create(png((1, 2, 3)), filename="dark.png")
        assert from_bytes.filename == "dark.png" and from_bytes.url != upload.url
        with pytest.raises(InputError, match="not a PNG"):
            client.uploads.create(b"plain text")
        task = client.videos.generate_and_wait("green", duration=4, images=[upload.url])
        assert task.status == "completed"
    with server.client() as http:
        data = http.get(f"/v1/tasks/{task.id}").json()["data"]
    assert data["request"]["mode"] == "frame" and data["request"]["image_count"] == 1


def test_async_sdk_uploads(server: LiveServer) -> None:
    async def run() -> Upload:
        async with AsyncClient(server.url, server.api_key) as client:
            return await client.uploads.create(png())

    upload = asyncio.run(run())
    assert upload.url.startswith(server.url + "/v1/files/uploads/")


def test_cli_image_path_is_uploaded_not_inlined(server: LiveServer, tmp_path: Path) -> None:
    (tmp_path / "first.png").write_bytes(png())
    uploads = server.data_dir / "blobs" / "uploads"
    before = set(uploads.iterdir()) if uploads.exists() else set()
    env = {**os.environ, "OMNIFLASH_SERVER": server.url, "OMNIFLASH_API_KEY": server.api_key}
    result = subprocess.run(
        omniflash_cmd("generate", "from a file", "--duration", "4", "--image", "first.png"),
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr
    added = set(uploads.iterdir()) - before
    assert len(added) == 1 and next(iter(added)).read_bytes() == png()
    assert list(tmp_path.glob("task_*.mp4"))
