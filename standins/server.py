"""What the stand-ins share: a WSGI application served on loopback from a
background thread, one thread per request, until stopped."""

from __future__ import annotations

import logging
import socketserver
import threading
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

log = logging.getLogger(__name__)


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _LoggingRequestHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)


class Served:
    """A stand-in that serves `_application` at `host`:`port` (0 picks a free port).

    Subclasses set `label` (what the log calls them), `host` and `port`, implement
    `_application` and `address`, and call `_serve()` from their `start()`.
    """

    label = "stand-in"
    host: str
    port: int
    _server: WSGIServer | None = None
    _thread: threading.Thread | None = None

    def _application(self, environ: dict[str, Any], start_response: Any) -> Any:
        raise NotImplementedError

    @property
    def address(self) -> str:
        raise NotImplementedError

    def _serve(self, description: str) -> None:
        self._server = make_server(self.host, self.port, self._application,
                                   server_class=_ThreadingWSGIServer,
                                   handler_class=_LoggingRequestHandler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},  # how long stop() waits at most
            name=self.label,
            daemon=True,
        )
        self._thread.start()
        logging.getLogger(type(self).__module__).info("%s serving %s at %s", self.label,
                                                      description, self.address)

    def stop(self) -> None:
        """Stop serving; requests in flight are not waited for."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        self._server = self._thread = None
        logging.getLogger(type(self).__module__).info("%s at %s stopped", self.label,
                                                      self.address)

    def start(self) -> Any:
        raise NotImplementedError

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
