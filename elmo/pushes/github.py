"""Handling GitHub pushes from Pulse, in Taskcluster's format
(`exchange/taskcluster-github/v1/push`) and in the older webhook format
(`exchange/github-webhooks/v1`): fetch the bare clone under its lock and
record the commits not yet recorded as the repository's next push."""

import json
import re
import time
from dataclasses import dataclass
from datetime import datetime

from elmo.life.models import NULL_REVISION, Push, Repository
from elmo.pushes.gitclones import GitClones
from elmo.pushes.pushlog import PushedChangeset, PushlogPush
from elmo.pushes.records import record_pushes
from shardworker import metrics
from shardworker.deliveries import GITHUB_PUSH_EXCHANGE, GITHUB_WEBHOOKS_EXCHANGE, Delivery
from shardworker.errors import PermanentError
from shardworker.results import IGNORED, PROCESSED, UNKNOWN_REPOSITORY, Result

MAX_BODY_BYTES = 8 * 1024 * 1024
FULL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}/[A-Za-z0-9._][A-Za-z0-9._-]{0,99}")
DELIVERY_ID = re.compile(r"[A-Za-z0-9-]{1,64}")
SHA = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class GitHubPush:
    """The parts of a push event the worker uses."""

    full_name: str
    delivery_id: str
    ref: str
    after: str
    forced: bool
    deleted: bool
    pusher: str
    pushed_at: int


class GitHubHandler:
    """Processes GitHub push messages for one shard."""

    def __init__(self, clones: GitClones, base_url: str):
        self.clones = clones
        self.base_url = base_url

    def __call__(self, delivery: Delivery) -> Result:
        push = parse_message(delivery)
        if push is None:
            return Result(IGNORED, delivery.repository[:100], "not a push event")
        repository = Repository.objects.filter(name=push.full_name, kind=Repository.GIT,
                                               archived=False).first()
        if repository is None:
            return Result(UNKNOWN_REPOSITORY, push.full_name, "untracked GitHub repository")
        if not push.ref.startswith("refs/heads/"):
            return Result(IGNORED, push.full_name, f"push to {push.ref[:80]}, not a branch")
        branch = push.ref[len("refs/heads/"):]
        if branch != (repository.branch or "main"):
            return Result(IGNORED, push.full_name, f"push to untracked branch {branch[:80]}")
        if push.deleted:
            return Result(IGNORED, push.full_name,
                          f"tracked branch {branch} deleted on GitHub; recorded history kept")
        if Push.objects.filter(repository=repository, delivery_id=push.delivery_id).exists():
            return Result(PROCESSED, push.full_name, "delivery already recorded")
        return self.sync(repository, branch, push)

    def sync(self, repository: Repository, branch: str, push: GitHubPush) -> Result:
        """Record the commits reachable from the branch head and not yet
        recorded as one push. A missed delivery is repaired here: its
        commits are reachable from the next head."""
        measures = metrics.get()
        url = f"{self.base_url}{repository.name}.git"
        with self.clones.locked(repository.name) as waited:
            measures["lock_wait"].observe(waited)
            started = time.monotonic()
            operation = self.clones.fetch(repository.name, url, branch)
            measures["clone_update"].labels(operation).observe(time.monotonic() - started)
            head = self.clones.head(repository.name, branch)
            recorded = set(repository.changesets.values_list("revision", flat=True))
            new = [sha for sha in self.clones.ancestry(repository.name, head)
                   if sha not in recorded]
            if not new:
                return Result(PROCESSED, repository.name,
                              f"{operation} clone, nothing new at {head[:12]}")
            push_id = repository.last_known_push() + 1
            commits = self.clones.commits(repository.name, new)
            record_pushes(repository, [PushlogPush(
                push_id=push_id, user=push.pusher, date=push.pushed_at,
                changesets=tuple(
                    PushedChangeset(node=c.sha, author=c.author, desc=c.message,
                                    branch=branch, parents=c.parents or (NULL_REVISION,),
                                    files=c.files)
                    for c in commits
                ),
            )], delivery_id=push.delivery_id)
            self.clones.keep_push(repository.name, push_id, head)
        forced = "forced " if push.forced else ""
        return Result(PROCESSED, repository.name,
                      f"{operation} clone, {forced}push {push_id} ({len(new)} commits) "
                      f"to {head[:12]}, lock wait {waited:.2f}s")


def parse_message(delivery: Delivery) -> GitHubPush | None:
    """Check either format; None for events other than pushes."""
    if len(delivery.body) > MAX_BODY_BYTES:
        raise PermanentError(f"body of {len(delivery.body)} bytes exceeds {MAX_BODY_BYTES}")
    try:
        document = json.loads(delivery.body)
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        raise PermanentError(f"body is not JSON: {error}") from None
    if not isinstance(document, dict):
        raise PermanentError("body is not an object")
    if delivery.exchange == GITHUB_PUSH_EXCHANGE:
        event, delivery_id = document.get("body"), document.get("eventId")
        named = (f"{document.get('organization', '')}/{document.get('repository', '')}"
                 .replace("%", "."))
    elif delivery.exchange == GITHUB_WEBHOOKS_EXCHANGE:
        if document.get("event") != "push":
            return None
        event, delivery_id = document.get("payload"), document.get("request_id")
        named = delivery.repository
    else:
        raise PermanentError(f"not a GitHub exchange: {delivery.exchange!r:.100}")
    if not isinstance(event, dict):
        raise PermanentError("message carries no push event")
    if not isinstance(delivery_id, str) or not DELIVERY_ID.fullmatch(delivery_id):
        raise PermanentError(f"message has no valid delivery id: {delivery_id!r:.80}")
    repository = event.get("repository")
    full_name = repository.get("full_name") if isinstance(repository, dict) else None
    if not isinstance(full_name, str) or not FULL_NAME.fullmatch(full_name) \
            or ".." in full_name:
        raise PermanentError(f"push event has no valid repository name: {full_name!r:.120}")
    if full_name.lower() != named.lower():
        raise PermanentError(f"message names {named!r:.120} but the event is for {full_name}")
    ref, after = event.get("ref"), event.get("after")
    if not isinstance(ref, str) or not ref.startswith("refs/") or len(ref) > 300:
        raise PermanentError(f"push event has no valid ref: {ref!r:.80}")
    if not isinstance(after, str) or not SHA.fullmatch(after):
        raise PermanentError(f"push event has no valid after: {after!r:.80}")
    pusher = event.get("pusher") if isinstance(event.get("pusher"), dict) else {}
    who = pusher.get("email") or pusher.get("name") or "unknown"
    return GitHubPush(
        full_name=full_name,
        delivery_id=delivery_id,
        ref=ref,
        after=after,
        forced=event.get("forced") is True,
        deleted=event.get("deleted") is True,
        pusher=str(who)[:200],
        pushed_at=_pushed_at(repository.get("pushed_at")),
    )


def _pushed_at(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**40:
        return value
    if isinstance(value, str):
        try:
            return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())
        except ValueError:
            pass
    return int(time.time())
