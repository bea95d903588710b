"""A URL that redirects (a cloud host answers a plain-http URL with 301 to https) is a wrong URL,
like a 404: the run stops at once with exit 3 naming where it points, nothing is dead-lettered,
and the same command with the right URL finishes the job. segbill follows no redirect."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
import pytest

from segbill.testing.fake_platform import FakePlatform

from .conftest import KEY, jsonl, platform_env, send, track, write

SECRET = "tok-SECRET9"  # in the Location's user and query: never shown


class Redirect(BaseHTTPRequestHandler):
    """What stands in front of the platform at a wrong URL: every request is sent elsewhere."""

    def answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(301 if self.command == "POST" else 308)
        self.send_header("Location", f"https://user:{SECRET}@billing.example.test{self.path}?token={SECRET}")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def redirecting() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("to", ["lago", "hyperline"])
def test_a_redirecting_url_stops_the_send_and_the_right_url_then_delivers_everything(
    segbill, tmp_path: Path, fake: FakePlatform, redirecting: str, to: str
) -> None:
    path = write(tmp_path / "in.jsonl", jsonl(*(track(messageId=f"m{i}") for i in range(250))))
    run, summary = send(segbill, redirecting, str(path), "--state", "st.db", "--batch-size", "100", to=to)
    assert run.exit_code == 3 and summary is not None
    host = redirecting.removeprefix("http://")
    assert summary["stopped"].startswith(f"{host} redirects to https://billing.example.test (HTTP 301 for /")
    assert "segbill follows no redirect" in summary["stopped"] and SECRET not in run.stdout + run.stderr
    assert summary["dead_lettered"] == 0 and not run.dead_letter.exists()
    assert summary["not_attempted"] == summary["read"] > 0 and summary["delivered"] == 0
    run, summary = send(segbill, fake.url, str(path), "--state", "st.db", "--batch-size", "100", to=to)
    assert run.exit_code == 0 and summary is not None and summary["delivered"] == 250
    assert len(fake.events(to)) == 250


def test_check_and_reconcile_stop_at_a_redirect_naming_where_it_points(segbill, tmp_path: Path, redirecting: str) -> None:
    path = write(tmp_path / "in.jsonl", jsonl(track()))
    env = platform_env(redirecting)
    for command in ("check", "reconcile"):
        run = segbill(command, str(path), "--to", "lago", "--json", env=env)
        result = orjson.loads(run.stdout)
        assert run.exit_code == 3 and result["exit_code"] == 3, run.stdout + run.stderr
        assert " redirects to https://billing.example.test (HTTP 308 for /api/v1/" in result["stopped"]
        assert SECRET not in run.stdout + run.stderr and KEY not in run.stdout + run.stderr


def serve_redirects(location: str) -> ThreadingHTTPServer:
    """A server that answers every request with a 308 to `location` ({path}: the request's path)."""

    class To(BaseHTTPRequestHandler):
        def answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(308)
            self.send_header("Location", location.format(path=self.path.partition("?")[0]))
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = answer

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), To)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.parametrize(
    ("location", "where"),
    [
        ("javascript:alert(1)", "a javascript: address, which names no host"),
        (f"https://user:{SECRET}@lago.example.test/lago{{path}}?token={SECRET}#{SECRET}", "https://lago.example.test/lago"),
        (f"/lago/{{path}}?token={SECRET}", "http://{host}/lago"),  # relative: the same host, under /lago
        (f"//lago.example.test:8443/billing/lago{{path}}#{SECRET}", "http://lago.example.test:8443/billing/lago"),
        (f"https://sso.example.test/login?next={SECRET}", "https://sso.example.test"),
        (f"/login?next={SECRET}", "another path on the same host"),
        ("http://[unclosed/x", "an address that is no URL"),
    ],
    ids=["javascript", "prefix", "relative-prefix", "scheme-relative", "elsewhere", "same-host", "no-url"],
)
def test_a_redirect_names_the_base_url_its_location_implies_and_never_a_secret(
    segbill, tmp_path: Path, location: str, where: str
) -> None:
    """A self-hosted Lago moved under a prefix: the message names the URL to use, prefix
    included; a Location with no host is not called a path on the same host."""
    path = write(tmp_path / "in.jsonl", jsonl(track()))
    server = serve_redirects(location)
    try:
        host = f"127.0.0.1:{server.server_address[1]}"
        run, summary = send(segbill, f"http://{host}", str(path))
        assert run.exit_code == 3 and summary is not None
        expected = f"{host} redirects to {where.format(host=host)} (HTTP 308 for /api/v1/events/batch);"
        assert summary["stopped"].startswith(expected), summary["stopped"]
        assert SECRET not in run.stdout + run.stderr
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("location", "where"),
    [
        (f"/lago{{path}}?token={SECRET}", "http://{host}/lago"),
        ("javascript:alert(1)", "a javascript: address, which names no host"),
    ],
    ids=["relative-prefix", "javascript"],
)
def test_reconcile_names_where_a_redirected_read_points(segbill, tmp_path: Path, location: str, where: str) -> None:
    path = write(tmp_path / "in.jsonl", jsonl(track()))
    server = serve_redirects(location)
    try:
        host = f"127.0.0.1:{server.server_address[1]}"
        run = segbill("reconcile", str(path), "--to", "lago", "--json", env=platform_env(f"http://{host}"))
        stopped = orjson.loads(run.stdout)["stopped"]
        expected = f"{host} redirects to {where.format(host=host)} (HTTP 308 for /api/v1/"
        assert run.exit_code == 3 and stopped.startswith(expected), stopped
        assert SECRET not in run.stdout + run.stderr and KEY not in run.stdout + run.stderr
    finally:
        server.shutdown()
        server.server_close()
