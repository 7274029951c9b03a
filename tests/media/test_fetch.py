"""Fetching inputs: SSRF rules, address pinning, redirects, limits, against a real local server."""

from __future__ import annotations

import base64
import http.server
import io
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from PIL import Image

from omniflash import outbound
from omniflash.errors import BadInput
from omniflash.media.fetch import FetchPolicy, fetch_bytes, fetch_to_file

MB = 1024 * 1024
LOCAL = FetchPolicy(allow_private=True, timeout_s=5, max_bytes=MB)


def png_bytes(size: tuple[int, int] = (8, 6)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 10, 10)).save(out, "PNG")
    return out.getvalue()


@dataclass
class Seen:
    path: str
    host: str | None
    user_agent: str | None


@dataclass
class Server:
    base: str
    port: int
    seen: list[Seen] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)


class Handler(http.server.BaseHTTPRequestHandler):
    server_state: Server
    png = png_bytes()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        state = self.server_state
        state.seen.append(Seen(self.path, self.headers.get("Host"), self.headers.get("User-Agent")))
        parts = urlsplit(self.path)
        route = ROUTES.get(parts.path.split("/")[1])
        try:
            if route is None:
                self.send_error(404)
            else:
                route(self, parts.path, parse_qs(parts.query))
        except OSError:
            pass  # the client gave up first, as several tests intend

    def body(self, data: bytes, content_type: str = "application/octet-stream") -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def redirect(self, location: str, status: int = 302) -> None:
        self.send_response(status)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()


def _image(h: Handler, path: str, query: dict[str, list[str]]) -> None:
    h.body(h.png, "image/png")


def _redirect(h: Handler, path: str, query: dict[str, list[str]]) -> None:
    hops = int(path.split("/")[2])
    h.redirect("/image.png" if hops <= 1 else f"/redirect/{hops - 1}", 307 if hops % 2 else 302)


def _redirect_to(h: Handler, path: str, query: dict[str, list[str]]) -> None:
    h.redirect(query["to"][0], 301)


def _huge(h: Handler, path: str, query: dict[str, list[str]]) -> None:
    h.send_response(200)
    h.end_headers()
    chunk = b"\0" * 65536
    for _ in range(1600):  # 100 MB unless the client hangs up
        h.wfile.write(chunk)


def _lying_length(h: Handler, path: str, query: dict[str, list[str]]) -> None:
    h.send_response(200)
    h.send_header("Content-Length", query["length"][0])
    h.end_headers()
    h.wfile.write(b"x" * int(query["send"][0]))


def _drip(h: Handler, path: str, query: dict[str, list[str]]) -> None:
    h.send_response(200)
    if path.endswith("headers"):
        h.flush_headers()
        for _ in range(50):
            if h.server_state.stop.wait(0.1):
                return
            h.wfile.write(b"X-Slow: y\r\n")
            h.wfile.flush()
    h.end_headers()
    for _ in range(50):
        if h.server_state.stop.wait(0.1):
            return
        h.wfile.write(b"x")
        h.wfile.flush()


def _text(h: Handler, path: str, query: dict[str, list[str]]) -> None:
    h.body(b"this is not an image\n", "image/png")


ROUTES: dict[str, Callable[[Handler, str, dict[str, list[str]]], None]] = {
    "image.png": _image,
    "redirect": _redirect,
    "redirect-to": _redirect_to,
    "huge": _huge,
    "lying": _lying_length,
    "drip": _drip,
    "text.png": _text,
}


def serve(context: ssl.SSLContext | None = None) -> tuple[http.server.ThreadingHTTPServer, Server]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    port = httpd.server_address[1]
    scheme = "http"
    if context is not None:
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
        scheme = "https"
    state = Server(base=f"{scheme}://127.0.0.1:{port}", port=port)
    handler = type("BoundHandler", (Handler,), {"server_state": state})
    httpd.RequestHandlerClass = handler
    threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    return httpd, state


@pytest.fixture()
def server() -> Iterator[Server]:
    httpd, state = serve()
    yield state
    state.stop.set()
    httpd.shutdown()
    httpd.server_close()


def resolver(monkeypatch: pytest.MonkeyPatch, table: dict[str, list[list[str]]]) -> list[str]:
    """Answer ``getaddrinfo`` for the names in ``table``: one answer per call, the last repeats."""
    real = socket.getaddrinfo
    calls: list[str] = []

    def fake(host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        if host not in table:
            return real(host, port, *args, **kwargs)
        calls.append(host)
        answers = table[host]
        addresses = answers[min(len(calls), len(answers)) - 1]
        return [
            (
                socket.AF_INET6 if ":" in ip else socket.AF_INET,
                socket.SOCK_STREAM,
                6,
                "",
                (ip, port),
            )
            for ip in addresses
        ]

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    return calls


def only_loopback_one_is_public(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand-in for the internet: 127.0.0.1 counts as public, every other address as usual."""
    real = outbound.is_public_address
    monkeypatch.setattr(
        outbound, "is_public_address", lambda ip: str(ip) == "127.0.0.1" or real(ip)
    )


# --- successful fetches ------------------------------------------------------------------


def test_fetches_bytes_with_user_agent(server: Server) -> None:
    data = fetch_bytes(f"{server.base}/image.png", label="image_urls[0]", policy=LOCAL)
    assert data == Handler.png
    assert server.seen[-1].user_agent == "omniflash/0.1"
    assert server.seen[-1].host == f"127.0.0.1:{server.port}"


def test_fetch_to_file_streams_into_dest(server: Server, tmp_path: Path) -> None:
    dest = fetch_to_file(
        f"{server.base}/image.png", tmp_path / "in.bin", label="video_urls[0]", policy=LOCAL
    )
    assert dest.read_bytes() == Handler.png


def test_fetch_to_file_leaves_nothing_on_failure(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "in.bin"
    with pytest.raises(BadInput, match=r"^video_urls\[0\]: HTTP 404$"):
        fetch_to_file(f"{server.base}/missing", dest, label="video_urls[0]", policy=LOCAL)
    assert not dest.exists()


def test_redirect_chain_of_five_is_followed(server: Server) -> None:
    data = fetch_bytes(f"{server.base}/redirect/5", label="image_urls[0]", policy=LOCAL)
    assert data == Handler.png
    assert [s.path for s in server.seen][-1] == "/image.png"
    assert len(server.seen) == 6


def test_more_than_five_redirects_fail(server: Server) -> None:
    with pytest.raises(BadInput, match=r"^image_urls\[0\]: too many redirects \(more than 5\)"):
        fetch_bytes(f"{server.base}/redirect/6", label="image_urls[0]", policy=LOCAL)
    assert len(server.seen) == 6


@pytest.mark.parametrize("target", ["file:///etc/passwd", "ftp://127.0.0.1/x", "gopher://x/"])
def test_redirect_to_other_schemes_is_refused(server: Server, target: str) -> None:
    with pytest.raises(BadInput, match="only http and https"):
        fetch_bytes(f"{server.base}/redirect-to?to={target}", label="image_urls[2]", policy=LOCAL)


# --- SSRF --------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "[::1]"])
def test_loopback_is_refused_before_connecting(server: Server, host: str) -> None:
    url = f"http://{host}:{server.port}/image.png"
    policy = FetchPolicy(allow_private=False, timeout_s=5)
    shown = host.strip("[]")
    with pytest.raises(BadInput, match=rf"^image_urls\[0\]: address {shown} is not public$"):
        fetch_bytes(url, label="image_urls[0]", policy=policy)
    assert server.seen == []


@pytest.mark.parametrize("host", ["127.1", "2130706433", "0x7f000001", "localhost"])
def test_numeric_aliases_and_names_of_loopback_are_refused(server: Server, host: str) -> None:
    policy = FetchPolicy(allow_private=False, timeout_s=5)
    with pytest.raises(BadInput, match=rf"host {host} resolves to an address that is not public"):
        fetch_bytes(f"http://{host}:{server.port}/image.png", label="image_urls[0]", policy=policy)
    assert server.seen == []


def test_redirect_to_private_address_is_refused(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    only_loopback_one_is_public(monkeypatch)
    policy = FetchPolicy(allow_private=False, timeout_s=5)
    start = f"{server.base}/redirect-to?to=http://127.0.0.2:{server.port}/image.png"
    with pytest.raises(BadInput, match=r"^image_urls\[0\]: address 127.0.0.2 is not public$"):
        fetch_bytes(start, label="image_urls[0]", policy=policy)
    assert [s.path.split("?")[0] for s in server.seen] == ["/redirect-to"]


def test_connection_is_pinned_to_the_checked_address(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    only_loopback_one_is_public(monkeypatch)
    # A rebinding DNS server: the first answer passes the check, later ones are private.
    calls = resolver(monkeypatch, {"rebind.test": [["127.0.0.1"], ["10.0.0.1"]]})
    policy = FetchPolicy(allow_private=False, timeout_s=5)
    data = fetch_bytes(
        f"http://rebind.test:{server.port}/image.png", label="image_urls[0]", policy=policy
    )
    assert data == Handler.png
    assert calls == ["rebind.test"]
    assert server.seen[-1].host == f"rebind.test:{server.port}"


def test_each_redirect_hop_is_resolved_and_checked_again(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    only_loopback_one_is_public(monkeypatch)
    calls = resolver(monkeypatch, {"rebind.test": [["127.0.0.1"], ["10.0.0.1"]]})
    policy = FetchPolicy(allow_private=False, timeout_s=5)
    url = f"http://rebind.test:{server.port}/redirect-to?to=/image.png"
    with pytest.raises(BadInput, match=r"host rebind\.test resolves to an address that is not"):
        fetch_bytes(url, label="image_urls[0]", policy=policy)
    assert calls == ["rebind.test", "rebind.test"]
    assert len(server.seen) == 1


@pytest.mark.parametrize(
    "answers", [["8.8.8.8", "10.0.0.1"], ["10.0.0.1", "8.8.8.8"], ["127.0.0.1", "::1"]]
)
def test_every_resolved_address_must_be_public(
    server: Server, monkeypatch: pytest.MonkeyPatch, answers: list[str]
) -> None:
    only_loopback_one_is_public(monkeypatch)
    resolver(monkeypatch, {"mixed.test": [answers]})
    policy = FetchPolicy(allow_private=False, timeout_s=5)
    with pytest.raises(BadInput, match=r"host mixed\.test resolves to an address that is not"):
        fetch_bytes(
            f"http://mixed.test:{server.port}/image.png", label="image_urls[0]", policy=policy
        )
    assert server.seen == []


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/a.png", "only http and https URLs can be fetched, not 'ftp'"),
        ("file:///etc/passwd", "only http and https URLs can be fetched, not 'file'"),
        ("http://:80/a.png", "the URL has no host"),
        ("http://example.com:99999/a.png", "invalid URL"),
        ("data:text/plain;base64,aGk=", "only data:image/...;base64, URIs are accepted"),
    ],
)
def test_bad_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(BadInput, match=rf"^image_urls\[1\]: {message}"):
        fetch_bytes(url, label="image_urls[1]", policy=FetchPolicy())


# --- limits and failures -----------------------------------------------------------------


def test_http_errors_name_the_status(server: Server) -> None:
    with pytest.raises(BadInput, match=r"^image_urls\[0\]: HTTP 404$"):
        fetch_bytes(f"{server.base}/missing", label="image_urls[0]", policy=LOCAL)


def test_body_without_length_is_capped_while_reading(server: Server) -> None:
    started = time.monotonic()
    with pytest.raises(BadInput, match=r"^image_urls\[0\]: larger than 1 MB$"):
        fetch_bytes(f"{server.base}/huge", label="image_urls[0]", policy=LOCAL)
    assert time.monotonic() - started < 3


def test_declared_length_over_the_cap_is_refused_without_reading(server: Server) -> None:
    url = f"{server.base}/lying?length={20 * MB + 1}&send=10"
    policy = FetchPolicy(allow_private=True, timeout_s=5, max_bytes=20 * MB)
    with pytest.raises(BadInput, match=r"^image_urls\[0\]: larger than 20 MB$"):
        fetch_bytes(url, label="image_urls[0]", policy=policy)


def test_length_longer_than_the_body_fails(server: Server) -> None:
    with pytest.raises(BadInput, match="closed before the whole body arrived"):
        fetch_bytes(f"{server.base}/lying?length=5000&send=10", label="image_urls[0]", policy=LOCAL)


def test_body_past_declared_length_is_not_read(server: Server) -> None:
    url = f"{server.base}/lying?length=10&send={2 * MB}"
    assert fetch_bytes(url, label="image_urls[0]", policy=LOCAL) == b"x" * 10


@pytest.mark.parametrize("path", ["/drip", "/drip/headers"])
def test_slow_drip_hits_the_overall_deadline(server: Server, path: str) -> None:
    policy = FetchPolicy(allow_private=True, timeout_s=1, max_bytes=MB)
    started = time.monotonic()
    with pytest.raises(BadInput, match=r"^video_urls\[0\]: timed out after 1 s$"):
        fetch_bytes(f"{server.base}{path}", label="video_urls[0]", policy=policy)
    assert 0.9 < time.monotonic() - started < 1.8


def test_connection_refused_is_an_input_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(BadInput, match=r"^image_urls\[0\]: could not fetch"):
        fetch_bytes(f"http://127.0.0.1:{port}/", label="image_urls[0]", policy=LOCAL)


# --- data URIs ---------------------------------------------------------------------------


def test_data_uri_is_decoded_locally() -> None:
    uri = "data:image/png;base64," + base64.b64encode(Handler.png).decode()
    assert fetch_bytes(uri, label="image_urls[0]", policy=FetchPolicy()) == Handler.png


def test_data_uri_over_the_cap_is_refused() -> None:
    uri = "data:image/png;base64," + base64.b64encode(b"\0" * 4096).decode()
    with pytest.raises(BadInput, match=r"^image_urls\[0\]: larger than 2 KB$"):
        fetch_bytes(uri, label="image_urls[0]", policy=FetchPolicy(max_bytes=2048))


def test_data_uri_with_bad_base64_is_refused() -> None:
    with pytest.raises(BadInput, match="not valid base64"):
        fetch_bytes("data:image/png;base64,abcde", label="image_urls[0]", policy=FetchPolicy())


# --- TLS ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl command to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
         "-subj", "/CN=rebind.test", "-addext", "subjectAltName=DNS:rebind.test"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return cert, key


@pytest.fixture()
def tls_server(certificate: tuple[Path, Path]) -> Iterator[tuple[Server, list[str | None]]]:
    names: list[str | None] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    context.sni_callback = lambda _sock, name, _ctx: names.append(name)
    httpd, state = serve(context)
    yield state, names
    state.stop.set()
    httpd.shutdown()
    httpd.server_close()


def test_https_pins_the_address_and_verifies_the_host_name(
    tls_server: tuple[Server, list[str | None]],
    certificate: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, names = tls_server
    calls = resolver(monkeypatch, {"rebind.test": [["127.0.0.1"], ["10.0.0.1"]]})
    trust = ssl.create_default_context(cafile=str(certificate[0]))
    policy = FetchPolicy(allow_private=True, timeout_s=5, ssl_context=trust)
    data = fetch_bytes(
        f"https://rebind.test:{server.port}/image.png", label="image_urls[0]", policy=policy
    )
    assert data == Handler.png
    assert names == ["rebind.test"]
    assert calls == ["rebind.test"]
    assert server.seen[-1].host == f"rebind.test:{server.port}"


def test_https_with_a_certificate_for_another_name_fails(
    tls_server: tuple[Server, list[str | None]],
    certificate: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, _names = tls_server
    resolver(monkeypatch, {"other.test": [["127.0.0.1"]]})
    trust = ssl.create_default_context(cafile=str(certificate[0]))
    policy = FetchPolicy(allow_private=True, timeout_s=5, ssl_context=trust)
    with pytest.raises(BadInput, match=r"^image_urls\[0\]: TLS certificate check failed"):
        fetch_bytes(f"https://other.test:{server.port}/a", label="image_urls[0]", policy=policy)
    assert server.seen == []


def test_https_checks_certificates_against_the_system_store_by_default(
    tls_server: tuple[Server, list[str | None]], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, _names = tls_server
    resolver(monkeypatch, {"rebind.test": [["127.0.0.1"]]})
    with pytest.raises(BadInput, match="TLS certificate check failed"):
        fetch_bytes(f"https://rebind.test:{server.port}/a", label="image_urls[0]", policy=LOCAL)
    assert server.seen == []
