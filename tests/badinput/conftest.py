"""Fixtures of the bad-input tests: a stand-in for hg.mozilla.org whose pushlog can be told
to lie, a loopback listener that records every request made to it (a host the worker must
never talk to), and a way to hand a message to one worker's queue only."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import kombu
import pytest
from hypothesis.configuration import set_hypothesis_home_dir

from shardworker.broker import REPLAY_EXCHANGE, REPLAY_ROUTING_KEY
from shardworker.deliveries import HGMO_EXCHANGE
from standins.hgmo import HgmoStandIn
from tests.conftest import AMQP_URL

# Hypothesis keeps its caches here, beside the only tests that use it; the tests keep no
# example database.
set_hypothesis_home_dir(Path(__file__).parent / ".hypothesis")

# A lie answers one json-pushes request: it gets the stand-in, the repository name, the query
# parameters and the WSGI start_response, and returns the body to send.
Lie = Callable[[HgmoStandIn, str, dict[str, str], Any], Iterable[bytes]]


class LyingHgmo(HgmoStandIn):
    """The stand-in, except that json-pushes of the repositories in `lies` answers what the
    lie says, and hgweb (what hg clones and pulls from) of those in `hgweb_lies` too.
    Everything else is served as usual."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.lies: dict[str, Lie] = {}
        self.hgweb_lies: dict[str, Lie] = {}
        self.stopped = threading.Event()

    def _application(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        import urllib.parse

        name = environ.get("PATH_INFO", "").strip("/")
        lie = self.hgweb_lies.get(name)
        if lie is None:
            return super()._application(environ, start_response)
        query = environ.get("QUERY_STRING", "")
        self.requests.append((environ["REQUEST_METHOD"], f"/{name}?{query}"))
        return lie(self, name, dict(urllib.parse.parse_qsl(query)), start_response)

    def _serve_json_pushes(self, path: str, query: str, start_response: Any) -> Iterable[bytes]:
        import urllib.parse

        name = path.strip("/")
        lie = self.lies.get(name)
        if lie is None:
            return super()._serve_json_pushes(path, query, start_response)
        return lie(self, name, dict(urllib.parse.parse_qsl(query)), start_response)

    def stop(self) -> None:
        self.stopped.set()
        super().stop()


@pytest.fixture
def hgmo(tmp_path: Path) -> Iterator[LyingHgmo]:
    """Replaces the suite's stand-in, so that every worker of these tests talks to one that
    can lie (and does not, unless told)."""
    with LyingHgmo(tmp_path / "hgmo") as standin:
        yield standin


class RecordingListener:
    """An HTTP server on loopback that answers 404 to everything and remembers each request."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        listener = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _record(self) -> None:
                listener.requests.append((self.command, self.path))
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = do_HEAD = do_PUT = _record

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def __enter__(self) -> RecordingListener:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def stranger() -> Iterator[RecordingListener]:
    """A host that is not the configured hg host; nothing may ever reach it."""
    with RecordingListener() as listener:
        yield listener


@pytest.fixture
def publish_to_worker(queue_suffix: str):
    """Put a message into this test's queue only, through the default exchange, with the
    envelope it claims carried in the replay headers the supervisor restores.

    Messages that could harm workers of other tests (they share the broker, and everything
    sent to exchange/hgpushes/v2 reaches every bound queue) go this way. The queue must
    exist: start the worker first.
    """
    connection = kombu.Connection(AMQP_URL)
    producer = kombu.Producer(connection.default_channel)

    def publish(routing_key: str, body: bytes, *, exchange: str = HGMO_EXCHANGE,
                content_type: str = "application/json", content_encoding: str = "utf-8",
                headers: dict | None = None) -> None:
        producer.publish(
            body,
            exchange="",
            routing_key=f"queue/guest/{queue_suffix}",
            content_type=content_type,
            content_encoding=content_encoding,
            headers={**(headers or {}), REPLAY_EXCHANGE: exchange,
                     REPLAY_ROUTING_KEY: routing_key},
            delivery_mode=2,
            retry=True,
        )

    yield publish
    connection.release()
