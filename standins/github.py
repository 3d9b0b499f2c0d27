"""A local stand-in for GitHub: real git repositories served over smart HTTP by `git http-backend`
on loopback, the push events GitHub would send about them, and a publisher of both Pulse formats.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path, PurePosixPath
from typing import IO, Any
from wsgiref.util import is_hop_by_hop

import kombu

from standins.server import Served

log = logging.getLogger(__name__)

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"
TASKCLUSTER_PUSH_EXCHANGE = "exchange/taskcluster-github/v1/push"
GITHUB_WEBHOOKS_EXCHANGE = "exchange/github-webhooks/v1"
DEFAULT_AUTHOR = "A Translator <translator@example.org>"
DEFAULT_PUSHER = ("translator", "translator@example.org")
DEFAULT_INSTALLATION_ID = 12345
NULL_SHA = "0" * 40
MAX_PUSH_COMMITS = 20

_GIT_EXECUTABLE = shutil.which("git") or "git"
_NAME = r"[A-Za-z0-9_.-]+"
_FULL_NAME = re.compile(rf"(?P<owner>{_NAME})/(?P<name>{_NAME})")
_SERVED_PATH = re.compile(rf"/(?P<owner>{_NAME})/(?P<name>{_NAME}?)(?:\.git)?(?P<rest>/.*)")
_AUTHOR = re.compile(r"(?P<name>.*?)\s*<(?P<email>[^>]*)>")
_LOG_FORMAT = "%x00".join(["%H", "%T", "%an", "%ae", "%aI", "%cn", "%ce", "%P", "%B"])
_CHUNK = 64 * 1024


class UnknownRepository(LookupError):
    """The stand-in serves no repository of that name."""


class GitCommandError(subprocess.CalledProcessError):
    """A git subprocess failed; its message carries git's own error output."""

    def __str__(self) -> str:
        return f"{super().__str__()}\n{self.stderr.strip()}"


def git_environment(home: Path) -> dict[str, str]:
    """An environment for git free of any user's or the system's configuration."""
    return {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(home),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TERMINAL_PROMPT": "0",
        "LC_ALL": "C",
    }


def run_git(
    arguments: Sequence[str],
    home: Path,
    cwd: Path | None = None,
    input: str | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> str:
    """Run the real git client without user configuration and return its output.

    Raises GitCommandError, with git's error output, when git exits non-zero.
    """
    command = [_GIT_EXECUTABLE, *arguments]
    completed = subprocess.run(
        command,
        cwd=cwd,
        env={**git_environment(home), **(extra_env or {})},
        input=input,
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        raise GitCommandError(completed.returncode, command, completed.stdout, completed.stderr)
    return completed.stdout


def _split_full_name(full_name: str) -> tuple[str, str]:
    match = _FULL_NAME.fullmatch(full_name)
    if not match or {".", ".."} & set(match.groups()):
        raise ValueError(f"not a repository full name like owner/name: {full_name!r}")
    return match["owner"], match["name"]


def _split_author(author: str) -> tuple[str, str]:
    match = _AUTHOR.fullmatch(author.strip())
    if not match:
        raise ValueError(f"not an author like 'Name <email>': {author!r}")
    return match["name"], match["email"]


def _checked_path(path: str) -> str:
    parts = PurePosixPath(path).parts
    if not parts or path.startswith("/") or {".", "..", ".git"} & set(parts):
        raise ValueError(f"not a path inside the repository: {path!r}")
    return path


def _number(text: str) -> int:
    """A stable positive id for a name, as GitHub has one for each user and repository."""
    return zlib.crc32(text.encode("utf-8")) % 10**9 + 1


def _node_id(kind: str, number: int) -> str:
    return base64.b64encode(f"0{len(kind)}:{kind}{number}".encode("ascii")).decode("ascii")



class GitHubStandIn(Served):
    """GitHub on loopback: bare repositories that the real git client clones and fetches.

    Repositories live under `root/repos/<owner>/<name>.git` and are served, read-only, at
    `<base_url><owner>/<name>.git` and `<base_url><owner>/<name>`. Commits are authored
    directly into the bare repositories, as a push to GitHub would leave them; `push_event`
    describes such a change as GitHub's push webhook does. `fail_next`, `delay` and `requests`
    let tests inject and observe faults on every request.
    """

    label = "GitHub stand-in"

    def __init__(self, root: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        self.root = Path(root)
        self.repositories_root = self.root / "repos"
        self.home = self.root / "home"
        self.host = host
        self.port = port
        self.delay = 0.0
        self.requests: list[tuple[str, str]] = []
        self._failures: list[int] = []
        self._state_lock = threading.Lock()
        self._authoring_lock = threading.RLock()
        self.repositories_root.mkdir(parents=True, exist_ok=True)
        self.home.mkdir(parents=True, exist_ok=True)

    # Lifecycle

    def start(self) -> GitHubStandIn:
        """Serve the repositories on a background thread until stop()."""
        self._serve(str(self.root))
        return self

    @property
    def address(self) -> str:
        return self.base_url

    @property
    def base_url(self) -> str:
        """The URL that `<owner>/<name>` is appended to, ending in a slash."""
        return f"http://{self.host}:{self.port}/"

    def repository_url(self, full_name: str) -> str:
        """The clone URL of repository `full_name`, as GitHub's `clone_url`."""
        return f"{self.base_url}{full_name}.git"

    # Repositories and their history

    def repository_path(self, full_name: str) -> Path:
        """The bare repository of `full_name` (like `mozilla-l10n/firefox-l10n`), existing or
        not."""
        owner, name = _split_full_name(full_name)
        return self.repositories_root / owner / f"{name}.git"

    def create_repository(self, full_name: str, default_branch: str = "main") -> Path:
        """Create an empty repository whose HEAD is `default_branch`; served from then on."""
        path = self.repository_path(full_name)
        if path.exists():
            raise FileExistsError(f"repository {full_name} already exists")
        path.parent.mkdir(parents=True, exist_ok=True)
        self._git(None, "init", "--quiet", "--bare", f"--initial-branch={default_branch}", path)
        log.info("created repository %s", full_name)
        return path

    def commit(
        self,
        full_name: str,
        files: Mapping[str, str | None],
        message: str = "Update localization",
        author: str = DEFAULT_AUTHOR,
        branch: str = "main",
        parents: Sequence[str] | None = None,
        timestamp: int | None = None,
    ) -> str:
        """Commit `files` on `branch` and move the branch to the new commit; returns its sha.

        `files` maps paths to new contents; None removes the file. The commit's parents are
        `parents` (revisions), else the branch head, else none (a root commit); its tree is the
        first parent's with `files` applied. Author and committer are `author`, dated
        `timestamp` (Unix seconds, UTC) or now.
        """
        with self._authoring_lock:
            path = self._existing_repository(full_name)
            if parents is None:
                head = self.head(full_name, branch)
                parents = [head] if head else []
            parents = [self._resolve_commit(path, parent) for parent in parents]
            tree = self._write_tree(path, parents[0] if parents else None, files)
            sha = self._commit_tree(path, tree, parents, message, author, timestamp)
            self._git(path, "update-ref", f"refs/heads/{branch}", sha)
        log.info("committed %s on %s of %s", sha[:12], branch, full_name)
        return sha

    def merge(
        self,
        full_name: str,
        branch: str,
        other: str,
        message: str = "Merge",
        author: str = DEFAULT_AUTHOR,
        timestamp: int | None = None,
    ) -> str:
        """Merge revision `other` into `branch` with a two-parent commit; returns its sha.

        The tree is what git's merge makes of both sides; conflicts raise ValueError.
        """
        with self._authoring_lock:
            path = self._existing_repository(full_name)
            ours = self.head(full_name, branch)
            if ours is None:
                raise ValueError(f"{full_name} has no branch {branch} to merge into")
            theirs = self._resolve_commit(path, other)
            try:
                tree = self._git(path, "merge-tree", "--write-tree", ours, theirs).split()[0]
            except GitCommandError as error:
                raise ValueError(f"merging {theirs} into {branch} conflicts") from error
            sha = self._commit_tree(path, tree, [ours, theirs], message, author, timestamp)
            self._git(path, "update-ref", f"refs/heads/{branch}", sha)
        log.info("merged %s into %s of %s as %s", theirs[:12], branch, full_name, sha[:12])
        return sha

    def force_branch(self, full_name: str, branch: str, sha: str) -> None:
        """Point `branch` at `sha` whatever it pointed at, as a force-push does."""
        with self._authoring_lock:
            path = self._existing_repository(full_name)
            self._git(path, "update-ref", f"refs/heads/{branch}", self._resolve_commit(path, sha))

    def delete_branch(self, full_name: str, branch: str) -> None:
        """Delete `branch`; its commits stay in the repository."""
        with self._authoring_lock:
            path = self._existing_repository(full_name)
            self._git(path, "update-ref", "-d", f"refs/heads/{branch}")

    def create_tag(self, full_name: str, tag: str, sha: str) -> None:
        """Create the lightweight tag `tag` on commit `sha`."""
        with self._authoring_lock:
            path = self._existing_repository(full_name)
            commit = self._resolve_commit(path, sha)
            self._git(path, "update-ref", f"refs/tags/{tag}", commit, "")

    def head(self, full_name: str, branch: str) -> str | None:
        """The sha that `branch` points at, None if there is no such branch."""
        path = self._existing_repository(full_name)
        return self._ref_sha(path, f"refs/heads/{branch}")

    def log(self, full_name: str, branch: str) -> list[str]:
        """Every commit reachable from `branch`, parents before children; empty if none."""
        path = self._existing_repository(full_name)
        if self._ref_sha(path, f"refs/heads/{branch}") is None:
            return []
        return self._rev_list(path, f"refs/heads/{branch}", [])

    # Push events

    def push_event(
        self,
        full_name: str,
        branch: str,
        before: str,
        after: str,
        *,
        pusher: tuple[str, str] = DEFAULT_PUSHER,
        forced: bool = False,
        created: bool = False,
        deleted: bool = False,
        ref: str | None = None,
        commit_limit: int = MAX_PUSH_COMMITS,
    ) -> dict[str, Any]:
        """The body of the push webhook GitHub sends when `ref` moved from `before` to `after`.

        `ref`, like a tag's, defaults to `refs/heads/<branch>`. A `before` of NULL_SHA means
        created, an `after` of NULL_SHA deleted, whatever the flags say. `commits` lists, oldest
        first, the last `commit_limit` commits reachable from `after` but not from `before` (for
        a created ref: not from any other branch); `distinct` is false for those already on
        another branch. `pusher` is (login, e-mail); the login is also the sender.
        """
        path = self._existing_repository(full_name)
        ref = ref or f"refs/heads/{branch}"
        created = created or before == NULL_SHA
        deleted = deleted or after == NULL_SHA
        html_url = self.base_url + full_name
        other_heads = [
            sha for other_ref, sha in self._refs(path, "refs/heads/") if other_ref != ref
        ]

        pushed: list[str] = []
        distinct: set[str] = set()
        if not deleted:
            excluded = other_heads if created else [before]
            pushed = self._rev_list(path, after, excluded)
            distinct = set(self._rev_list(path, after, [*excluded, *other_heads]))
        pushed = pushed[-commit_limit:] if commit_limit > 0 else []
        commits = [self._describe_commit(path, sha, sha in distinct, html_url) for sha in pushed]
        head_commit = None
        if not deleted:
            head_commit = next((c for c in commits if c["id"] == after), None)
            head_commit = head_commit or self._describe_commit(path, after, False, html_url)
        if created:
            compare = f"{html_url}/compare/{ref.split('/', 2)[-1]}"
        else:
            compare = f"{html_url}/compare/{before[:12]}...{after[:12]}"

        login, email = pusher
        return {
            "ref": ref,
            "before": before,
            "after": after,
            "repository": self._describe_repository(full_name, path),
            "pusher": {"name": login, "email": email},
            "sender": {
                "login": login,
                "id": _number(login),
                "node_id": _node_id("User", _number(login)),
                "html_url": self.base_url + login,
                "type": "User",
                "site_admin": False,
            },
            "created": created,
            "deleted": deleted,
            "forced": forced,
            "base_ref": None,
            "compare": compare,
            "commits": commits,
            "head_commit": head_commit,
        }

    # Faults

    def fail_next(self, count: int, status: int = 500) -> None:
        """Answer the next `count` requests, whatever their path, with HTTP `status`;
        0 ends the failures still pending."""
        with self._state_lock:
            if count == 0:
                self._failures.clear()
            self._failures.extend([status] * count)

    # Internals

    def _git(self, path: Path | None, *arguments: str | Path, **options: Any) -> str:
        prefix = [f"--git-dir={path}"] if path is not None else []
        return run_git([*prefix, *map(str, arguments)], self.home, **options)

    def _existing_repository(self, full_name: str) -> Path:
        try:
            path = self.repository_path(full_name)
        except ValueError:
            raise UnknownRepository(f"no repository {full_name}") from None
        if not (path / "HEAD").is_file():
            raise UnknownRepository(f"no repository {full_name}")
        return path

    def _resolve_commit(self, path: Path, revision: str) -> str:
        try:
            return self._git(path, "rev-parse", "--verify", f"{revision}^{{commit}}").strip()
        except GitCommandError:
            raise ValueError(f"no commit {revision} in {path}") from None

    def _ref_sha(self, path: Path, ref: str) -> str | None:
        return dict(self._refs(path, ref)).get(ref)

    def _refs(self, path: Path, prefix: str) -> list[tuple[str, str]]:
        output = self._git(path, "for-each-ref", "--format=%(refname) %(objectname)", prefix)
        return [tuple(line.split(" ", 1)) for line in output.splitlines()]

    def _rev_list(self, path: Path, tip: str, excluded: Iterable[str]) -> list[str]:
        excluded = [sha for sha in excluded if sha != NULL_SHA]
        arguments = ["rev-list", "--topo-order", "--reverse", tip]
        if excluded:
            arguments += ["--not", *excluded]
        return self._git(path, *arguments).split()

    def _write_tree(self, path: Path, parent: str | None, files: Mapping[str, str | None]) -> str:
        """The tree of `parent` (or an empty one) with `files` applied, written to `path`."""
        with tempfile.TemporaryDirectory(prefix="index-", dir=self.home) as scratch:
            index = {"GIT_INDEX_FILE": str(Path(scratch) / "index")}
            self._git(path, "read-tree", parent or "--empty", extra_env=index)
            entries = []
            for file_path, content in files.items():
                file_path = _checked_path(file_path)
                if content is None:
                    entries.append(f"0 {NULL_SHA}\t{file_path}")
                else:
                    blob = self._git(path, "hash-object", "-w", "--stdin", input=content).strip()
                    entries.append(f"100644 {blob}\t{file_path}")
            if entries:
                lines = "".join(entry + "\n" for entry in entries)
                self._git(path, "update-index", "--index-info", input=lines, extra_env=index)
            return self._git(path, "write-tree", extra_env=index).strip()

    def _commit_tree(
        self,
        path: Path,
        tree: str,
        parents: Sequence[str],
        message: str,
        author: str,
        timestamp: int | None,
    ) -> str:
        name, email = _split_author(author)
        date = f"{int(time.time()) if timestamp is None else timestamp} +0000"
        identity = {
            "GIT_AUTHOR_NAME": name,
            "GIT_AUTHOR_EMAIL": email,
            "GIT_AUTHOR_DATE": date,
            "GIT_COMMITTER_NAME": name,
            "GIT_COMMITTER_EMAIL": email,
            "GIT_COMMITTER_DATE": date,
        }
        parent_arguments = [argument for parent in parents for argument in ("-p", parent)]
        arguments = ["commit-tree", tree, *parent_arguments, "-F", "-"]
        return self._git(path, *arguments, input=message, extra_env=identity).strip()

    def _describe_repository(self, full_name: str, path: Path) -> dict[str, Any]:
        """The repository as push events describe it, with the times as Unix seconds."""
        owner, name = _split_full_name(full_name)
        html_url = self.base_url + full_name
        default_branch = self._git(path, "symbolic-ref", "--short", "HEAD").strip()
        return {
            "id": _number(full_name),
            "node_id": _node_id("Repository", _number(full_name)),
            "name": name,
            "full_name": full_name,
            "private": False,
            "owner": {
                "name": owner,
                "email": None,
                "login": owner,
                "id": _number(owner),
                "node_id": _node_id("Organization", _number(owner)),
                "html_url": self.base_url + owner,
                "type": "Organization",
                "site_admin": False,
            },
            "html_url": html_url,
            "description": None,
            "fork": False,
            "url": html_url,
            "created_at": int((path / "HEAD").stat().st_mtime),
            "updated_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "pushed_at": int(time.time()),
            "git_url": f"git://{self.host}:{self.port}/{full_name}.git",
            "ssh_url": f"git@{self.host}:{full_name}.git",
            "clone_url": self.repository_url(full_name),
            "svn_url": html_url,
            "homepage": None,
            "size": 0,
            "visibility": "public",
            "archived": False,
            "disabled": False,
            "default_branch": default_branch,
            "master_branch": default_branch,
            "organization": owner,
        }

    def _describe_commit(
        self, path: Path, sha: str, distinct: bool, html_url: str
    ) -> dict[str, Any]:
        """A commit as the push webhook lists it."""
        fields = self._git(path, "show", "--no-patch", f"--format={_LOG_FORMAT}", sha).split("\0")
        sha, tree, author, author_email, date, committer, committer_email, parents, body = fields
        changes: dict[str, list[str]] = {"A": [], "D": [], "M": []}
        first_parent = parents.split()[:1] or ["--root"]
        options = ["-r", "-z", "--no-commit-id", "--no-renames", "--name-status"]
        diff = self._git(path, "diff-tree", *options, *first_parent, sha).split("\0")[:-1]
        for status, file_path in zip(diff[::2], diff[1::2], strict=True):
            changes.get(status[:1], changes["M"]).append(file_path)
        return {
            "id": sha,
            "tree_id": tree,
            "distinct": distinct,
            "message": body.rstrip("\n"),
            "timestamp": date,
            "url": f"{html_url}/commit/{sha}",
            "author": _person(author, author_email),
            "committer": _person(committer, committer_email),
            "added": changes["A"],
            "removed": changes["D"],
            "modified": changes["M"],
        }

    # Serving

    def _application(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        path = environ.get("PATH_INFO", "")
        query = environ.get("QUERY_STRING", "")
        with self._state_lock:
            self.requests.append((method, f"{path}?{query}" if query else path))
            injected_status = self._failures.pop(0) if self._failures else None
        if self.delay:
            time.sleep(self.delay)

        if injected_status is not None:
            log.info("answering %s %s with injected %d", method, path, injected_status)
            for _ in _request_body(environ):
                pass  # read it all, so that the client sees the answer rather than a reset
            return _respond(start_response, injected_status, b"injected failure\n")
        match = _SERVED_PATH.fullmatch(path)
        try:
            full_name = f"{match['owner']}/{match['name']}" if match else ""
            self._existing_repository(full_name)
        except UnknownRepository:
            return _respond(start_response, 404, b"Repository not found.\n")
        return self._serve_git(environ, start_response, f"/{full_name}.git{match['rest']}")

    def _serve_git(
        self, environ: dict[str, Any], start_response: Any, path_info: str
    ) -> Iterable[bytes]:
        """Answer with what `git http-backend`, run as a CGI program, makes of the request."""
        cgi_environment = {
            **git_environment(self.home),
            "GIT_PROJECT_ROOT": str(self.repositories_root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": environ.get("SERVER_PROTOCOL", "HTTP/1.1"),
            "REQUEST_METHOD": environ["REQUEST_METHOD"],
            "PATH_INFO": path_info,
            "QUERY_STRING": environ.get("QUERY_STRING", ""),
            "CONTENT_TYPE": environ.get("CONTENT_TYPE", ""),
            "REMOTE_ADDR": environ.get("REMOTE_ADDR", ""),
        }
        chunked = environ.get("HTTP_TRANSFER_ENCODING", "").lower() == "chunked"
        if environ.get("CONTENT_LENGTH") and not chunked:
            cgi_environment["CONTENT_LENGTH"] = environ["CONTENT_LENGTH"]
        for name in ("HTTP_CONTENT_ENCODING", "HTTP_GIT_PROTOCOL"):
            if name in environ:
                cgi_environment[name] = environ[name]

        errors = tempfile.TemporaryFile()
        process = subprocess.Popen(
            [_GIT_EXECUTABLE, "http-backend"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errors,
            env=cgi_environment,
        )
        feeder = threading.Thread(
            target=_feed, args=(_request_body(environ), process.stdin), daemon=True
        )
        feeder.start()
        try:
            status, headers = _read_cgi_headers(process.stdout)
        except ValueError as error:
            process.kill()
            _finish(process, feeder, errors, path_info)
            return _respond(start_response, 502, f"{error}\n".encode())
        start_response(status, headers)
        return _stream(process, feeder, errors, path_info)


def _person(name: str, email: str) -> dict[str, str]:
    return {"name": name, "email": email, "username": email.partition("@")[0]}


def _respond(start_response: Any, status: int, body: bytes) -> list[bytes]:
    start_response(
        f"{status} {HTTPStatus(status).phrase}",
        [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
    )
    return [body]


def _request_body(environ: dict[str, Any]) -> Iterator[bytes]:
    """The bytes of the request body, without the framing of a chunked transfer."""
    stream = environ["wsgi.input"]
    if environ.get("HTTP_TRANSFER_ENCODING", "").lower() == "chunked":
        while size := int(stream.readline().split(b";")[0].strip() or b"0", 16):
            yield from _read_exactly(stream, size)
            stream.readline()  # the line break that ends each chunk
        while stream.readline().strip():
            pass  # trailers
        return
    yield from _read_exactly(stream, int(environ.get("CONTENT_LENGTH") or 0))


def _read_exactly(stream: IO[bytes], size: int) -> Iterator[bytes]:
    while size > 0:
        data = stream.read(min(size, _CHUNK))
        if not data:
            return
        size -= len(data)
        yield data


def _feed(body: Iterator[bytes], stdin: IO[bytes]) -> None:
    """Copy the request body to the CGI program, which may stop reading at any time."""
    try:
        for data in body:
            stdin.write(data)
    except (OSError, ValueError) as error:
        log.debug("request body not fully passed on: %s", error)
    finally:
        try:
            stdin.close()
        except OSError:
            pass


def _read_cgi_headers(stdout: IO[bytes]) -> tuple[str, list[tuple[str, str]]]:
    """The HTTP status and headers that a CGI program wrote before its body."""
    status = "200 OK"
    headers = []
    while True:
        line = stdout.readline()
        if not line:
            raise ValueError("git http-backend ended before its headers did")
        line = line.rstrip(b"\r\n")
        if not line:
            return status, headers
        name, _, value = line.decode("latin-1").partition(":")
        name, value = name.strip(), value.strip()
        if name.lower() == "status":
            code = int(value.split()[0])
            status = value if " " in value else f"{code} {HTTPStatus(code).phrase}"
        elif not is_hop_by_hop(name):
            headers.append((name, value))


def _stream(
    process: subprocess.Popen, feeder: threading.Thread, errors: IO[bytes], path_info: str
) -> Iterator[bytes]:
    finished = False
    try:
        while data := process.stdout.read1(_CHUNK):
            yield data
        finished = True
    finally:
        if not finished:
            process.kill()  # the client went away
        _finish(process, feeder, errors, path_info)


def _finish(
    process: subprocess.Popen, feeder: threading.Thread, errors: IO[bytes], path_info: str
) -> None:
    returncode = process.wait()
    process.stdout.close()
    feeder.join(timeout=5)
    errors.seek(0)
    error_output = errors.read().decode("utf-8", "replace").strip()
    errors.close()
    if returncode != 0 or error_output:
        log.debug("git http-backend for %s exited %d: %s", path_info, returncode, error_output)


def _sanitized(name: str) -> str:
    """A name as Taskcluster's GitHub service puts it in routing keys and messages."""
    return re.sub(r"[^A-Za-z0-9_.-]", "", name).replace(".", "%")


class GitHubPublisher:
    """Publishes GitHub push events to RabbitMQ in the two formats that reach Pulse.

    `publish_push` sends what Taskcluster's GitHub service publishes on
    `exchange/taskcluster-github/v1/push`; `publish_webhook` what Mozilla's webhook relay
    publishes on `exchange/github-webhooks/v1`. Both exchanges are durable topic exchanges,
    messages are persistent JSON, and the publish methods return the body they sent.
    """

    def __init__(
        self, amqp_url: str = DEFAULT_AMQP_URL, webhooks_exchange: str = GITHUB_WEBHOOKS_EXCHANGE
    ) -> None:
        self.webhooks_exchange = webhooks_exchange
        self._connection = kombu.Connection(amqp_url)
        self._producer = kombu.Producer(self._connection.default_channel)
        self._exchanges: dict[str, kombu.Exchange] = {}
        for name in (TASKCLUSTER_PUSH_EXCHANGE, webhooks_exchange):
            self._exchange(name)

    def publish_push(self, event: Mapping[str, Any], *, event_id: str | None = None) -> dict:
        """Announce a push event as Taskcluster's GitHub service does.

        Organization and repository come from the event's repository, sanitized for routing
        keys; the branch is the ref without its `refs/heads/` or `refs/tags/` prefix. The
        installation id is the event's, else DEFAULT_INSTALLATION_ID; `event_id` (the
        delivery id) a new uuid4 unless given.
        """
        repository = event["repository"]
        owner = repository["owner"].get("name") or repository["owner"]["login"]
        sender = event["sender"]["login"]
        body = {
            "version": 1,
            "organization": _sanitized(owner),
            "repository": _sanitized(repository["name"]),
            "installationId": (event.get("installation") or {}).get("id", DEFAULT_INSTALLATION_ID),
            "eventId": event_id or str(uuid.uuid4()),
            "tasks_for": "github-push",
            "branch": "/".join(event["ref"].split("/")[2:]),
            "details": _push_details(event, sender),
            "body": dict(event),
        }
        routing_key = f"primary.{body['organization']}.{body['repository']}"
        self._publish(TASKCLUSTER_PUSH_EXCHANGE, routing_key, json.dumps(body).encode("utf-8"))
        return body

    def publish_webhook(
        self,
        event: Mapping[str, Any],
        *,
        request_id: str | None = None,
        event_name: str = "push",
    ) -> dict:
        """Announce a webhook event as Mozilla's github-webhooks relay does, routed by
        `<owner>/<repo>/<event_name>`; `request_id` (the delivery id) a new uuid4 unless given.
        """
        routing_key = f"{event['repository']['full_name']}/{event_name}"
        sent = datetime.now(UTC).replace(tzinfo=None)
        body = {
            "event": event_name,
            "request_id": request_id or str(uuid.uuid4()),
            "payload": dict(event),
            "_meta": {
                "exchange": self.webhooks_exchange,
                "routing_key": routing_key,
                "serializer": "json",
                "sent": sent.isoformat(timespec="microseconds"),
            },
        }
        self._publish(self.webhooks_exchange, routing_key, json.dumps(body).encode("utf-8"))
        return body

    def publish_raw(self, exchange: str, routing_key: str, body: bytes) -> None:
        """Publish `body` as it is to a topic exchange, for tests of malformed messages."""
        self._publish(exchange, routing_key, body)

    def close(self) -> None:
        self._connection.release()

    def __enter__(self) -> GitHubPublisher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _exchange(self, name: str) -> kombu.Exchange:
        if name not in self._exchanges:
            exchange = kombu.Exchange(name, type="topic", durable=True)
            exchange(self._connection.default_channel).declare()
            self._exchanges[name] = exchange
        return self._exchanges[name]

    def _publish(self, exchange: str, routing_key: str, body: bytes) -> None:
        self._producer.publish(
            body,
            exchange=self._exchange(exchange),
            routing_key=routing_key,
            content_type="application/json",
            content_encoding="utf-8",
            delivery_mode=2,
            retry=True,
        )
        log.info("published %d bytes to %s for %s", len(body), exchange, routing_key)


def _push_details(event: Mapping[str, Any], sender: str) -> dict[str, Any]:
    """The `details` that Taskcluster's GitHub service derives from a push event."""
    ref = event["ref"]
    ref_name = "/".join(ref.split("/")[2:])
    repository = event["repository"]
    details = {
        "event.base.ref": ref,
        "event.base.repo.name": repository["name"],
        "event.base.repo.url": repository["clone_url"],
        "event.base.sha": event["before"],
        "event.base.user.login": sender,
        "event.head.ref": ref,
        "event.head.repo.name": repository["name"],
        "event.head.repo.url": repository["clone_url"],
        "event.head.sha": event["after"],
        "event.head.user.login": sender,
        "event.head.user.id": event["sender"]["id"],
        "event.head.user.email": f"{sender}@users.noreply.github.com",
    }
    if ref.startswith("refs/tags/"):
        details["event.type"] = "tag"
        details["event.head.tag"] = ref_name
    else:
        details["event.type"] = "push"
        details["event.base.repo.branch"] = ref_name
        details["event.head.repo.branch"] = ref_name
    return details
