"""Bare git clones of GitHub repositories, under the same clone root and the
same file locks as the Mercurial clones, driven by the `git` command with a
clean configuration."""

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

from elmo.pushes.clones import Clones, _die_with_parent, remove
from shardworker.errors import PermanentError, TransientError

FIELD = "\x1f"
RECORD = "\x1e"
LOG_FORMAT = f"{RECORD}%H{FIELD}%P{FIELD}%an <%ae>{FIELD}%B{FIELD}"


@dataclass(frozen=True)
class Commit:
    sha: str
    parents: tuple[str, ...]
    author: str
    message: str
    files: tuple[str, ...]


# git follows the first redirect of a fetch to any host; the worker follows
# none, so that clones only ever come from the configured host.
GIT_OPTIONS = ("-c", "http.followRedirects=false")
REDIRECTED = re.compile(r"returned error: 30[1278]\b")


def git_environment() -> dict[str, str]:
    """No system or user configuration, no prompts, plain messages."""
    keep = ("PATH", "LANG", "LC_ALL", "TMPDIR")
    environment = {name: os.environ[name] for name in keep if name in os.environ}
    environment.update(GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=os.devnull,
                       GIT_TERMINAL_PROMPT="0", HOME=tempfile.gettempdir(), LC_ALL="C")
    return environment


class GitClones(Clones):
    """Bare clones that fetch one branch each."""

    def __init__(self, *arguments, git_command: str = "", **keywords):
        super().__init__(*arguments, **keywords)
        self.git = git_command or shutil.which("git") or "git"

    def exists(self, name: str) -> bool:
        path = self.path_for(name)
        return (path / "HEAD").is_file() and (path / "objects").is_dir()

    def fetch(self, name: str, url: str, branch: str) -> str:
        """Bring `branch` of the clone to what `url` has (forced pushes
        included) and return its head. Call it while holding the lock."""
        path = self.path_for(name)
        operation = "fetched"
        if not self.exists(name):
            path.parent.mkdir(parents=True, exist_ok=True)
            remove(path)
            scratch = path.parent / f".{path.name}.cloning"
            remove(scratch)
            self.git_run(["init", "--bare", "--quiet", str(scratch)], name)
            os.rename(scratch, path)
            operation = "cloned"
        refspec = f"+refs/heads/{branch}:refs/heads/{branch}"
        self.git_run(["-C", str(path), "fetch", "--quiet", "--no-tags", "--", url, refspec],
                     name)
        return operation

    def head(self, name: str, branch: str) -> str:
        return self.git_run(["-C", str(self.path_for(name)), "rev-parse", "--verify",
                             f"refs/heads/{branch}^{{commit}}"], name).strip()

    def ancestry(self, name: str, head: str) -> list[str]:
        """Every commit reachable from `head`, parents before children."""
        output = self.git_run(["-C", str(self.path_for(name)), "rev-list", "--topo-order",
                               "--reverse", head], name)
        return output.split()

    def commits(self, name: str, shas: list[str]) -> list[Commit]:
        """Author, message, parents and files (against the first parent) of
        each commit, in the order given."""
        if not shas:
            return []
        output = self.git_run(
            ["-C", str(self.path_for(name)), "log", "--no-walk=unsorted", "--stdin",
             f"--format={LOG_FORMAT}", "--name-only", "--diff-merges=first-parent",
             "--no-renames"],
            name, stdin="\n".join(shas) + "\n",
        )
        found = {}
        for chunk in output.split(RECORD)[1:]:
            sha, parents, author, message, files = chunk.split(FIELD, 4)
            found[sha] = Commit(sha, tuple(parents.split()), author, message.rstrip("\n"),
                                tuple(line for line in files.splitlines() if line))
        return [found[sha] for sha in shas]

    def keep_push(self, name: str, push_id: int, head: str) -> None:
        """Keep every recorded push reachable, even after a forced push."""
        self.git_run(["-C", str(self.path_for(name)), "update-ref",
                      f"refs/elmo/pushes/{push_id}", head], name)

    def git_run(self, arguments: list[str], name: str, stdin: str | None = None) -> str:
        try:
            result = subprocess.run(
                [self.git, *GIT_OPTIONS, *arguments], env=git_environment(), input=stdin,
                stdin=None if stdin is not None else subprocess.DEVNULL,
                capture_output=True, text=True, timeout=self.timeout,
                preexec_fn=_die_with_parent, check=False,
            )
        except subprocess.TimeoutExpired:
            raise TransientError(f"git timed out after {self.timeout:.0f} s for {name}") from None
        if result.returncode == 0:
            return result.stdout
        error = (result.stderr or result.stdout).strip()
        error = error.splitlines()[-1] if error else f"exit code {result.returncode}"
        if "not found" in error and "repository" in error:
            raise PermanentError(f"GitHub does not know {name}: {error}")
        if REDIRECTED.search(error):
            raise PermanentError(f"git for {name}: the host redirects (the repository may "
                                 f"have moved; update its URL): {error}")
        raise TransientError(f"git failed for {name}: {error}")
