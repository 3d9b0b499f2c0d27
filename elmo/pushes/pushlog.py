"""Reading hg.mozilla.org's pushlog: `json-pushes?version=2&full=1`, checked
field by field, so that what reaches the database is what the host said."""

import json
import logging
import re
from dataclasses import dataclass
from urllib.parse import urlencode

from elmo import bounded_http
from shardworker.errors import PermanentError, TransientError

logger = logging.getLogger(__name__)

NODE = re.compile(r"[0-9a-f]{40}")
PUSH_KEY = re.compile(r"[0-9]{1,10}")


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


def fetch_page(repository_url: str, start_id: int, end_id: int | None, *,
               timeout: float, max_bytes: int) -> PushlogPage:
    """The pushes after `start_id` up to `end_id` (all when None).

    `timeout` bounds the whole request, not each read: a host that trickles
    its answer is given up on like one that does not answer. Redirects are
    followed within the host only.
    """
    url = pushlog_url(repository_url, start_id, end_id)
    try:
        answer = bounded_http.get(url, timeout=timeout, max_bytes=max_bytes, same_host=True,
                                  headers={"Accept": "application/json"})
    except bounded_http.TimedOut:
        raise TransientError(f"pushlog {url} took longer than the HTTP timeout") from None
    except bounded_http.Unreachable as error:
        raise TransientError(f"pushlog {url} unreachable: {error}") from None
    except bounded_http.TooLarge as error:
        raise PermanentError(f"pushlog {url} is {error}") from None
    except bounded_http.RedirectsElsewhere as error:
        raise PermanentError(f"pushlog {url} {error}") from None
    if answer.status == 404:
        raise PermanentError(f"pushlog {url} answered 404")
    if answer.body is None:
        raise TransientError(f"pushlog {url} answered {answer.status}")
    try:
        document = json.loads(answer.body)
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        raise PermanentError(f"pushlog {url} is not JSON: {error}") from None
    return parse_page(document, url, start_id, end_id)


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
    """The string, with NUL (which Mercurial allows in messages and PostgreSQL
    refuses in text) shown as U+FFFD."""
    if not isinstance(value, str):
        raise PermanentError(f"pushlog {url} has no text for {what}")
    return value.replace("\x00", "\ufffd")


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
