"""Handling Taskcluster's task-completed, task-failed and task-exception
messages for l10n tasks: read the task's `elmo.json` through the queue API,
check it, and record one comparison per entry in one transaction."""

import json
import logging
import re
from dataclasses import dataclass
from datetime import datetime

import taskcluster
from django.db import transaction

from elmo.l10nstats.models import Run, TaskRun
from elmo.l10nstats.storage import ArtifactTooLarge, StorageUnavailable, read_artifact
from elmo.life.models import Changeset, Locale, Repository
from elmo.pushes.records import changeset_ids
from shardworker.deliveries import Delivery
from shardworker.errors import PermanentError, TransientError
from shardworker.results import IGNORED, PROCESSED, Result

logger = logging.getLogger(__name__)

SLUG = re.compile(r"[A-Za-z0-9_-]{22}")
REVISION = re.compile(r"[0-9a-f]{40}")
LOCALE_CODE = re.compile(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8}){0,3}")
SUMMARY_KEYS = ("errors", "warnings", "missing", "missing_w", "report", "obsolete", "changed",
                "changed_w", "unchanged", "unchanged_w", "keys")
MAX_BODY_BYTES = 1024 * 1024
ELMO_JSON = "elmo.json"
STATE_BY_EXCHANGE = {
    "exchange/taskcluster-queue/v1/task-completed": "completed",
    "exchange/taskcluster-queue/v1/task-failed": "failed",
    "exchange/taskcluster-queue/v1/task-exception": "exception",
}


@dataclass(frozen=True)
class TaskMessage:
    task_id: str
    run_id: int
    state: str
    reason: str
    task_group_id: str
    worker: str
    resolved: datetime | None


@dataclass(frozen=True)
class Comparison:
    locale: str
    config: str
    artifact: str
    revisions: dict[str, str]
    summary: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.summary[key] for key in ("changed", "unchanged", "report", "missing"))

    @property
    def completion(self) -> int:
        """Percent of strings translated, as compare-locales computes it."""
        return self.summary["changed"] * 100 // self.total if self.total else 0


def queue_client(root_url: str, timeout: float) -> taskcluster.Queue:
    """The real Taskcluster client; our own retries come on top of its few."""
    return taskcluster.Queue({"rootUrl": root_url, "maxRetries": 2})


class TaskclusterHandler:
    """Processes queue messages for one shard."""

    def __init__(self, root_url: str, route: str, *, http_timeout: float):
        self.queue = queue_client(root_url, http_timeout)
        self.route = route
        self.http_timeout = http_timeout

    def __call__(self, delivery: Delivery) -> Result:
        message = parse_message(delivery)
        if message.state != "completed":
            record_task_run(message)
            return Result(PROCESSED, message.task_id,
                          f"run {message.run_id} {message.state} ({message.reason})")
        definition = self.call(self.queue.task, message.task_id)
        if self.route not in (definition.get("routes") or []):
            return Result(IGNORED, message.task_id, f"task does not list route {self.route}")
        document = self.read_elmo_json(message)
        comparisons = parse_elmo_json(document)
        check_repositories(comparisons)
        recorded = record_comparisons(message, document, comparisons)
        return Result(PROCESSED, message.task_id,
                      f"run {message.run_id}: {recorded} comparison(s) for "
                      f"{', '.join(sorted({c.locale for c in comparisons})) or 'no locale'}")

    def call(self, method, *arguments, **keywords):
        """Call the queue; 404 and other client errors are permanent."""
        try:
            return method(*arguments, **keywords)
        except taskcluster.exceptions.TaskclusterRestFailure as error:
            status = getattr(error, "status_code", None)
            if status is not None and 400 <= status < 500:
                raise PermanentError(f"Taskcluster answered {status}: {error}") from None
            raise TransientError(f"Taskcluster failed: {error}") from None
        except taskcluster.exceptions.TaskclusterConnectionError as error:
            raise TransientError(f"Taskcluster unreachable: {error}") from None

    def read_elmo_json(self, message: TaskMessage) -> object:
        name = self.find_elmo_json(message)
        answer = self.call(self.queue.artifact, message.task_id, str(message.run_id), name)
        if isinstance(answer, dict) and answer.get("storageType") == "error":
            raise PermanentError(f"{name} is an error artifact: {answer.get('message', '')}")
        url = answer.get("url") if isinstance(answer, dict) else None
        if not isinstance(url, str):
            raise PermanentError(f"Taskcluster gave no URL for {name}")
        try:
            status, body = read_artifact(url, max_bytes=MAX_BODY_BYTES,
                                         timeout=self.http_timeout)
        except StorageUnavailable as error:
            raise TransientError(f"{name}: {error}") from None
        except ArtifactTooLarge as error:
            raise PermanentError(f"{name} is {error}") from None
        if body is None:
            raise PermanentError(f"{name} answered {status}")
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError) as error:
            raise PermanentError(f"{name} is not JSON: {error}") from None

    def find_elmo_json(self, message: TaskMessage) -> str:
        """The name of the run's elmo.json artifact, paging through the list."""
        token = None
        for _ in range(1000):
            query = {"continuationToken": token} if token else {}
            page = self.call(self.queue.listArtifacts, message.task_id, str(message.run_id),
                             query=query)
            for artifact in page.get("artifacts", []):
                name = artifact.get("name", "")
                if name == ELMO_JSON or name.endswith("/" + ELMO_JSON):
                    return name
            token = page.get("continuationToken")
            if not token:
                break
        raise PermanentError(f"run {message.run_id} of task {message.task_id} has no "
                             f"{ELMO_JSON} artifact")


def parse_message(delivery: Delivery) -> TaskMessage:
    state = STATE_BY_EXCHANGE.get(delivery.exchange)
    if state is None:
        raise PermanentError(f"not a task resolution exchange: {delivery.exchange!r:.100}")
    if len(delivery.body) > MAX_BODY_BYTES:
        raise PermanentError("body is too large")
    try:
        body = json.loads(delivery.body)
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        raise PermanentError(f"body is not JSON: {error}") from None
    status = body.get("status") if isinstance(body, dict) else None
    if not isinstance(status, dict):
        raise PermanentError("body lacks status")
    task_id = status.get("taskId")
    run_id = body.get("runId")
    if not isinstance(task_id, str) or not SLUG.fullmatch(task_id):
        raise PermanentError(f"status.taskId is not a task id: {task_id!r:.40}")
    if not isinstance(run_id, int) or isinstance(run_id, bool) or not 0 <= run_id < 1000:
        raise PermanentError(f"runId is not a run number: {run_id!r:.40}")
    run = next((r for r in status.get("runs") or [] if isinstance(r, dict)
                and r.get("runId") == run_id), {})
    return TaskMessage(
        task_id=task_id,
        run_id=run_id,
        state=state,
        reason=str(run.get("reasonResolved") or "")[:100],
        task_group_id=str(status.get("taskGroupId") or "")[:22],
        worker=f"{body.get('workerGroup', '')}/{body.get('workerId', '')}"[:200],
        resolved=_timestamp(run.get("resolved")),
    )


def _timestamp(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def parse_elmo_json(document: object) -> list[Comparison]:
    """Check an elmo.json document; anything unexpected is a PermanentError."""
    if not isinstance(document, dict):
        raise PermanentError("elmo.json is not an object")
    if document.get("version") != "1.0":
        raise PermanentError(f"elmo.json version {document.get('version')!r:.20} is not 1.0")
    entries = document.get("comparisons")
    if not isinstance(entries, list) or len(entries) > 1000:
        raise PermanentError("elmo.json lacks a list of comparisons")
    return [_parse_comparison(number, entry) for number, entry in enumerate(entries)]


def _parse_comparison(number: int, entry: object) -> Comparison:
    where = f"elmo.json comparison {number}"
    if not isinstance(entry, dict):
        raise PermanentError(f"{where} is not an object")
    locale, config, artifact = entry.get("locale"), entry.get("config"), entry.get("artifact")
    if not isinstance(locale, str) or not LOCALE_CODE.fullmatch(locale):
        raise PermanentError(f"{where} has no valid locale: {locale!r:.40}")
    for field, value in (("config", config), ("artifact", artifact)):
        if not isinstance(value, str) or not value or len(value) > 400:
            raise PermanentError(f"{where} has no valid {field}")
    revisions = entry.get("revisions")
    if not isinstance(revisions, dict) or not revisions:
        raise PermanentError(f"{where} lacks revisions")
    for path, revision in revisions.items():
        if not isinstance(revision, str) or not REVISION.fullmatch(revision):
            raise PermanentError(f"{where} names {path!r:.60} at {revision!r:.60}, "
                                 "not a 40-hex revision")
    summary = entry.get("summary")
    if not isinstance(summary, dict):
        raise PermanentError(f"{where} lacks a summary")
    counts = {}
    for key in SUMMARY_KEYS:
        value = summary.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**31:
            raise PermanentError(f"{where} summary has no valid {key}")
        counts[key] = value
    return Comparison(locale, config, artifact, dict(revisions), counts)


def check_repositories(comparisons: list[Comparison]) -> None:
    paths = {path for comparison in comparisons for path in comparison.revisions}
    known = set(Repository.objects.filter(name__in=paths).values_list("name", flat=True))
    unknown = sorted(paths - known)
    if unknown:
        raise PermanentError(f"elmo.json names unknown repositories: {', '.join(unknown)[:300]}")


def record_task_run(message: TaskMessage) -> TaskRun:
    task_run, _ = TaskRun.objects.update_or_create(
        task_id=message.task_id, run_id=message.run_id,
        defaults={"state": message.state, "reason": message.reason,
                  "task_group_id": message.task_group_id, "worker": message.worker,
                  "resolved": message.resolved},
    )
    return task_run


def record_comparisons(message: TaskMessage, document: dict,
                       comparisons: list[Comparison]) -> int:
    """Write the task run and every comparison in one transaction.

    A revision not yet pushed becomes a placeholder changeset that its push
    completes later.
    """
    version = str(document.get("compare-locales") or "")[:40]
    with transaction.atomic():
        task_run = record_task_run(message)
        revisions = {r for comparison in comparisons for r in comparison.revisions.values()}
        ids = changeset_ids(revisions)
        repositories = dict(Repository.objects.filter(
            name__in={p for c in comparisons for p in c.revisions}).values_list("name", "id"))
        through = Changeset.repositories.through
        through.objects.bulk_create(
            [through(changeset_id=ids[revision], repository_id=repositories[path])
             for comparison in comparisons for path, revision in comparison.revisions.items()],
            ignore_conflicts=True,
        )
        for comparison in comparisons:
            locale, _ = Locale.objects.get_or_create(code=comparison.locale)
            run, _ = Run.objects.update_or_create(
                task_run=task_run, locale=locale, config=comparison.config,
                defaults={**comparison.summary, "total": comparison.total,
                          "completion": comparison.completion,
                          "compare_locales_version": version,
                          "artifact": comparison.artifact},
            )
            run.revisions.set([ids[r] for r in comparison.revisions.values()])
    return len(comparisons)
