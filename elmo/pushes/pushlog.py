"""Reading hg.mozilla.org's pushlog: `json-pushes?version=2&full=1`, checked
field by field, so that what reaches the database is what the host said."""

import json
import logging
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

from shardworker.errors import PermanentError, TransientError

logger = logging.getLogger(__name__)

NODE = re.compile(r"[0-9a-f]{40}")
PUSH_KEY = re.compile(r"[0-9]{1,10}")
READ_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class PushedChangeset:
    node: str
    author: str
    desc: str
    branch: str
    parents: tuple[str, ...]
    files: tuple[str, ...]


@dataclass(frozen=True)
class PushlogPush:
    push_id: int
    user: str
    date: int
    changesets: tuple[PushedChangeset, ...]


@dataclass(frozen=True)
class PushlogPage:
    last_push_id: int
    pushes: tuple[PushlogPush, ...]


def pushlog_url(repository_url: str, start_id: int, end_id: int | None) -> str:
    query = {"version": 2, "full": 1, "startID": start_id}
    if end_id is not None:
        query["endID"] = end_id
    return f"{repository_url.rstrip('/')}/json-pushes?{urlencode(query)}"


class SameHostRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to the host that was asked."""

    def redirect_request(self, request, fp, code, message, headers, new_url):
        if urlsplit(new_url).netloc != urlsplit(request.full_url).netloc:
            raise PermanentError(f"pushlog {request.full_url} redirects to another host")
        return super().redirect_request(request, fp, code, message, headers, new_url)


OPENER = urllib.request.build_opener(SameHostRedirects)


def fetch_page(repository_url: str, start_id: int, end_id: int | None, *,
               timeout: float, max_bytes: int) -> PushlogPage:
    """The pushes after `start_id` up to `end_id` (all when None).

    `timeout` bounds the whole request, not each read: a host that trickles
    its answer is given up on like one that does not answer.
    """
    url = pushlog_url(repository_url, start_id, end_id)
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    deadline = time.monotonic() + timeout
    try:
        with OPENER.open(request, timeout=timeout) as response:
            raw = read_limited(response, max_bytes, url, deadline)
    except urllib.error.HTTPError as error:
        if error.code == 404:
            raise PermanentError(f"pushlog {url} answered 404") from None
        raise TransientError(f"pushlog {url} answered {error.code}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise TransientError(f"pushlog {url} unreachable: {reason}") from None
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        raise PermanentError(f"pushlog {url} is not JSON: {error}") from None
    return parse_page(document, url, start_id, end_id)


def read_limited(response, max_bytes: int, url: str, deadline: float) -> bytes:
    chunks = []
    size = 0
    while chunk := response.read1(READ_CHUNK):
        size += len(chunk)
        if size > max_bytes:
            raise PermanentError(f"pushlog {url} is larger than {max_bytes} bytes")
        if time.monotonic() > deadline:
            raise TransientError(f"pushlog {url} took longer than the HTTP timeout")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_page(document: object, url: str, start_id: int, end_id: int | None) -> PushlogPage:
    """Check the answer's shape; anything unexpected is a PermanentError."""
    if not isinstance(document, dict):
        raise PermanentError(f"pushlog {url} is not an object")
    last = document.get("lastpushid")
    pushes = document.get("pushes")
    if not _is_count(last) or not isinstance(pushes, dict):
        raise PermanentError(f"pushlog {url} lacks lastpushid or pushes")
    parsed = []
    for key, push in pushes.items():
        if not PUSH_KEY.fullmatch(key) or not isinstance(push, dict):
            raise PermanentError(f"pushlog {url} has a malformed push {key!r:.40}")
        push_id = int(key)
        if push_id <= start_id or (end_id is not None and push_id > end_id) or push_id > last:
            raise PermanentError(f"pushlog {url} answered push {push_id} outside the range")
        parsed.append(_parse_push(push_id, push, url))
    parsed.sort(key=lambda push: push.push_id)
    return PushlogPage(last_push_id=last, pushes=tuple(parsed))


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31


def _text(value: object, what: str, url: str) -> str:
    if not isinstance(value, str):
        raise PermanentError(f"pushlog {url} has no text for {what}")
    return value


def _node(value: object, what: str, url: str) -> str:
    if not isinstance(value, str) or not NODE.fullmatch(value):
        raise PermanentError(f"pushlog {url} has a malformed {what}: {value!r:.60}")
    return value


def _parse_push(push_id: int, push: dict, url: str) -> PushlogPush:
    date = push.get("date")
    if not isinstance(date, int | float) or isinstance(date, bool) or not 0 <= date < 2**40:
        raise PermanentError(f"pushlog {url} push {push_id} has no valid date")
    changesets = push.get("changesets")
    if not isinstance(changesets, list):
        raise PermanentError(f"pushlog {url} push {push_id} has no changesets list")
    parsed = []
    for changeset in changesets:
        if not isinstance(changeset, dict):
            raise PermanentError(f"pushlog {url} push {push_id} needs full=1 changesets")
        parents = changeset.get("parents")
        files = changeset.get("files")
        if not isinstance(parents, list) or not isinstance(files, list):
            raise PermanentError(f"pushlog {url} push {push_id} lacks parents or files")
        parsed.append(PushedChangeset(
            node=_node(changeset.get("node"), "node", url),
            author=_text(changeset.get("author"), "author", url),
            desc=_text(changeset.get("desc"), "desc", url),
            branch=_text(changeset.get("branch", "default"), "branch", url) or "default",
            parents=tuple(_node(parent, "parent", url) for parent in parents),
            files=tuple(_text(path, "file", url) for path in files),
        ))
    return PushlogPush(
        push_id=push_id,
        user=_text(push.get("user"), "user", url),
        date=int(date),
        changesets=tuple(parsed),
    )
