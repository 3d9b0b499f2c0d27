"""HTTP GETs bounded in size and in total time, whatever the server does.

A socket timeout bounds each read, not the request: a server that sends its
status line, headers or body a byte at a time never trips it. Here a
watchdog shuts down every socket the request opened once its time is up,
which ends any read at once, and the caller learns that the time ran out.
"""

import functools
import http.client
import socket
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from urllib.parse import urlsplit

READ_CHUNK = 1024 * 1024


class TimedOut(Exception):
    """The request took longer than its timeout."""


class TooLarge(Exception):
    """The body is larger than the caller accepts."""


class Unreachable(Exception):
    """No answer: refused, reset, name not found."""


class RedirectsElsewhere(Exception):
    """The server redirects to another host, and the caller allows none."""


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes | None  # for 200 only


class Watchdog:
    """Shuts down the sockets of one request when its time is up."""

    def __init__(self, timeout: float):
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(timeout, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> "Watchdog":
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._timer.cancel()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                _shut(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class _Watched:
    """A connection that hands its socket to the request's watchdog."""

    def __init__(self, *args, watchdog: Watchdog, **kwargs):
        super().__init__(*args, **kwargs)
        self.watchdog = watchdog

    def connect(self) -> None:
        super().connect()
        self.watchdog.watch(self.sock)


class _WatchedHTTPConnection(_Watched, http.client.HTTPConnection):
    pass


class _WatchedHTTPSConnection(_Watched, http.client.HTTPSConnection):
    pass


class _WatchedHandler(urllib.request.HTTPHandler, urllib.request.HTTPSHandler):
    """Opens http and https connections whose sockets the watchdog can shut."""

    def __init__(self, watchdog: Watchdog):
        super().__init__()
        self.watchdog = watchdog

    def http_open(self, request):
        return self.do_open(functools.partial(_WatchedHTTPConnection, watchdog=self.watchdog),
                            request)

    def https_open(self, request):
        return self.do_open(functools.partial(_WatchedHTTPSConnection, watchdog=self.watchdog),
                            request, context=self._context)


class _SameHostRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to the host asked, and never from https to http."""

    def redirect_request(self, request, fp, code, message, headers, new_url):
        asked, told = urlsplit(request.full_url), urlsplit(new_url)
        if told.netloc != asked.netloc or (asked.scheme == "https" and told.scheme != "https"):
            raise RedirectsElsewhere(f"redirects to another host ({new_url:.200})")
        return super().redirect_request(request, fp, code, message, headers, new_url)


def get(url: str, *, timeout: float, max_bytes: int, same_host: bool = False,
        headers: dict[str, str] | None = None) -> Answer:
    """GET `url`, following redirects (only to the same host if `same_host`).

    Raises TimedOut when the whole exchange takes longer than `timeout`
    seconds, TooLarge past `max_bytes` of body, Unreachable when no answer
    comes, RedirectsElsewhere as said. Any status is an Answer; only 200
    carries its body.
    """
    with Watchdog(timeout) as watchdog:
        handlers = [_WatchedHandler(watchdog)]
        if same_host:
            handlers.append(_SameHostRedirects())
        opener = urllib.request.build_opener(*handlers)
        request = urllib.request.Request(url, headers=headers or {})
        try:
            with opener.open(request, timeout=timeout) as response:
                body = _read_limited(response, max_bytes)
                status = response.status
        except urllib.error.HTTPError as error:
            error.close()
            if watchdog.expired:
                raise TimedOut(f"took longer than {timeout:g} s") from None
            return Answer(error.code, None)
        except Unreachable:
            if watchdog.expired:
                raise TimedOut(f"took longer than {timeout:g} s") from None
            raise
        except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
            if watchdog.expired or isinstance(getattr(error, "reason", error), TimeoutError):
                raise TimedOut(f"took longer than {timeout:g} s") from None
            raise Unreachable(str(getattr(error, "reason", error)) or type(error).__name__
                              ) from None
        if watchdog.expired:
            # The shutdown may read as the end of the body.
            raise TimedOut(f"took longer than {timeout:g} s")
    return Answer(status, body if status == 200 else None)


def _read_limited(response, max_bytes: int) -> bytes:
    chunks = []
    size = 0
    while chunk := response.read1(READ_CHUNK):
        size += len(chunk)
        if size > max_bytes:
            raise TooLarge(f"larger than {max_bytes} bytes")
        chunks.append(chunk)
    if response.length:
        # http.client ends a body that stops short of its Content-Length quietly.
        raise Unreachable(f"the answer was cut off after {size} bytes, "
                          f"{response.length} short of its length")
    return b"".join(chunks)
