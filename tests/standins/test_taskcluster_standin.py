"""Tests of the Taskcluster queue stand-in against the real `taskcluster` client, the real
RabbitMQ and the real compare-locales."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import kombu
import pytest
import requests
import taskcluster
from taskcluster.exceptions import TaskclusterRestFailure

from standins.compare_locales_fixtures import FIXTURES, REFERENCE_DIR, run_compare_locales
from standins.taskcluster import (
    DEFAULT_AMQP_URL,
    ELMO_ROUTE,
    TASK_COMPLETED_EXCHANGE,
    TASK_EXCEPTION_EXCHANGE,
    TaskclusterPublisher,
    TaskclusterStandIn,
    comparison,
    elmo_json,
)

SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "samples"
SAMPLE_MESSAGE = json.loads((SAMPLES / "taskcluster-task-completed.json").read_text())
SAMPLE_ELMO_JSON = json.loads((SAMPLES / "elmo.json").read_text())
SLUG_ID = re.compile(r"[A-Za-f][A-Za-z0-9_-]{21}")
DETAILS = "public/compare-locales/de.json"


@pytest.fixture
def standin(tmp_path: Path):
    with TaskclusterStandIn(tmp_path / "taskcluster") as running:
        yield running


@pytest.fixture
def queue(standin: TaskclusterStandIn) -> taskcluster.Queue:
    return taskcluster.Queue({"rootUrl": standin.root_url})


@pytest.fixture
def publisher():
    with TaskclusterPublisher() as connected:
        yield connected


@pytest.fixture
def amqp_connection():
    with kombu.Connection(DEFAULT_AMQP_URL) as connection:
        yield connection


def listen(connection: kombu.Connection, exchange_name: str, *routing_keys: str) -> Any:
    """A private queue that receives what is published to the exchange for `routing_keys`."""
    exchange = kombu.Exchange(exchange_name, type="topic", durable=True)
    bindings = [kombu.binding(exchange, routing_key=key) for key in routing_keys]
    queue = kombu.Queue(
        f"test-taskcluster-standin-{uuid.uuid4().hex}",
        bindings=bindings,
        auto_delete=True,
        exclusive=True,
    )
    bound = queue(connection.default_channel)
    bound.declare()
    return bound


def receive(queue: Any, timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = queue.get(no_ack=True)
        if message is not None:
            return message
        time.sleep(0.05)
    raise AssertionError(f"nothing arrived in {queue.name} within {timeout} s")


def test_task_definition_and_status_have_the_queue_shape(standin, queue):
    task_id = standin.create_task(tags={"kind": "l10n-compare", "locale": "de"})

    definition = queue.task(task_id)
    status = queue.status(task_id)["status"]

    assert SLUG_ID.fullmatch(task_id)
    assert ELMO_ROUTE in definition["routes"]
    assert any(route.startswith("index.") for route in definition["routes"])
    assert set(definition["metadata"]) == {"name", "description", "owner", "source"}
    assert definition["tags"] == {"kind": "l10n-compare", "locale": "de"}
    assert {"provisionerId", "workerType", "schedulerId", "taskGroupId", "payload"} <= set(
        definition
    )
    assert {"created", "deadline", "expires"} <= set(definition)
    sample_status = SAMPLE_MESSAGE["body"]["status"]
    assert set(status) == set(sample_status)
    assert set(status["runs"][0]) == set(sample_status["runs"][0])
    assert status["taskId"] == task_id and status["state"] == "completed"


def test_unknown_task_raises_not_found(queue):
    with pytest.raises(TaskclusterRestFailure) as raised:
        queue.task("fQx7Lq2cR8a3X0pYk1ZbQw")

    assert raised.value.status_code == 404
    assert raised.value.body["code"] == "ResourceNotFound"


def test_artifact_listing_pages_through_continuation_tokens(standin, queue):
    names = [f"public/compare-locales/{locale}.json" for locale in ("de", "fr", "it", "ja", "nl")]
    task_id = standin.create_task(artifacts={name: {} for name in names})

    first = queue.listArtifacts(task_id, 0)
    listed = [artifact["name"] for artifact in first["artifacts"]]
    token = first["continuationToken"]
    while token:
        page = queue.listArtifacts(task_id, 0, query={"continuationToken": token})
        listed += [artifact["name"] for artifact in page["artifacts"]]
        token = page.get("continuationToken")
    handled: list[str] = []
    queue.listLatestArtifacts(
        params={"taskId": task_id},
        paginationHandler=lambda page: handled.extend(a["name"] for a in page["artifacts"]),
    )

    assert len(first["artifacts"]) == 2
    assert listed == handled == names
    assert first["artifacts"][0] == {
        "storageType": "s3",
        "name": names[0],
        "expires": queue.task(task_id)["expires"],
        "contentType": "application/json",
    }
    assert len(queue.listArtifacts(task_id, 0, query={"limit": 4})["artifacts"]) == 4


def test_artifact_calls_answer_the_storage_url_without_following_it(standin, queue):
    details = b'{"details": {}}'
    task_id = standin.create_task(artifacts={DETAILS: details, "public/logs/live.log": b"ok\n"})
    rerun = standin.add_run(task_id, artifacts={DETAILS: b'{"rerun": true}'})

    answer = queue.artifact(task_id, 0, DETAILS)
    storage_requests = [path for _, path in standin.requests if path.startswith("/storage/")]
    latest = queue.latestArtifact(task_id, DETAILS)
    redirect = queue.getArtifact(task_id, 0, DETAILS)
    fetched = requests.get(answer["url"], timeout=10)

    assert answer == {"storageType": "s3", "url": standin.storage_url(task_id, 0, DETAILS)}
    assert storage_requests == []
    assert latest["url"] == standin.storage_url(task_id, rerun, DETAILS)
    assert redirect == answer
    assert fetched.content == details
    assert fetched.headers["Content-Type"] == "application/json"
    assert requests.get(latest["url"], timeout=10).content == b'{"rerun": true}'


def test_plain_http_clients_follow_the_queue_redirect_to_storage(standin, queue):
    task_id = standin.create_task(artifacts={"public/logs/live.log": b"done\n"})

    url = queue.buildUrl("getLatestArtifact", task_id, "public/logs/live.log")
    response = requests.get(url, timeout=10)

    assert [redirect.status_code for redirect in response.history] == [303]
    assert response.history[0].headers["x-taskcluster-artifact-storage-type"] == "s3"
    assert response.content == b"done\n"


def test_expired_artifacts_answer_not_found_or_gone(standin, queue):
    task_id = standin.create_task(
        artifacts={DETAILS: b"{}", "public/elmo.json": b"{}"}, expired={"public/old.json"}
    )
    storage_url = queue.artifact(task_id, 0, DETAILS)["url"]

    standin.remove_artifact(task_id, 0, DETAILS)
    standin.expire_artifact(task_id, 0, "public/elmo.json")

    for name in ("public/old.json", DETAILS):
        with pytest.raises(TaskclusterRestFailure) as raised:
            queue.artifact(task_id, 0, name)
        assert raised.value.status_code == 404
        assert raised.value.body["code"] == "ResourceNotFound"
    with pytest.raises(TaskclusterRestFailure) as raised:
        queue.latestArtifact(task_id, "public/elmo.json")
    assert raised.value.status_code == 410
    assert raised.value.body["code"] == "ResourceExpired"
    assert [a["name"] for a in queue.listArtifacts(task_id, 0)["artifacts"]] == [
        "public/elmo.json"
    ]
    assert requests.get(storage_url, timeout=10).status_code == 404
    assert not (standin.storage_root / task_id / "0" / DETAILS).exists()


def test_error_artifacts_answer_their_reason(standin, queue):
    task_id = standin.create_task(errored={DETAILS})

    content = queue.artifact(task_id, 0, DETAILS)
    with pytest.raises(TaskclusterRestFailure) as raised:
        queue.getArtifact(task_id, 0, DETAILS)

    assert content["storageType"] == "error"
    assert raised.value.status_code == 424
    assert set(raised.value.body) == {"reason", "message"}
    assert str(raised.value) == raised.value.body["message"] == content["message"]


def test_injected_failures_are_retried_by_the_client_then_raised(standin, queue):
    task_id = standin.create_task()
    standin.requests.clear()

    standin.fail_next(2)
    assert queue.task(task_id)["taskGroupId"] == task_id
    standin.fail_next(1, status=404)
    with pytest.raises(TaskclusterRestFailure) as raised:
        queue.status(task_id)

    assert raised.value.status_code == 404
    assert [method for method, _ in standin.requests] == ["GET"] * 4


def test_task_completed_message_has_the_queue_shape(standin, publisher, amqp_connection):
    task_id = standin.create_task(runs=2)
    listener = listen(amqp_connection, TASK_COMPLETED_EXCHANGE, f"route.{ELMO_ROUTE}")
    everything = listen(amqp_connection, TASK_COMPLETED_EXCHANGE, "primary.#", "route.#")

    publisher.publish_exception(standin, task_id, run_id=0)
    sent = publisher.publish_completed(standin, task_id, run_id=1)
    message = receive(listener)
    duplicate = receive(everything)

    first, run = sent["status"]["runs"]
    assert (first["reasonResolved"], run["reasonCreated"]) == ("worker-shutdown", "retry")
    assert json.loads(message.body) == sent
    assert set(sent) == set(SAMPLE_MESSAGE["body"])
    assert sent["runId"] == 1 and sent["workerId"] == run["workerId"]
    assert sent["task"] == {"tags": {"kind": "l10n-compare"}}
    assert message.content_type == "application/json"
    assert message.delivery_info["exchange"] == TASK_COMPLETED_EXCHANGE
    assert message.delivery_info["routing_key"] == (
        f"primary.{task_id}.1.{run['workerGroup']}.{run['workerId']}"
        f".proj-l10n.b-linux.l10n-level-1.{task_id}._"
    )
    routes = standin.task_definition(task_id)["routes"]
    assert message.headers["CC"] == [f"route.{route}" for route in routes]
    assert duplicate.body == message.body
    assert everything.get(no_ack=True) is None and listener.get(no_ack=True) is None


def test_publish_raw_and_unclaimed_exceptions(standin, publisher, amqp_connection):
    task_id = standin.create_task(state="pending")
    listener = listen(amqp_connection, TASK_EXCEPTION_EXCHANGE, f"route.{ELMO_ROUTE}")

    sent = publisher.publish_exception(standin, task_id)
    publisher.publish_raw(
        TASK_EXCEPTION_EXCHANGE, "primary.x", b"{not json", {"CC": [f"route.{ELMO_ROUTE}"]}
    )

    exception = receive(listener)
    assert "workerId" not in sent
    assert exception.delivery_info["routing_key"].startswith(f"primary.{task_id}.0._._.")
    raw = receive(listener)
    assert raw.body.encode() == b"{not json" and raw.headers["CC"] == [f"route.{ELMO_ROUTE}"]


def test_elmo_json_helpers_build_the_sample_shape():
    revisions = SAMPLE_ELMO_JSON["comparisons"][0]["revisions"]

    document = elmo_json(
        [comparison("de", "browser/locales/l10n.toml", DETAILS, revisions, {"missing": 14})],
        repository="l10n-central/de",
    )

    assert list(document) == list(SAMPLE_ELMO_JSON)
    assert document["compare-locales"] == "9.0.5"
    entry = document["comparisons"][0]
    assert list(entry) == list(SAMPLE_ELMO_JSON["comparisons"][0])
    assert set(entry["summary"]) == set(SAMPLE_ELMO_JSON["comparisons"][0]["summary"])
    assert entry["summary"]["missing"] == 14 and entry["summary"]["errors"] == 0
    assert "repository" not in elmo_json([])


def test_compare_locales_reports_missing_obsolete_errors_and_warnings():
    document = run_compare_locales(REFERENCE_DIR, FIXTURES / "de", "de")

    summary = document["summary"]["de"]
    assert set(summary) == set(SAMPLE_ELMO_JSON["comparisons"][0]["summary"])
    for key in ("missing", "obsolete", "errors", "warnings", "changed"):
        assert summary[key] > 0, key
    app = document["details"]["de"]["browser"]["app.ftl"]
    assert {"missingEntity": "menu-edit"} in app
    assert {"obsoleteEntity": "app-slogan"} in app
    assert any("Missing attribute: accesskey" in entry.get("error", "") for entry in app)
    assert document["details"]["de"]["browser"]["newtab.ftl"] == [{"missingFile": "error"}]


def test_compare_locales_command_writes_the_same_document():
    command = Path(sys.executable).with_name("compare-locales")
    completed = subprocess.run(
        [str(command), "--json", "-", str(REFERENCE_DIR / "l10n.toml"), str(FIXTURES), "de"],
        capture_output=True,
        text=True,
        check=False,
    )

    assert completed.returncode == 1  # errors were found
    document = run_compare_locales(REFERENCE_DIR, FIXTURES / "de", "de")
    assert json.loads(completed.stdout) == [document]
