"""The pushlog of the hg.mozilla.org stand-in: its SQLite file inside each repository's .hg,
and the Mercurial hook that records a push while the server accepts it."""

from __future__ import annotations

import logging
import os
import sqlite3
import time
import urllib.parse
from collections.abc import Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PUSHLOG_FILE = "pushlog2.db"
UNKNOWN_PUSHER = "unknown"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pushlog (
    id INTEGER PRIMARY KEY AUTOINCREMENT, user TEXT, date INTEGER);
CREATE TABLE IF NOT EXISTS changesets (
    pushid INTEGER, rev INTEGER, node TEXT, PRIMARY KEY (pushid, rev));
CREATE INDEX IF NOT EXISTS changeset_node ON changesets (node);
"""


def pushlog_path(repository: Path) -> Path:
    """Where the pushlog of the repository at `repository` lives."""
    return repository / ".hg" / PUSHLOG_FILE


def open_pushlog(repository: Path) -> sqlite3.Connection:
    """Open the repository's pushlog for writing, creating its tables if needed."""
    connection = sqlite3.connect(pushlog_path(repository))
    connection.executescript(_SCHEMA)
    return connection


def append_push(
    connection: sqlite3.Connection, user: str, date: int, changesets: Iterable[tuple[int, str]]
) -> int:
    """Add one push of (rev, node) changesets and return its push id; the caller commits."""
    cursor = connection.execute("INSERT INTO pushlog (user, date) VALUES (?, ?)", (user, date))
    push_id = cursor.lastrowid
    connection.executemany(
        "INSERT INTO changesets (pushid, rev, node) VALUES (?, ?, ?)",
        ((push_id, rev, node) for rev, node in changesets),
    )
    return push_id


def read_pushes(
    repository: Path,
    start_id: int | None = None,
    end_id: int | None = None,
    last: int | None = None,
) -> list[dict[str, Any]]:
    """Pushes with start_id < id <= end_id (or the `last` newest), oldest first.

    Each push is {"id", "user", "date", "nodes"}, its nodes in revision order.
    """
    path = pushlog_path(repository)
    if not path.exists():
        return []

    conditions, parameters = ["1"], []
    if start_id is not None:
        conditions.append("id > ?")
        parameters.append(start_id)
    if end_id is not None:
        conditions.append("id <= ?")
        parameters.append(end_id)
    if last is not None:
        conditions.append("id IN (SELECT id FROM pushlog ORDER BY id DESC LIMIT ?)")
        parameters.append(last)
    query = (
        "SELECT id, user, date, node FROM pushlog LEFT JOIN changesets ON pushid = id"
        f" WHERE {' AND '.join(conditions)} ORDER BY id, rev"
    )

    pushes: dict[int, dict[str, Any]] = {}
    with sqlite3.connect(path) as connection:
        for push_id, user, date, node in connection.execute(query, parameters):
            push = pushes.setdefault(
                push_id, {"id": push_id, "user": user, "date": date, "nodes": []}
            )
            if node is not None:
                push["nodes"].append(node)
    return list(pushes.values())


def last_push_id(repository: Path) -> int:
    """The highest push id of the repository, 0 when nothing was pushed yet."""
    path = pushlog_path(repository)
    if not path.exists():
        return 0
    with sqlite3.connect(path) as connection:
        (highest,) = connection.execute("SELECT MAX(id) FROM pushlog").fetchone()
    return highest or 0


def pusher_from_hook_url(url: bytes) -> str:
    """The REMOTE_USER that hgweb put into a hook's url (remote:SCHEME:HOST:USER)."""
    parts = url.split(b":", 3)
    if len(parts) == 4 and parts[0] == b"remote" and parts[3]:
        return urllib.parse.unquote_to_bytes(parts[3]).decode("utf-8", "replace")
    return UNKNOWN_PUSHER


def record(ui: Any, repo: Any, node: bytes, node_last: bytes, url: bytes = b"", **_: Any) -> bool:
    """pretxnchangegroup hook: log the incoming changesets as one push.

    The push is written in the same breath as the Mercurial transaction: committed when it
    closes, rolled back when it aborts. Returns False, which lets the push proceed.
    """
    unfiltered = repo.unfiltered()
    first, last = unfiltered[node].rev(), unfiltered[node_last].rev()
    changesets = [(rev, unfiltered[rev].hex().decode("ascii")) for rev in range(first, last + 1)]
    user = pusher_from_hook_url(url)

    connection = open_pushlog(Path(os.fsdecode(repo.root)))
    push_id = append_push(connection, user, int(time.time()), changesets)

    def commit(_transaction: Any) -> None:
        connection.commit()
        connection.close()
        log.info("recorded push %d by %s in %s", push_id, user, os.fsdecode(repo.root))

    def rollback(_transaction: Any) -> None:
        connection.rollback()
        connection.close()

    transaction = repo.currenttransaction()
    transaction.addfinalize(b"pushlog", commit)
    transaction.addabort(b"pushlog", rollback)
    ui.status(b"recorded push %d in pushlog\n" % push_id)
    return False
