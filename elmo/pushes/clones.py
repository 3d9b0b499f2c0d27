"""The local clones under ELMO_REPOSITORY_BASE: where each one lives, the file
lock that guards it, and the Mercurial commands that update it.

Mercurial runs as the `hg` command with a clean configuration: no user or
system hgrc, no hooks or extensions from the environment, plain output and
no shell. docs/mercurial.md says why the command and not the Python API.
"""

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import filelock

from shardworker.errors import PermanentError, TransientError

logger = logging.getLogger(__name__)

# A repository path on the hg host: segments of letters, digits, `.`, `_`
# and `-`, each starting with a letter or digit, so `.` and `..` never pass.
SEGMENT = r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}"
REPOSITORY_NAME = re.compile(rf"{SEGMENT}(/{SEGMENT}){{0,4}}")
LOCK_DIRECTORY = ".locks"
MAX_NAME_LENGTH = 100  # life.Repository.name

# What hg says about a damaged clone, and the repair each calls for. The
# worker may repair because it holds the clone's file lock: nobody else is
# writing to the clone.
STALE_LOCK = ("timed out waiting for lock", "lock held by")
INTERRUPTED = ("abandoned transaction", "hg recover")
DAMAGED = ("is corrupted", "unknown parent", "damaged", "integrity check failed",
           "no match found", "empty or missing", "not found!", "checksum mismatch",
           "unknown revlog", "no node")
HG_LOCK_FILES = (".hg/wlock", ".hg/store/lock")
# Loaded into every hg: redirects are followed only within the host asked.
SAME_HOST_EXTENSION = Path(__file__).with_name("hg_same_host.py")
# Up to this many nodes are looked up by name; more, by listing the clone.
LOOKUP_BATCH = 400


class HgFailed(TransientError):
    """hg exited non-zero: the message names hg's reason (its `abort:` line),
    `output` holds all it said."""

    def __init__(self, message: str, output: str = ""):
        super().__init__(message)
        self.output = output or message


def hg_reason(output: str, returncode: int) -> str:
    """The line of hg's output that says why it failed: the last `abort:` line,
    else the last line that is not a parenthesised hint."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("abort:"):
            return line
    for line in reversed(lines):
        if not line.startswith("("):
            return line
    return lines[-1] if lines else f"exit code {returncode}"


def check_repository_name(name: str) -> str:
    """Return `name` if it is a safe repository path that the database can
    hold, else raise PermanentError."""
    if not isinstance(name, str) or not REPOSITORY_NAME.fullmatch(name):
        raise PermanentError(f"not a valid repository path: {name!r:.120}")
    if len(name) > MAX_NAME_LENGTH:
        raise PermanentError(f"repository path longer than {MAX_NAME_LENGTH} characters: "
                             f"{name!r:.120}")
    return name


def find_hg(configured: str = "") -> str:
    """The hg command: the configured one, the one beside this Python, or PATH's."""
    if configured:
        return configured
    beside = Path(sys.executable).parent / "hg"
    if beside.exists():
        return str(beside)
    found = shutil.which("hg")
    if not found:
        raise FileNotFoundError("no hg command found; install Mercurial or set ELMO_HG_COMMAND")
    return found


def clean_environment() -> dict[str, str]:
    """The environment for hg: plain output, no configuration but ours."""
    keep = ("PATH", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")
    environment = {name: os.environ[name] for name in keep if name in os.environ}
    environment.update(HGPLAIN="1", HGRCPATH="", HGENCODING="utf-8", HGUSER="elmo")
    return environment


def _die_with_parent() -> None:
    """Ask Linux to kill hg when the shard that started it dies."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except OSError:
        pass


class Clones:
    """The clone root: one Mercurial clone per repository path, each guarded
    by a file lock kept outside the clone."""

    def __init__(self, root: Path, hg_command: str = "", timeout: float = 900.0,
                 lock_timeout: float = 1800.0):
        self.root = Path(root).resolve()
        self.hg = find_hg(hg_command)
        self.timeout = timeout
        self.lock_timeout = lock_timeout

    def path_for(self, name: str) -> Path:
        """The clone's directory, guaranteed to be inside the clone root."""
        check_repository_name(name)
        path = (self.root / name).resolve()
        if not path.is_relative_to(self.root) or path == self.root:
            raise PermanentError(f"repository {name!r} would leave the clone root")
        return path

    def lock_path_for(self, name: str) -> Path:
        self.path_for(name)
        return self.root / LOCK_DIRECTORY / (name.replace("/", "__") + ".lock")

    @contextmanager
    def locked(self, name: str) -> Iterator[float]:
        """Hold the clone's file lock; yields the seconds spent waiting for it."""
        lock_path = self.lock_path_for(name)
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(lock_path, timeout=self.lock_timeout)
        started = time.monotonic()
        try:
            lock.acquire()
        except filelock.Timeout:
            raise TransientError(
                f"clone lock {lock_path} still held after {self.lock_timeout:.0f} s"
            ) from None
        try:
            yield time.monotonic() - started
        finally:
            lock.release()

    def exists(self, name: str) -> bool:
        return (self.path_for(name) / ".hg" / "store").is_dir()

    def update(self, name: str, url: str) -> str:
        """Bring the clone up to date with `url`: clone if missing, else pull.

        Call it while holding the lock. A damaged clone is repaired: stale
        hg locks are broken, an interrupted transaction is rolled back, and
        a corrupt store is cloned again. Returns "cloned", "pulled" or
        "repaired".
        """
        path = self.path_for(name)
        if not self.exists(name):
            self.clone(name, url)
            return "cloned"
        pull = ["-R", str(path), "pull", "--", url]
        try:
            self.run(pull, name, remote=True)
            return "pulled"
        except HgFailed as failure:
            repair = self.repair_for(failure.output)
            if repair is None:
                raise
            logger.warning("repo=%s clone damaged (%s); repairing: %s", name, failure, repair)
            self.count_repair(repair)
        if repair == "break-locks":
            for lock_file in HG_LOCK_FILES:
                (path / lock_file).unlink(missing_ok=True)
        elif repair == "recover":
            self.run(["-R", str(path), "recover"], name)
        if repair == "reclone":
            self.clone(name, url)
        else:
            self.run(pull, name, remote=True)
        return "repaired"

    def lacking(self, name: str, nodes: set[str]) -> set[str]:
        """The nodes the clone does not hold."""
        if not nodes:
            return set()
        path = str(self.path_for(name))
        if len(nodes) > LOOKUP_BATCH:
            held = self.run(["-R", path, "log", "-T", "{node}\n", "-r", "all()"], name)
            return nodes - set(held.split())
        revset = " + ".join(f"id({node})" for node in sorted(nodes))
        held = self.run(["-R", path, "log", "-T", "{node}\n", "-r", revset], name)
        return nodes - set(held.split())

    @staticmethod
    def repair_for(error: str) -> str | None:
        if any(text in error for text in STALE_LOCK):
            return "break-locks"
        if any(text in error for text in INTERRUPTED):
            return "recover"
        if any(text in error for text in DAMAGED):
            return "reclone"
        return None

    @staticmethod
    def count_repair(repair: str) -> None:
        from shardworker import metrics

        metrics.get()["clone_repairs"].labels(repair).inc()

    def clone(self, name: str, url: str) -> None:
        """Clone into a scratch directory beside the target and move it in
        place, so that an interrupted clone never looks like a clone.

        A clone is its `.hg` alone (`--noupdate`), so where a directory is in
        the way (it may hold the clones of nested repository paths, `a/b`
        inside `a`, each under its own lock), only its `.hg` is replaced."""
        path = self.path_for(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = path.parent / f".{path.name}.cloning"
        remove(scratch)
        try:
            self.run(["clone", "--noupdate", "--", url, str(scratch)], name, remote=True)
            if path.is_symlink() or (path.exists() and not path.is_dir()):
                logger.warning("repo=%s removing %s, which is in the clone's place", name, path)
                remove(path)
            if not path.exists():
                os.rename(scratch, path)
                return
            if (path / ".hg").exists() or (path / ".hg").is_symlink():
                logger.warning("repo=%s replacing the broken clone at %s", name, path)
                remove(path / ".hg")
            os.rename(scratch / ".hg", path / ".hg")
        finally:
            remove(scratch)

    def run(self, arguments: list[str], name: str, remote: bool = False) -> str:
        """Run hg; a failure that may heal raises TransientError. A `remote`
        command (clone, pull) loads the extension that keeps redirects on the
        host; local ones skip its imports."""
        command = [self.hg, "--config", "ui.interactive=false", "--config", "ui.timeout=10"]
        if remote:
            # Redirects stay on the host; clone bundles, which hg.mozilla.org
            # advertises on other hosts, are not fetched.
            command += ["--config", f"extensions.elmo_same_host={SAME_HOST_EXTENSION}",
                        "--config", "ui.clonebundles=false"]
        command += arguments
        try:
            result = subprocess.run(
                command,
                env=clean_environment(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=self.timeout,
                preexec_fn=_die_with_parent,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise TransientError(f"hg {arguments[-3] if len(arguments) > 2 else ''} "
                                 f"timed out after {self.timeout:.0f} s") from None
        if result.returncode == 0:
            return result.stdout.decode("utf-8", "replace")
        output = (result.stderr or result.stdout).decode("utf-8", "replace")
        error = hg_reason(output, result.returncode)
        if "HTTP Error 404" in error:
            raise PermanentError(f"the hg host does not know {name}: {error}")
        if "redirects to another host" in error:
            raise PermanentError(f"hg for {name}: {error.removeprefix('abort: ')}")
        raise HgFailed(f"hg failed for {name}: {error}", output)


def remove(path: Path) -> None:
    """Remove a file, a symbolic link or a directory tree, if there is one."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)
