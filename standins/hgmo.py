"""A local stand-in for hg.mozilla.org: real Mercurial repositories served by hgweb on loopback,
with a pushlog and its json-pushes API, fault injection, and a publisher of its Pulse messages."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any, NamedTuple
from wsgiref.util import is_hop_by_hop

import kombu
from mercurial import encoding, hgweb
from mercurial import ui as uimod
from mercurial.repo import factory as repo_factory
from mercurial.utils import stringutil

from standins import pushlog_hook
from standins.server import Served

log = logging.getLogger(__name__)

DEFAULT_PUSHER = "translator@example.org"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"
HGPUSHES_EXCHANGE = "exchange/hgpushes/v2"
NULL_NODE = "0" * 40
PUSHES_PER_PAGE = 10
SECONDS_PER_DAY = 86400


def _find_hg() -> str:
    """The hg next to the running Python (its virtualenv), else the one on PATH."""
    beside_python = Path(sys.executable).with_name("hg")
    return str(beside_python) if beside_python.exists() else shutil.which("hg") or "hg"


_HG_EXECUTABLE = _find_hg()
_HG_ENVIRONMENT = {
    "HGPLAIN": "1",
    "HGRCPATH": "",
    "HGENCODING": "utf-8",
    "PATH": os.environ.get("PATH", os.defpath),
}


class UnknownRepository(LookupError):
    """The stand-in serves no repository of that name."""


class HgCommandError(subprocess.CalledProcessError):
    """An hg subprocess failed; its message carries hg's own error output."""

    def __str__(self) -> str:
        return f"{super().__str__()}\n{self.stderr.strip()}"


@dataclass(frozen=True)
class Commit:
    """One changeset to author in a push.

    `files` maps paths to new contents; None removes the file. `parents` are, for each parent,
    either an int (the index of an earlier commit of the same push) or an hg revision such as
    a 40-hex node; None means the previous commit of the push, or the repository's tip for the
    first one. Two parents make a merge, whose conflicts resolve to the first parent's side
    before `files` are applied.
    """

    files: Mapping[str, str | None] = field(default_factory=dict)
    message: str = "Update localization"
    author: str | None = None
    parents: tuple[int | str, ...] | None = None


class PushedChanges(NamedTuple):
    """A push as the pushlog recorded it."""

    push_id: int
    nodes: list[str]


def run_hg(arguments: Sequence[str], cwd: Path | None = None, username: str = "hgmo") -> str:
    """Run the real hg client without user configuration and return its output."""
    command = [_HG_EXECUTABLE, "--config", f"ui.username={username}", *arguments]
    completed = subprocess.run(
        command, cwd=cwd, env=_HG_ENVIRONMENT, capture_output=True, text=True, check=False
    )
    if completed.returncode != 0:
        raise HgCommandError(completed.returncode, command, completed.stdout, completed.stderr)
    return completed.stdout


def _text(value: bytes) -> str:
    return encoding.fromlocal(value).decode("utf-8")



class HgmoStandIn(Served):
    """hg.mozilla.org on loopback, for tests and the demo; one per root directory.

    Served repositories live under `root/repos`, the authoring helper's working copies under
    `root/work`. The pusher of a push is the request's REMOTE_USER, which the stand-in sets to
    `pusher` (a plain attribute, DEFAULT_PUSHER unless changed); the authoring helpers set it
    to their `user` while they push. `fail_next`, `delay` and `requests` let tests inject and
    observe faults on every request.
    """

    label = "hg.mozilla.org stand-in"

    def __init__(self, root: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        self.root = Path(root)
        self.repositories_root = self.root / "repos"
        self.working_copies_root = self.root / "work"
        self.host = host
        self.port = port
        self.pusher = DEFAULT_PUSHER
        self.delay = 0.0
        self.requests: list[tuple[str, str]] = []
        self._failures: list[int] = []
        self._state_lock = threading.Lock()
        self._authoring_lock = threading.RLock()
        self._ui = self._make_server_ui()
        self._hgweb: Any = None

    # Lifecycle

    def start(self) -> HgmoStandIn:
        """Serve the repositories on a background thread until stop()."""
        self.repositories_root.mkdir(parents=True, exist_ok=True)
        self.working_copies_root.mkdir(parents=True, exist_ok=True)
        # hgweb.hgweb, unlike the hgwebdir class alone, registers bundle2's push handlers.
        self._hgweb = hgweb.hgweb(
            [(b"", os.fsencode(self.repositories_root) + b"/*")], baseui=self._ui
        )
        self._serve(str(self.root))
        return self

    @property
    def address(self) -> str:
        return self.base_url

    @property
    def base_url(self) -> str:
        """The URL that repository paths are appended to, ending in a slash."""
        return f"http://{self.host}:{self.port}/"

    def repository_url(self, name: str) -> str:
        """The URL that clones and pulls repository `name`."""
        return self.base_url + name

    # Repositories and their pushlog

    def repository_path(self, name: str) -> Path:
        """The directory of repository `name` (like `l10n-central/de`), existing or not."""
        path = (self.repositories_root / name).resolve()
        if not name or not path.is_relative_to(self.repositories_root.resolve()):
            raise ValueError(f"not a repository name: {name!r}")
        return path

    def create_repository(self, name: str) -> Path:
        """Create an empty repository `name`; it is served from then on."""
        path = self.repository_path(name)
        if path.exists():
            raise FileExistsError(f"repository {name} already exists")
        path.parent.mkdir(parents=True, exist_ok=True)
        run_hg(["init", str(path)])
        log.info("created repository %s", name)
        return path

    def pushlog(self, name: str) -> list[dict[str, Any]]:
        """Every push of the repository, oldest first, as {"id", "user", "date", "nodes"}."""
        return pushlog_hook.read_pushes(self._existing_repository(name))

    def json_pushes(
        self,
        name: str,
        start_id: int | None = None,
        end_id: int | None = None,
        full: bool = False,
        version: int = 2,
    ) -> dict[str, Any]:
        """The document that `<repo>/json-pushes` answers, as hg.mozilla.org builds it.

        Without `start_id` it holds the last ten pushes and `end_id` is ignored, as on
        hg.mozilla.org; otherwise the pushes with start_id < id <= end_id.
        """
        path = self._existing_repository(name)
        if start_id is None:
            pushes = pushlog_hook.read_pushes(path, last=PUSHES_PER_PAGE)
        else:
            pushes = pushlog_hook.read_pushes(path, start_id=start_id, end_id=end_id)

        repo = self._open_repository(path) if full and pushes else None
        entries = {
            str(push["id"]): {
                "user": push["user"],
                "date": push["date"],
                "changesets": [
                    _describe_changeset(repo, node) if repo else node for node in push["nodes"]
                ],
            }
            for push in pushes
        }
        if version == 1:
            return entries
        return {"lastpushid": pushlog_hook.last_push_id(path), "pushes": entries}

    def import_bundle(self, name: str, bundle_path: Path) -> list[PushedChanges]:
        """Create repository `name` from a bundle and replay its history into the pushlog.

        Each run of consecutive changesets (in revision order) by one author on one UTC day
        becomes a push by the author's e-mail address, dated like its last changeset.
        """
        path = self.create_repository(name)
        run_hg(["--repository", str(path), "unbundle", str(bundle_path)])

        repo = self._open_repository(path).unfiltered()
        runs: list[dict[str, Any]] = []
        for rev in repo.changelog.revs():
            changeset = repo[rev]
            user = _text(stringutil.email(changeset.user()))
            date = int(changeset.date()[0])
            if not runs or runs[-1]["key"] != (user, date // SECONDS_PER_DAY):
                runs.append({"key": (user, date // SECONDS_PER_DAY), "user": user, "nodes": []})
            runs[-1]["nodes"].append((rev, changeset.hex().decode("ascii")))
            runs[-1]["date"] = date

        connection = pushlog_hook.open_pushlog(path)
        with connection:
            pushes = [
                PushedChanges(
                    pushlog_hook.append_push(connection, run["user"], run["date"], run["nodes"]),
                    [node for _, node in run["nodes"]],
                )
                for run in runs
            ]
        connection.close()
        log.info("imported %s into %s as %d pushes", bundle_path, name, len(pushes))
        return pushes

    # Authoring pushes through the real hg client

    def push(
        self,
        name: str,
        files: Mapping[str, str | None],
        user: str = DEFAULT_PUSHER,
        message: str = "Update localization",
        author: str | None = None,
        parents: tuple[int | str, ...] | None = None,
    ) -> PushedChanges:
        """Commit `files` as one changeset and push it over HTTP as `user`."""
        return self.push_commits(name, [Commit(files, message, author, parents)], user=user)

    def push_merge(
        self,
        name: str,
        left: Mapping[str, str | None],
        right: Mapping[str, str | None],
        merged: Mapping[str, str | None] | None = None,
        user: str = DEFAULT_PUSHER,
        message: str = "Merge",
    ) -> PushedChanges:
        """Push two new heads on the current tip, `left` and `right`, and the merge of both.

        The merge takes the left side of conflicts, then applies `merged`.
        """
        with self._authoring_lock:
            base = self._pull_working_copy(name)
            commits = [
                Commit(left, "Left side of the merge", parents=(base,)),
                Commit(right, "Right side of the merge", parents=(base,)),
                Commit(merged or {}, message, parents=(0, 1)),
            ]
            return self._commit_and_push(name, commits, base, user)

    def push_commits(
        self, name: str, commits: Sequence[Commit], user: str = DEFAULT_PUSHER
    ) -> PushedChanges:
        """Commit `commits` in a working copy of `name` and push them in one push as `user`.

        Authoring pushes are serialized; while one is pushed, `pusher` is `user`. Returns the
        push as the pushlog recorded it. A failed push raises HgCommandError, and its commits
        go out with the next push.
        """
        with self._authoring_lock:
            base = self._pull_working_copy(name)
            return self._commit_and_push(name, commits, base, user)

    def _pull_working_copy(self, name: str) -> str:
        """Bring the authoring working copy of `name` up to date; returns its tip node."""
        working_copy = self.working_copies_root / name
        if working_copy.exists():
            run_hg(["pull", self.repository_url(name)], cwd=working_copy)
        else:
            working_copy.parent.mkdir(parents=True, exist_ok=True)
            run_hg(["clone", "--noupdate", self.repository_url(name), str(working_copy)])
        return self._open_repository(working_copy)[b"tip"].hex().decode("ascii")

    def _commit_and_push(
        self, name: str, commits: Sequence[Commit], base: str, user: str
    ) -> PushedChanges:
        if not commits:
            raise ValueError("a push needs at least one commit")
        working_copy = self.working_copies_root / name
        checked_out = self._open_repository(working_copy)[b"."].hex().decode("ascii")
        nodes: list[str] = []
        for commit in commits:
            parents = commit.parents or ((len(nodes) - 1,) if nodes else (base,))
            if len(parents) > 2:
                raise ValueError("a changeset has at most two parents")
            revisions = [
                nodes[parent] if isinstance(parent, int) else parent for parent in parents
            ]
            checked_out = self._commit(
                working_copy, commit, revisions, checked_out, commit.author or user
            )
            nodes.append(checked_out)

        path = self._existing_repository(name)
        pushed_after = pushlog_hook.last_push_id(path)
        previous_pusher, self.pusher = self.pusher, user
        try:
            run_hg(["push", "--force", self.repository_url(name)], cwd=working_copy)
        finally:
            self.pusher = previous_pusher

        for push in pushlog_hook.read_pushes(path, start_id=pushed_after):
            if nodes[-1] in push["nodes"]:
                return PushedChanges(push["id"], push["nodes"])
        raise LookupError(f"push of {nodes[-1]} to {name} is missing from the pushlog")

    def _commit(
        self,
        working_copy: Path,
        commit: Commit,
        parents: list[str],
        checked_out: str,
        author: str,
    ) -> str:
        """Commit on `parents` (merging a second one) and return the new node."""
        if parents[0] != checked_out:
            run_hg(["update", "--clean", "--rev", parents[0]], cwd=working_copy)
        if len(parents) == 2:
            run_hg(["merge", "--tool", ":local", "--rev", parents[1]], cwd=working_copy)
        for relative_path, content in commit.files.items():
            target = (working_copy / relative_path).resolve()
            if not target.is_relative_to(working_copy.resolve()) or ".hg" in target.parts:
                raise ValueError(f"not a path inside the repository: {relative_path!r}")
            if content is None:
                target.unlink(missing_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(content, encoding="utf-8")

        # Through a file, so that a message may hold anything Mercurial accepts (NUL too).
        logfile = working_copy.parent / f".{working_copy.name}.message"
        logfile.write_bytes(commit.message.encode("utf-8"))
        try:
            run_hg(["commit", "--addremove", "--logfile", str(logfile)], cwd=working_copy,
                   username=author)
        finally:
            logfile.unlink(missing_ok=True)
        return self._open_repository(working_copy)[b"."].hex().decode("ascii")

    # Faults

    def fail_next(self, count: int, status: int = 500) -> None:
        """Answer the next `count` requests, whatever their path, with HTTP `status`;
        0 ends the failures still pending."""
        with self._state_lock:
            if count == 0:
                self._failures.clear()
            self._failures.extend([status] * count)

    # Serving

    def _application(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        query = environ.get("QUERY_STRING", "")
        with self._state_lock:
            self.requests.append((environ["REQUEST_METHOD"], f"{path}?{query}" if query else path))
            injected_status = self._failures.pop(0) if self._failures else None
        if self.delay:
            time.sleep(self.delay)

        if injected_status is not None:
            log.info(
                "answering %s %s with injected %d",
                environ["REQUEST_METHOD"],
                path,
                injected_status,
            )
            return _respond(start_response, injected_status, "text/plain", b"injected failure\n")
        if path.endswith("/json-pushes"):
            return self._serve_json_pushes(
                path.removesuffix("/json-pushes"), query, start_response
            )

        environ.setdefault("REMOTE_USER", self.pusher)

        # hgweb may add "Connection: close", a header that wsgiref refuses from applications.
        def start_response_without_hop_by_hop(status, headers, exc_info=None):
            headers = [(name, value) for name, value in headers if not is_hop_by_hop(name)]
            return start_response(status, headers, exc_info)

        return self._hgweb(environ, start_response_without_hop_by_hop)

    def _serve_json_pushes(self, path: str, query: str, start_response: Any) -> list[bytes]:
        parameters = dict(urllib.parse.parse_qsl(query))
        try:
            version = int(parameters.get("version", "1"))
            start_id = int(parameters["startID"]) if "startID" in parameters else None
            end_id = int(parameters["endID"]) if "endID" in parameters else None
            if version not in (1, 2):
                raise ValueError("version parameter must be 1 or 2")
            document = self.json_pushes(
                path.strip("/"), start_id, end_id, parameters.get("full") == "1", version
            )
        except UnknownRepository as error:
            return _respond(start_response, 404, "text/plain", f"{error}\n".encode())
        except ValueError as error:
            return _respond(start_response, 500, "text/plain", f"{error}\n".encode())
        body = json.dumps(document).encode("utf-8")
        return _respond(start_response, 200, "application/json", body)

    def _existing_repository(self, name: str) -> Path:
        try:
            path = self.repository_path(name)
        except ValueError:
            raise UnknownRepository(f"no repository {name}") from None
        if not (path / ".hg").is_dir():
            raise UnknownRepository(f"no repository {name}")
        return path

    def _open_repository(self, path: Path) -> Any:
        return repo_factory.repository(self._ui.copy(), os.fsencode(path))

    @staticmethod
    def _make_server_ui() -> Any:
        """The Mercurial configuration of the served repositories, free of any user's hgrc."""
        ui = uimod.ui()
        settings = [
            (b"web", b"push_ssl", b"false"),
            (b"web", b"allow-push", b"*"),
            (b"web", b"encoding", b"utf-8"),
            (b"web", b"refreshinterval", b"-1"),
            (b"ui", b"nontty", b"true"),
            (b"ui", b"report_untrusted", b"false"),
            (b"progress", b"disable", b"true"),
            (b"hooks", b"pretxnchangegroup.pushlog", pushlog_hook.record),
        ]
        for section, name, value in settings:
            ui.setconfig(section, name, value, b"hgmo-standin")
        return ui


def _respond(start_response: Any, status: int, content_type: str, body: bytes) -> list[bytes]:
    start_response(
        f"{status} {HTTPStatus(status).phrase}",
        [("Content-Type", content_type), ("Content-Length", str(len(body)))],
    )
    return [body]


def _describe_changeset(repo: Any, node: str) -> dict[str, Any]:
    """A changeset as json-pushes describes it with full=1."""
    changeset = repo.unfiltered()[bytes.fromhex(node)]
    return {
        "node": node,
        "author": _text(changeset.user()),
        "desc": _text(changeset.description()),
        "branch": _text(changeset.branch()),
        "parents": [parent.hex().decode("ascii") for parent in changeset.parents()],
        "tags": [_text(tag) for tag in changeset.tags()],
        "files": [_text(path) for path in changeset.files()],
    }


class HgmoPublisher:
    """Publishes hg.mozilla.org's Pulse messages about stand-in repositories to RabbitMQ.

    Every message goes to the durable topic exchange with the repository path as routing key,
    persistent, as JSON. The publish methods return the body they sent.
    """

    def __init__(
        self, amqp_url: str = DEFAULT_AMQP_URL, exchange: str = HGPUSHES_EXCHANGE
    ) -> None:
        self.exchange_name = exchange
        self._connection = kombu.Connection(amqp_url)
        self._producer = kombu.Producer(
            self._connection.default_channel,
            exchange=kombu.Exchange(exchange, type="topic", durable=True),
        )
        # Declared now, so that a worker started before the first publish finds it.
        self._producer.exchange.declare()

    def publish_changegroup(
        self, source: HgmoStandIn | str, repo_name: str, push_ids: Sequence[int]
    ) -> dict[str, Any]:
        """Announce pushes `push_ids` of `repo_name`, with the heads they left and who pushed.

        `source` is a stand-in or the base URL of one, whose json-pushes is then asked.
        """
        base_url = _base_url_of(source)
        pushes: dict[str, Any] = {}
        if push_ids:
            start_id, end_id = min(push_ids) - 1, max(push_ids)
            if isinstance(source, HgmoStandIn):
                document = source.json_pushes(repo_name, start_id, end_id, full=True)
            else:
                document = _fetch_json_pushes(base_url, repo_name, start_id, end_id)
            pushes = document["pushes"]
            missing = [push_id for push_id in push_ids if str(push_id) not in pushes]
            if missing:
                raise LookupError(f"pushes {missing} are not in the pushlog of {repo_name}")

        changesets = [
            changeset for push_id in push_ids for changeset in pushes[str(push_id)]["changesets"]
        ]
        parents = {parent for changeset in changesets for parent in changeset["parents"]}
        repo_url = base_url + repo_name
        data = {
            "repo_url": repo_url,
            "heads": [c["node"] for c in changesets if c["node"] not in parents],
            "source": "serve",
            "pushlog_pushes": [
                {
                    "pushid": push_id,
                    "time": pushes[str(push_id)]["date"],
                    "user": pushes[str(push_id)]["user"],
                    "push_json_url": f"{repo_url}/json-pushes?version=2"
                    f"&startID={push_id - 1}&endID={push_id}",
                    "push_full_json_url": f"{repo_url}/json-pushes?version=2&full=1"
                    f"&startID={push_id - 1}&endID={push_id}",
                }
                for push_id in push_ids
            ],
        }
        return self._publish_message(repo_name, "changegroup.1", data)

    def publish_newrepo(self, source: HgmoStandIn | str, repo_name: str) -> dict[str, Any]:
        """Announce that repository `repo_name` was created."""
        data = {"repo_url": _base_url_of(source) + repo_name}
        return self._publish_message(repo_name, "newrepo.1", data)

    def publish_obsolete(
        self, source: HgmoStandIn | str, repo_name: str, markers: Sequence[Mapping[str, Any]]
    ) -> dict[str, Any]:
        """Announce obsolescence markers, each {"precursor", "successors", "user", "time"}."""
        data = {"repo_url": _base_url_of(source) + repo_name, "markers": list(markers)}
        return self._publish_message(repo_name, "obsolete.1", data)

    def publish_raw(
        self, routing_key: str, body: bytes, content_type: str = "application/json"
    ) -> None:
        """Publish `body` as it is, for tests of malformed messages."""
        self._producer.publish(
            body,
            routing_key=routing_key,
            content_type=content_type,
            content_encoding="utf-8",
            delivery_mode=2,
            retry=True,
        )
        log.info("published %d raw bytes for %s", len(body), routing_key)

    def close(self) -> None:
        self._connection.release()

    def __enter__(self) -> HgmoPublisher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _publish_message(
        self, routing_key: str, message_type: str, data: dict[str, Any]
    ) -> dict[str, Any]:
        sent = datetime.now(UTC).replace(tzinfo=None)
        body = {
            "payload": {"type": message_type, "data": data},
            "_meta": {
                "exchange": self.exchange_name,
                "routing_key": routing_key,
                "serializer": "json",
                "sent": sent.isoformat(timespec="microseconds"),
            },
        }
        self._producer.publish(
            json.dumps(body).encode("utf-8"),
            routing_key=routing_key,
            content_type="application/json",
            content_encoding="utf-8",
            delivery_mode=2,
            retry=True,
        )
        log.info("published %s for %s", message_type, routing_key)
        return body


def _base_url_of(source: HgmoStandIn | str) -> str:
    base_url = source.base_url if isinstance(source, HgmoStandIn) else source
    return base_url if base_url.endswith("/") else base_url + "/"


def _fetch_json_pushes(base_url: str, repo_name: str, start_id: int, end_id: int) -> dict:
    url = f"{base_url}{repo_name}/json-pushes?version=2&full=1&startID={start_id}&endID={end_id}"
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve a stand-in until SIGTERM or Ctrl-C."""
    parser = argparse.ArgumentParser(description="Serve a local stand-in for hg.mozilla.org.")
    parser.add_argument("--root", type=Path, required=True, help="directory of the repositories")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    arguments = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )

    # Blocked before the server threads start, so that only sigwait below receives them.
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    with HgmoStandIn(arguments.root, arguments.host, arguments.port):
        received = signal.sigwait(stop_signals)
        log.info("received %s, shutting down", signal.Signals(received).name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
