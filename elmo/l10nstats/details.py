"""Fetching a comparison's detail file from Taskcluster, once, on the first
request that needs it. The queue answers the artifact call with a storage
URL; the file itself comes from there, with a size limit and a timeout."""

import json
import logging

import taskcluster
from django.conf import settings
from django.utils import timezone

from elmo.l10nstats.models import Run
from elmo.l10nstats.storage import ArtifactTooLarge, StorageUnavailable, read_artifact

logger = logging.getLogger(__name__)


class DetailsUnavailable(Exception):
    """Taskcluster or its storage could not answer now; try again later."""


def ensure_details(run: Run) -> Run:
    """Fetch and keep the details of `run` unless they are settled already.

    Expired (404) and error (424) artifacts are settled states; a failure
    that may heal raises DetailsUnavailable and keeps the run pending.
    """
    if run.details_state != Run.PENDING:
        return run
    task_run = run.task_run
    if not settings.TASKCLUSTER_ROOT_URL:
        raise DetailsUnavailable("TASKCLUSTER_ROOT_URL is not set on the web side")
    queue = taskcluster.Queue({"rootUrl": settings.TASKCLUSTER_ROOT_URL, "maxRetries": 1})
    try:
        answer = queue.artifact(task_run.task_id, str(task_run.run_id), run.artifact)
    except taskcluster.exceptions.TaskclusterRestFailure as error:
        status = getattr(error, "status_code", None)
        if status in (404, 410):
            return settle(run, Run.EXPIRED, "the artifact has expired")
        if status == 424:
            return settle(run, Run.FAILED, f"the task reported an error artifact: {error}")
        raise DetailsUnavailable(f"Taskcluster answered {status}") from None
    except taskcluster.exceptions.TaskclusterConnectionError:
        raise DetailsUnavailable("Taskcluster is unreachable") from None
    if isinstance(answer, dict) and answer.get("storageType") == "error":
        reason = answer.get("message") or answer.get("reason") or "no reason given"
        return settle(run, Run.FAILED, f"the task reported an error artifact: {reason}")
    url = answer.get("url") if isinstance(answer, dict) else None
    if not isinstance(url, str):
        return settle(run, Run.FAILED, "Taskcluster gave no storage URL")
    body = download(url)
    if body is None:
        return settle(run, Run.EXPIRED, "the stored file is gone")
    try:
        details = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return settle(run, Run.FAILED, "the detail file is not JSON")
    run.details = details
    return settle(run, Run.FETCHED, "")


def download(url: str) -> bytes | None:
    """The file at `url`; None when storage says it is gone."""
    try:
        status, body = read_artifact(url, max_bytes=settings.ELMO_DETAILS_MAX_BYTES,
                                     timeout=settings.ELMO_HTTP_TIMEOUT)
    except (StorageUnavailable, ArtifactTooLarge) as error:
        raise DetailsUnavailable(str(error)) from None
    if status in (403, 404, 410):
        return None
    if body is None:
        raise DetailsUnavailable(f"storage answered {status}")
    return body


def settle(run: Run, state: str, error: str) -> Run:
    run.details_state = state
    run.details_error = error
    run.details_fetched = timezone.now()
    run.save(update_fields=["details", "details_state", "details_error", "details_fetched"])
    logger.info("comparison=%d task=%s details %s %s", run.id, run.task_run.task_id, state,
                error)
    return run


def files_of(details: object) -> list[tuple[str, list[tuple[str, str]]]]:
    """(path, [(kind, text)]) per file of a compare-locales detail file.

    compare-locales writes a list with one object per project configuration,
    each with `summary` and `details`. `details` is a tree of path segments
    (a lone child is merged into its parent's key, as in `toolkit/x.ftl`)
    whose leaves are lists of one-key objects such as
    {"missingEntity": "key"}, {"error": "..."} or {"missingFile": "error"}.
    """
    documents = details if isinstance(details, list) else [details]
    files: list[tuple[str, list[tuple[str, str]]]] = []
    for document in documents:
        if isinstance(document, dict) and "details" in document:
            _walk(document["details"], "", files)
    return files


def _walk(node: object, prefix: str, files: list, depth: int = 0) -> None:
    if depth > 50:
        return
    if isinstance(node, list):
        rows = []
        for entry in node:
            if isinstance(entry, dict):
                rows.extend((str(kind), str(text)) for kind, text in entry.items())
            else:
                rows.append(("note", str(entry)))
        files.append((prefix, rows))
    elif isinstance(node, dict):
        for key, child in sorted(node.items()):
            _walk(child, f"{prefix}/{key}" if prefix else str(key), files, depth + 1)
