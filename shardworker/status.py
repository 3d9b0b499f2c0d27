"""The supervisor's HTTP endpoints: /metrics for Prometheus, /healthz and
/readyz for orchestrators. Served from a thread; it only reads state."""

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from shardworker import metrics

logger = logging.getLogger(__name__)

# Each check answers (healthy, one line that says why).
Check = Callable[[], tuple[bool, str]]


class StatusServer:
    """Serves the endpoints on `address`:`port` (port 0 picks a free one)."""

    def __init__(self, address: str, port: int, health: Check, readiness: Check):
        checks = {"/healthz": health, "/readyz": readiness}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self.answer(200, metrics.scrape(),
                                "text/plain; version=0.0.4; charset=utf-8")
                elif path in checks:
                    healthy, why = checks[path]()
                    self.answer(200 if healthy else 503, (why + "\n").encode(),
                                "text/plain; charset=utf-8")
                else:
                    self.answer(404, b"not found\n", "text/plain; charset=utf-8")

            def answer(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args) -> None:
                logger.debug("status request: " + format, *args)

        self.server = ThreadingHTTPServer((address, port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="status",
                                       daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/"

    def start(self) -> None:
        self.thread.start()
        logger.info("serving /metrics, /healthz and /readyz on %s", self.url)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
