"""A local stand-in for the Taskcluster queue: the task, status and artifact API that the real
`taskcluster` client calls, artifact storage behind its redirects, and a publisher of its Pulse
messages."""

from __future__ import annotations

import base64
import json
import logging
import mimetypes
import re
import threading
import urllib.parse
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from pathlib import Path
from typing import Any

import kombu
from taskcluster.utils import slugId

from standins.server import Served

log = logging.getLogger(__name__)

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"
EXCHANGE_PREFIX = "exchange/taskcluster-queue/v1/"
TASK_COMPLETED_EXCHANGE = EXCHANGE_PREFIX + "task-completed"
TASK_FAILED_EXCHANGE = EXCHANGE_PREFIX + "task-failed"
TASK_EXCEPTION_EXCHANGE = EXCHANGE_PREFIX + "task-exception"
ELMO_ROUTE = "project.l10n.elmo.v1"
DEFAULT_ROUTES = ("index.project.l10n.elmo.v1.latest", ELMO_ROUTE)
DEFAULT_TAGS = {"kind": "l10n-compare"}
DEFAULT_PAGE_SIZE = 2
SUMMARY_KEYS = (
    "errors",
    "warnings",
    "missing",
    "missing_w",
    "report",
    "obsolete",
    "changed",
    "changed_w",
    "unchanged",
    "unchanged_w",
    "keys",
)
_STATUS_KEYS = (
    "provisionerId",
    "workerType",
    "taskQueueId",
    "schedulerId",
    "projectId",
    "taskGroupId",
    "priority",
    "deadline",
    "expires",
)

_PROVISIONER_ID = "proj-l10n"
_WORKER_TYPE = "b-linux"
_SCHEDULER_ID = "l10n-level-1"
_WORKER_GROUP = "us-east-1"
_REASON_RESOLVED = {"completed": "completed", "failed": "failed", "exception": "malformed-payload"}
_STATES = ("pending", "running", *_REASON_RESOLVED)
_ERROR_CODES = {
    400: "InvalidRequestArguments",
    404: "ResourceNotFound",
    409: "RequestConflict",
    410: "ResourceExpired",
}
_API_PREFIX = "/api/queue/v1/"
_STORAGE_PREFIX = "/storage/"
_ROUTES = [
    (re.compile(pattern), handler)
    for pattern, handler in [
        (r"task/(?P<task_id>[^/]+)", "_get_task"),
        (r"task/(?P<task_id>[^/]+)/status", "_get_status"),
        (r"task/(?P<task_id>[^/]+)(?:/runs/(?P<run_id>\d+))?/artifacts", "_list_artifacts"),
        (
            r"task/(?P<task_id>[^/]+)(?:/runs/(?P<run_id>\d+))?"
            r"/(?P<kind>artifacts|artifact-content|artifact-info)/(?P<name>.+)",
            "_get_artifact",
        ),
    ]
]


class QueueError(Exception):
    """An answer of the queue other than success: an HTTP status and its JSON body."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body.get("message", ""))
        self.status = status
        self.body = body


def _queue_error(status: int, message: str) -> QueueError:
    code = _ERROR_CODES.get(status, "InternalServerError")
    return QueueError(status, {"code": code, "message": message})


def _timestamp(moment: datetime) -> str:
    """A date as Taskcluster writes it: UTC, milliseconds, a Z suffix."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class _Artifact:
    name: str
    content_type: str
    expires: datetime
    error: tuple[str, str] | None = None  # (reason, message) of an error artifact

    @property
    def storage_type(self) -> str:
        return "error" if self.error else "s3"

    def describe(self) -> dict[str, Any]:
        return {
            "storageType": self.storage_type,
            "name": self.name,
            "expires": _timestamp(self.expires),
            "contentType": self.content_type,
        }


@dataclass
class _Run:
    run_id: int
    state: str
    reason_created: str
    scheduled: datetime
    retried: bool = False
    artifacts: dict[str, _Artifact] = field(default_factory=dict)
    worker_id: str = field(default_factory=lambda: "i-" + uuid.uuid4().hex[:12])

    def describe(self) -> dict[str, Any]:
        run: dict[str, Any] = {
            "runId": self.run_id,
            "state": self.state,
            "reasonCreated": self.reason_created,
            "scheduled": _timestamp(self.scheduled),
        }
        if self.state == "pending":
            return run
        started = self.scheduled + timedelta(seconds=30)
        run.update(
            workerGroup=_WORKER_GROUP,
            workerId=self.worker_id,
            takenUntil=_timestamp(started + timedelta(minutes=20)),
            started=_timestamp(started),
        )
        if self.state in _REASON_RESOLVED:
            reason = "worker-shutdown" if self.retried else _REASON_RESOLVED[self.state]
            run["reasonResolved"] = reason
            run["resolved"] = _timestamp(started + timedelta(minutes=3))
        return run


@dataclass
class _Task:
    definition: dict[str, Any]
    runs: list[_Run]



class TaskclusterStandIn(Served):
    """The Taskcluster queue on loopback, serving `<root_url>/api/queue/v1/` to the real client.

    Artifacts are served like the real queue: `artifact`/`latestArtifact` (artifact-content)
    answer 200 with {"storageType", "url"}; `getArtifact`/`getLatestArtifact` (artifacts/<name>)
    answer 303 to the same URL. The URL points at `<root_url>/storage/...`, which serves the
    bytes it keeps under `root/storage`. Listings page `page_size` artifacts at a time unless
    asked for a `limit`. Unknown tasks and runs raise QueueError, in the API and in Python.
    `fail_next` and `requests` let tests inject and observe faults on every request.
    """

    label = "Taskcluster queue stand-in"

    def __init__(self, root: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        self.root = Path(root)
        self.storage_root = self.root / "storage"
        self.host = host
        self.port = port
        self.page_size = DEFAULT_PAGE_SIZE
        self.requests: list[tuple[str, str]] = []
        self._failures: list[int] = []
        self._tasks: dict[str, _Task] = {}
        self._lock = threading.Lock()

    # Lifecycle

    def start(self) -> TaskclusterStandIn:
        """Serve the queue on a background thread until stop()."""
        self.storage_root.mkdir(parents=True, exist_ok=True)
        self._serve("the queue")
        return self

    @property
    def address(self) -> str:
        return self.root_url

    @property
    def root_url(self) -> str:
        """The Taskcluster root URL to configure clients with, without a trailing slash."""
        return f"http://{self.host}:{self.port}"

    def storage_url(self, task_id: str, run_id: int, name: str) -> str:
        """The URL that the queue redirects to for an artifact, whether it exists or not."""
        return f"{self.root_url}{_STORAGE_PREFIX}{task_id}/{run_id}/{urllib.parse.quote(name)}"

    # Tasks, runs and artifacts

    def create_task(
        self,
        *,
        task_id: str | None = None,
        runs: int = 1,
        state: str = "completed",
        artifacts: Mapping[str, bytes | dict] | None = None,
        expired: Iterable[str] = (),
        errored: Iterable[str] = (),
        routes: Sequence[str] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> str:
        """Define a task with `runs` runs and return its id (a new slug id unless given).

        Earlier runs ended in exception and were retried; the last one is in `state`
        (completed, failed, exception, running or pending) and holds the artifacts: bytes as
        they are, dicts as JSON. `expired` names are artifacts that the queue already deleted,
        `errored` names are error artifacts.
        """
        if runs < 1 or state not in _STATES:
            raise ValueError(f"a task has at least one run, in one of {_STATES}")
        task_id = task_id or slugId()
        now = datetime.now(UTC)
        definition = {
            "provisionerId": _PROVISIONER_ID,
            "workerType": _WORKER_TYPE,
            "taskQueueId": f"{_PROVISIONER_ID}/{_WORKER_TYPE}",
            "schedulerId": _SCHEDULER_ID,
            "projectId": "l10n",
            "taskGroupId": task_id,
            "dependencies": [],
            "requires": "all-completed",
            "routes": list(DEFAULT_ROUTES if routes is None else routes),
            "priority": "low",
            "retries": 5,
            "created": _timestamp(now),
            "deadline": _timestamp(now + timedelta(days=1)),
            "expires": _timestamp(now + timedelta(days=365)),
            "scopes": [],
            "payload": {},
            "metadata": {
                "name": "compare-locales",
                "description": "Compare localizations with their reference",
                "owner": "l10n-drivers@mozilla.com",
                "source": "https://hg.mozilla.org/mozilla-central/file/tip/taskcluster",
            },
            "tags": dict(DEFAULT_TAGS if tags is None else tags),
            "extra": {},
        }
        task = _Task(definition, [])
        with self._lock:
            if task_id in self._tasks:
                raise ValueError(f"task {task_id} already exists")
            self._tasks[task_id] = task
            for run_id in range(runs):
                last = run_id == runs - 1
                task.runs.append(
                    _Run(
                        run_id,
                        state if last else "exception",
                        "scheduled" if run_id == 0 else "retry",
                        now + timedelta(minutes=5 * run_id),
                        retried=not last,
                    )
                )
        self._add_artifacts(task_id, runs - 1, artifacts or {}, set(errored))
        for name in expired:
            self.remove_artifact(task_id, runs - 1, name)
        log.info("created task %s with %d run(s)", task_id, runs)
        return task_id

    def add_run(
        self,
        task_id: str,
        state: str = "completed",
        artifacts: Mapping[str, bytes | dict] | None = None,
    ) -> int:
        """Rerun the task: append a run in `state` holding `artifacts`; returns its run id."""
        if state not in _STATES:
            raise ValueError(f"a run is in one of {_STATES}")
        with self._lock:
            task = self._task(task_id)
            run_id = len(task.runs)
            task.runs.append(_Run(run_id, state, "rerun", datetime.now(UTC)))
        self._add_artifacts(task_id, run_id, artifacts or {}, set())
        return run_id

    def remove_artifact(self, task_id: str, run_id: int, name: str) -> None:
        """Delete an artifact as the queue's expiry does: no longer listed, answered with 404,
        gone from storage."""
        with self._lock:
            self._run(task_id, run_id).artifacts.pop(name, None)
            self._object_path(task_id, run_id, name).unlink(missing_ok=True)

    def expire_artifact(self, task_id: str, run_id: int, name: str) -> None:
        """Let an artifact expire without being deleted yet: still listed, answered with 410."""
        with self._lock:
            self._artifact(task_id, run_id, name).expires = datetime.now(UTC) - timedelta(1)

    def task_definition(self, task_id: str) -> dict[str, Any]:
        """The task definition, as `queue.task` answers it."""
        with self._lock:
            return json.loads(json.dumps(self._task(task_id).definition))

    def task_status(self, task_id: str) -> dict[str, Any]:
        """The task status structure, as in messages and inside `queue.status`'s answer."""
        with self._lock:
            task = self._task(task_id)
            definition = task.definition
            return {
                "taskId": task_id,
                **{key: definition[key] for key in _STATUS_KEYS},
                "retriesLeft": definition["retries"] - (len(task.runs) - 1),
                "state": task.runs[-1].state,
                "runs": [run.describe() for run in task.runs],
            }

    # Faults

    def fail_next(self, count: int, status: int = 500) -> None:
        """Answer the next `count` requests, whatever their path, with HTTP `status`.

        The real client retries 5xx answers up to five times before it raises.
        """
        with self._lock:
            self._failures.extend([status] * count)

    # Internals

    def _add_artifacts(
        self, task_id: str, run_id: int, artifacts: Mapping[str, bytes | dict], errored: set[str]
    ) -> None:
        with self._lock:
            expires = datetime.fromisoformat(self._task(task_id).definition["expires"])
            run = self._run(task_id, run_id)
            for name, content in artifacts.items():
                if isinstance(content, bytes):
                    content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
                else:
                    content_type = "application/json"
                    content = json.dumps(content, indent=1).encode("utf-8")
                path = self._object_path(task_id, run_id, name)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(content)
                run.artifacts[name] = _Artifact(name, content_type, expires)
            for name in errored:
                run.artifacts[name] = _Artifact(
                    name,
                    "application/binary",
                    expires,
                    error=("file-missing-on-worker", f"Artifact {name} was not found"),
                )

    def _object_path(self, task_id: str, run_id: int, name: str) -> Path:
        path = (self.storage_root / task_id / str(run_id) / name).resolve()
        if not path.is_relative_to(self.storage_root.resolve()):
            raise ValueError(f"not an artifact name: {name!r}")
        return path

    def _task(self, task_id: str) -> _Task:
        try:
            return self._tasks[task_id]
        except KeyError:
            raise _queue_error(404, f"Task {task_id} not found") from None

    def _run(self, task_id: str, run_id: int | None) -> _Run:
        runs = self._task(task_id).runs
        if run_id is None:
            return runs[-1]
        if not 0 <= run_id < len(runs):
            message = f"Task with taskId: `{task_id}` has no run with runId: {run_id}"
            raise _queue_error(404, message)
        return runs[run_id]

    def _artifact(self, task_id: str, run_id: int | None, name: str) -> _Artifact:
        artifact = self._run(task_id, run_id).artifacts.get(name)
        if artifact is None:
            raise _queue_error(404, "Artifact not found")
        return artifact

    # Serving

    def _application(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        # wsgiref decodes %2F and hands the path over as Latin-1.
        path = environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8")
        query = environ.get("QUERY_STRING", "")
        method = environ["REQUEST_METHOD"]
        with self._lock:
            self.requests.append((method, f"{path}?{query}" if query else path))
            injected_status = self._failures.pop(0) if self._failures else None

        if injected_status is not None:
            log.info("answering %s %s with injected %d", method, path, injected_status)
            error = _queue_error(injected_status, "injected failure")
            return _respond_json(start_response, error.status, error.body)
        try:
            if method != "GET":
                raise _queue_error(404, f"no {method} here")
            if path.startswith(_STORAGE_PREFIX):
                return self._serve_storage(path.removeprefix(_STORAGE_PREFIX), start_response)
            parameters = dict(urllib.parse.parse_qsl(query))
            for pattern, handler in _ROUTES:
                match = pattern.fullmatch(path.removeprefix(_API_PREFIX))
                if path.startswith(_API_PREFIX) and match:
                    arguments = {k: v for k, v in match.groupdict().items() if v is not None}
                    return getattr(self, handler)(start_response, parameters, **arguments)
            raise _queue_error(404, f"no API end-point at {path}")
        except QueueError as error:
            return _respond_json(start_response, error.status, error.body)

    def _get_task(self, start_response: Any, parameters: dict, task_id: str) -> list[bytes]:
        return _respond_json(start_response, 200, self.task_definition(task_id))

    def _get_status(self, start_response: Any, parameters: dict, task_id: str) -> list[bytes]:
        return _respond_json(start_response, 200, {"status": self.task_status(task_id)})

    def _list_artifacts(
        self, start_response: Any, parameters: dict, task_id: str, run_id: str | None = None
    ) -> list[bytes]:
        try:
            limit = int(parameters.get("limit", self.page_size))
            token = parameters.get("continuationToken")
            offset = int(base64.urlsafe_b64decode(token).decode("ascii")) if token else 0
        except ValueError:
            raise _queue_error(400, "invalid limit or continuationToken") from None
        with self._lock:
            run = self._run(task_id, None if run_id is None else int(run_id))
            listed = [run.artifacts[name].describe() for name in sorted(run.artifacts)]
        document: dict[str, Any] = {"artifacts": listed[offset : offset + limit]}
        if offset + limit < len(listed):
            next_offset = str(offset + limit).encode("ascii")
            document["continuationToken"] = base64.urlsafe_b64encode(next_offset).decode("ascii")
        return _respond_json(start_response, 200, document)

    def _get_artifact(
        self,
        start_response: Any,
        parameters: dict,
        task_id: str,
        kind: str,
        name: str,
        run_id: str | None = None,
    ) -> list[bytes]:
        with self._lock:
            run = self._run(task_id, None if run_id is None else int(run_id))
            artifact = self._artifact(task_id, run.run_id, name)
            if kind == "artifact-info":
                return _respond_json(start_response, 200, artifact.describe())
            if artifact.expires < datetime.now(UTC):
                raise _queue_error(410, "Artifact expired")
        storage_type = artifact.storage_type
        if artifact.error:
            reason, message = artifact.error
            found = {"reason": reason, "message": message}
        else:
            found = {"url": self.storage_url(task_id, run.run_id, name)}
        if kind == "artifact-content":
            return _respond_json(start_response, 200, {"storageType": storage_type, **found})
        headers = [("x-taskcluster-artifact-storage-type", storage_type)]
        if artifact.error:
            return _respond_json(start_response, 424, found, headers)
        headers.append(("Location", found["url"]))
        return _respond_json(start_response, 303, {"storageType": storage_type, **found}, headers)

    def _serve_storage(self, path: str, start_response: Any) -> list[bytes]:
        task_id, _, rest = path.partition("/")
        run_id, _, name = rest.partition("/")
        with self._lock:
            runs = self._tasks[task_id].runs if task_id in self._tasks else []
            artifact = None
            if run_id.isdigit() and int(run_id) < len(runs):
                artifact = runs[int(run_id)].artifacts.get(name)
            if artifact is None or artifact.error:
                return _respond(start_response, 404, "text/plain", b"no such object\n")
            body = self._object_path(task_id, int(run_id), name).read_bytes()
        return _respond(start_response, 200, artifact.content_type, body)


def _respond(
    start_response: Any,
    status: int,
    content_type: str,
    body: bytes,
    headers: Sequence[tuple[str, str]] = (),
) -> list[bytes]:
    start_response(
        f"{status} {HTTPStatus(status).phrase}",
        [("Content-Type", content_type), ("Content-Length", str(len(body))), *headers],
    )
    return [body]


def _respond_json(
    start_response: Any,
    status: int,
    document: Any,
    headers: Sequence[tuple[str, str]] = (),
) -> list[bytes]:
    body = json.dumps(document).encode("utf-8")
    return _respond(start_response, status, "application/json; charset=utf-8", body, headers)


def comparison(
    locale: str,
    config: str,
    artifact: str,
    revisions: Mapping[str, str],
    summary: Mapping[str, int],
) -> dict[str, Any]:
    """One entry of `elmo.json`'s comparisons; summary counts not given are 0."""
    return {
        "locale": locale,
        "config": config,
        "artifact": artifact,
        "revisions": dict(revisions),
        "summary": {**dict.fromkeys(SUMMARY_KEYS, 0), **summary},
    }


def elmo_json(
    comparisons: Sequence[Mapping[str, Any]],
    repository: str | None = None,
    version: str = "1.0",
    compare_locales: str = "9.0.5",
) -> dict[str, Any]:
    """An `elmo.json` document; `repository` is left out when None."""
    document: dict[str, Any] = {"version": version, "compare-locales": compare_locales}
    if repository is not None:
        document["repository"] = repository
    document["comparisons"] = [dict(entry) for entry in comparisons]
    return document


class TaskclusterPublisher:
    """Publishes the queue's task-completed, task-failed and task-exception messages to RabbitMQ.

    As the real queue does, each message goes to its durable topic exchange with the primary
    routing key, persistent, as JSON, and is CC'ed to `route.<route>` for each task route.
    """

    def __init__(self, amqp_url: str = DEFAULT_AMQP_URL) -> None:
        self._connection = kombu.Connection(amqp_url)
        self._producer = kombu.Producer(self._connection.default_channel)
        self._exchanges: dict[str, kombu.Exchange] = {}
        for name in (TASK_COMPLETED_EXCHANGE, TASK_FAILED_EXCHANGE, TASK_EXCEPTION_EXCHANGE):
            self._exchange(name)

    def publish_completed(
        self,
        standin: TaskclusterStandIn,
        task_id: str,
        run_id: int = 0,
        routes: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """Announce that run `run_id` completed; `routes` default to the task's routes."""
        return self._publish_task(TASK_COMPLETED_EXCHANGE, standin, task_id, run_id, routes)

    def publish_failed(
        self,
        standin: TaskclusterStandIn,
        task_id: str,
        run_id: int = 0,
        routes: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """Announce that run `run_id` failed; `routes` default to the task's routes."""
        return self._publish_task(TASK_FAILED_EXCHANGE, standin, task_id, run_id, routes)

    def publish_exception(
        self,
        standin: TaskclusterStandIn,
        task_id: str,
        run_id: int = 0,
        routes: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """Announce that run `run_id` ended in exception; `routes` default to the task's."""
        return self._publish_task(TASK_EXCEPTION_EXCHANGE, standin, task_id, run_id, routes)

    def publish_raw(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        headers: Mapping[str, Any] | None = None,
    ) -> None:
        """Publish `body` as it is to a topic exchange, for tests of malformed messages."""
        self._producer.publish(
            body,
            exchange=self._exchange(exchange),
            routing_key=routing_key,
            headers=dict(headers or {}),
            content_type="application/json",
            content_encoding="utf-8",
            delivery_mode=2,
            retry=True,
        )
        log.info("published %d raw bytes to %s for %s", len(body), exchange, routing_key)

    def close(self) -> None:
        self._connection.release()

    def __enter__(self) -> TaskclusterPublisher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _exchange(self, name: str) -> kombu.Exchange:
        if name not in self._exchanges:
            exchange = kombu.Exchange(name, type="topic", durable=True)
            exchange(self._connection.default_channel).declare()
            self._exchanges[name] = exchange
        return self._exchanges[name]

    def _publish_task(
        self,
        exchange: str,
        standin: TaskclusterStandIn,
        task_id: str,
        run_id: int,
        routes: Sequence[str] | None,
    ) -> dict[str, Any]:
        definition = standin.task_definition(task_id)
        status = standin.task_status(task_id)
        run = status["runs"][run_id]
        body: dict[str, Any] = {"version": 1, "status": status, "runId": run_id}
        if "workerId" in run:
            body["workerGroup"] = run["workerGroup"]
            body["workerId"] = run["workerId"]
        body["task"] = {"tags": definition["tags"]}
        routing_key = ".".join(
            [
                "primary",
                task_id,
                str(run_id),
                run.get("workerGroup", "_"),
                run.get("workerId", "_"),
                status["provisionerId"],
                status["workerType"],
                status["schedulerId"],
                status["taskGroupId"],
                "_",
            ]
        )
        cc = ["route." + route for route in (definition["routes"] if routes is None else routes)]
        self._producer.publish(
            json.dumps(body).encode("utf-8"),
            exchange=self._exchange(exchange),
            routing_key=routing_key,
            headers={"CC": cc},
            content_type="application/json",
            content_encoding="utf-8",
            delivery_mode=2,
            retry=True,
        )
        log.info("published %s for task %s run %d", exchange, task_id, run_id)
        return body
