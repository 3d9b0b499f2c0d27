"""Handling hg.mozilla.org's `exchange/hgpushes/v2` messages: check the
message, update the clone under its lock, and sync pushes from the pushlog."""

import json
import logging
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.db import transaction

from elmo.life.models import Forest, Locale, Repository
from elmo.pushes.clones import Clones, check_repository_name
from elmo.pushes.pushlog import PushlogPush, fetch_page
from elmo.pushes.records import record_pushes
from shardworker import metrics
from shardworker.deliveries import Delivery
from shardworker.errors import PermanentError
from shardworker.results import IGNORED, PROCESSED, UNKNOWN_REPOSITORY, Result

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_PUSHLOG_PUSHES = 10_000


@dataclass(frozen=True)
class HgMessage:
    """The fields of an hg.mozilla.org message that the worker uses."""

    kind: str
    repository: str
    push_ids: tuple[int, ...]


class HgmoHandler:
    """Processes hgpushes/v2 messages for one shard."""

    def __init__(self, clones: Clones, base_url: str, *, http_timeout: float,
                 pushlog_page: int, pushlog_max_bytes: int):
        self.clones = clones
        self.base_url = base_url
        self.http_timeout = http_timeout
        self.pushlog_page = pushlog_page
        self.pushlog_max_bytes = pushlog_max_bytes

    def __call__(self, delivery: Delivery) -> Result:
        message = parse_message(delivery, self.base_url)
        if message.kind == "changegroup.1":
            return self.changegroup(message, delivery)
        if message.kind == "newrepo.1":
            return self.newrepo(message, delivery)
        if message.kind == "obsolete.1":
            return Result(IGNORED, message.repository, "obsolete markers, nothing to record")
        return Result(IGNORED, message.repository, f"unknown message type {message.kind[:60]!r}")

    def changegroup(self, message: HgMessage, delivery: Delivery) -> Result:
        repository = Repository.objects.filter(name=message.repository,
                                               kind=Repository.HG).first()
        if repository is None:
            return Result(UNKNOWN_REPOSITORY, message.repository, "untracked repository")
        if repository.archived:
            return Result(IGNORED, message.repository, "archived repository")
        target = max(message.push_ids) if message.push_ids else None
        return self.sync(repository, target)

    def newrepo(self, message: HgMessage, delivery: Delivery) -> Result:
        forest_name, _, locale_code = message.repository.rpartition("/")
        forest = Forest.objects.filter(name=forest_name, archived=False).first()
        if forest is None:
            return Result(UNKNOWN_REPOSITORY, message.repository,
                          "new repository outside the tracked forests")
        with transaction.atomic():
            locale, _ = Locale.objects.get_or_create(code=locale_code[:30])
            repository, created = Repository.objects.get_or_create(
                name=message.repository,
                defaults={"url": self.base_url + message.repository, "forest": forest,
                          "locale": locale},
            )
        if created:
            logger.info("repo=%s msg=%s new repository registered in forest %s",
                        message.repository, delivery.short_id, forest.name)
        elif repository.kind != Repository.HG:
            raise PermanentError(f"newrepo.1 for {message.repository}, which elmo tracks as a "
                                 f"{repository.get_kind_display()} repository")
        elif repository.archived:
            return Result(IGNORED, message.repository, "archived repository")
        return self.sync(repository, None)

    def sync(self, repository: Repository, target: int | None) -> Result:
        """Bring clone and database up to push `target` (the latest when None).

        The pushlog is read before the pull, so the clone holds every
        changeset the database records. Each pushlog page is one transaction;
        a later sync resumes from the last recorded push.
        """
        url = self.base_url + repository.name
        measures = metrics.get()
        with self.clones.locked(repository.name) as waited:
            measures["lock_wait"].observe(waited)
            last = repository.last_known_push()
            if target is not None and target <= last and self.clones.exists(repository.name):
                return Result(PROCESSED, repository.name,
                              f"already at push {last}, nothing to do, lock wait {waited:.2f}s")
            pages = self.read_pushlog(url, last, target)
            started = time.monotonic()
            update = self.clones.update(repository.name, url)
            measures["clone_update"].labels(update).observe(time.monotonic() - started)
            named = {c.node for page in pages for push in page for c in push.changesets}
            lacking = self.clones.lacking(repository.name, named)
            if lacking:
                raise PermanentError(
                    f"the pushlog of {url} names {len(lacking)} changeset(s) the hg host did "
                    f"not send, such as {min(lacking)}"
                )
            pushes = changesets = 0
            for page in pages:
                counted = record_pushes(repository, page)
                pushes += counted[0]
                changesets += counted[1]
        first = pages[0][0].push_id if pages and pages[0] else None
        span = f"pushes {first}-{pages[-1][-1].push_id}" if first is not None else "no new pushes"
        return Result(
            PROCESSED, repository.name,
            f"{update} clone, {span} ({pushes} pushes, {changesets} changesets), "
            f"lock wait {waited:.2f}s",
        )

    def read_pushlog(self, url: str, last: int, target: int | None) -> list[list[PushlogPush]]:
        """Pages of pushes after `last`, up to `target` or the latest push."""
        pages = []
        start = last
        while target is None or start < target:
            end = start + self.pushlog_page
            if target is not None:
                end = min(end, target)
            page = fetch_page(url, start, end, timeout=self.http_timeout,
                              max_bytes=self.pushlog_max_bytes)
            if page.pushes:
                pages.append(list(page.pushes))
            elif min(end, page.last_push_id) > start:
                # Push ids have no gaps: a page without pushes that it claims
                # exists is a lie, and paging on would take hours.
                raise PermanentError(f"pushlog of {url} claims pushes up to "
                                     f"{page.last_push_id} but sent none after {start}")
            if target is None:
                target = page.last_push_id
            elif page.last_push_id < target:
                raise PermanentError(
                    f"message names push {target} but the pushlog of {url} ends at "
                    f"{page.last_push_id}"
                )
            start = end
        return pages


def parse_message(delivery: Delivery, base_url: str) -> HgMessage:
    """Check an hgpushes/v2 body; anything malformed is a PermanentError."""
    if len(delivery.body) > MAX_BODY_BYTES:
        raise PermanentError(f"body of {len(delivery.body)} bytes exceeds {MAX_BODY_BYTES}")
    try:
        document = json.loads(delivery.body)
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        raise PermanentError(f"body is not JSON: {error}") from None
    payload = document.get("payload") if isinstance(document, dict) else None
    data = payload.get("data") if isinstance(payload, dict) else None
    kind = payload.get("type") if isinstance(payload, dict) else None
    if not isinstance(kind, str) or not isinstance(data, dict):
        raise PermanentError("body lacks payload.type or payload.data")
    repository = repository_from_url(data.get("repo_url"), base_url)
    if delivery.routing_key and delivery.routing_key != repository:
        raise PermanentError(
            f"routing key {delivery.routing_key!r:.120} does not match repo_url {repository!r}"
        )
    push_ids: tuple[int, ...] = ()
    if kind == "changegroup.1":
        push_ids = parse_push_ids(data.get("pushlog_pushes"))
    return HgMessage(kind=kind, repository=repository, push_ids=push_ids)


def repository_from_url(repo_url: object, base_url: str) -> str:
    """The repository path of `repo_url`, which must be under the hg host."""
    if not isinstance(repo_url, str):
        raise PermanentError("payload.data.repo_url is missing")
    base = urlsplit(base_url)
    try:
        url = urlsplit(repo_url)
        port = url.port
    except ValueError:
        raise PermanentError(f"repo_url {repo_url!r:.200} is not a URL") from None
    if url.scheme not in ("http", "https") or url.hostname != base.hostname \
            or port != base.port:
        raise PermanentError(f"repo_url {repo_url!r:.200} is not on {base.netloc} "
                             "(ELMO_HG_BASE_URL)")
    if url.query or url.fragment or url.username:
        raise PermanentError(f"repo_url {repo_url!r:.200} is not a plain repository URL")
    if not url.path.startswith(base.path):
        raise PermanentError(f"repo_url {repo_url!r:.200} is outside {base_url}")
    return check_repository_name(url.path[len(base.path):].strip("/"))


def parse_push_ids(pushes: object) -> tuple[int, ...]:
    if not isinstance(pushes, list):
        raise PermanentError("changegroup.1 lacks the pushlog_pushes list")
    if len(pushes) > MAX_PUSHLOG_PUSHES:
        raise PermanentError(f"changegroup.1 lists {len(pushes)} pushes, too many")
    push_ids = []
    for push in pushes:
        push_id = push.get("pushid") if isinstance(push, dict) else None
        if not isinstance(push_id, int) or isinstance(push_id, bool) or not 0 < push_id < 2**31:
            raise PermanentError(f"pushlog_pushes holds an invalid pushid: {push_id!r:.40}")
        push_ids.append(push_id)
    return tuple(push_ids)
