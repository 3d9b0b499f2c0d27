"""Compare-locales results from Taskcluster, end to end: the real client
against the queue stand-in, messages through the real broker, comparisons
in the database, and details fetched once by the web side."""

import os
import shutil
import subprocess
import time

import pytest
from django.test import Client, override_settings

from elmo.l10nstats.models import Run, TaskRun
from elmo.life.models import Changeset, Repository
from shardworker.deliveries import Delivery, route_to_shard
from shardworker.models import DeadLetter
from standins.compare_locales_fixtures import FIXTURES, REFERENCE_DIR, run_compare_locales
from standins.taskcluster import comparison, elmo_json
from tests.conftest import wait_until
from tests.test_hgmo_ingest import track

pytestmark = pytest.mark.django_db(transaction=True)

CONFIG = "browser/locales/l10n.toml"
DETAILS = "public/compare-locales/de.json"
GECKO = "a" * 40


@pytest.fixture
def details():
    return run_compare_locales(REFERENCE_DIR, FIXTURES / "de", "de")


@pytest.fixture
def tc_worker(start_worker, taskcluster, task_publisher, queue_suffix):
    """A worker that consumes Taskcluster's exchanges too."""
    def start(shards: int = 2):
        return start_worker(shards=shards, TASKCLUSTER_ROOT_URL=taskcluster.root_url,
                            PULSE_QUEUE_TASKCLUSTER=f"{queue_suffix}-tc")
    return start


def german_comparison(revision: str, details: dict) -> dict:
    return comparison("de", CONFIG, DETAILS,
                      {"mozilla-central": GECKO, "l10n-central/de": revision},
                      details["summary"]["de"])


def create_task(taskcluster, revision: str, details: dict, **options) -> str:
    document = elmo_json([german_comparison(revision, details)], repository="l10n-central/de")
    artifacts = {"public/elmo.json": document, DETAILS: details,
                 "public/logs/live.log": b"log"}
    return taskcluster.create_task(artifacts=artifacts, **options)


def register(hgmo=None) -> None:
    Repository.objects.get_or_create(name="mozilla-central",
                                     defaults={"url": "https://hg.mozilla.org/mozilla-central"})
    if hgmo is not None:
        track(hgmo, "l10n-central/de")
    else:
        Repository.objects.get_or_create(name="l10n-central/de",
                                         defaults={"url": "https://hg.example/de"})


def test_comparison_recorded_with_every_count(taskcluster, task_publisher, tc_worker,
                                              details):
    register()
    task_id = create_task(taskcluster, "b" * 40, details)
    tc_worker()

    task_publisher.publish_completed(taskcluster, task_id)
    run = wait_until(lambda: Run.objects.filter(task_run__task_id=task_id).first(), 60,
                     "the comparison")

    summary = details["summary"]["de"]
    for key, value in summary.items():
        assert getattr(run, key) == value, key
    total = summary["changed"] + summary["unchanged"] + summary["report"] + summary["missing"]
    assert run.total == total
    assert run.completion == summary["changed"] * 100 // total
    assert (run.locale.code, run.config, run.artifact) == ("de", CONFIG, DETAILS)
    assert run.compare_locales_version == "9.0.5"
    assert run.task_run.run_id == 0 and run.task_run.state == "completed"
    assert run.details_state == Run.PENDING and run.details is None
    revisions = {c.revision: sorted(c.repositories.values_list("name", flat=True))
                 for c in run.revisions.all()}
    assert revisions == {GECKO: ["mozilla-central"], "b" * 40: ["l10n-central/de"]}


def test_duplicate_and_retried_deliveries_leave_one_comparison_per_run(
        taskcluster, task_publisher, tc_worker, details):
    register()
    task_id = create_task(taskcluster, "c" * 40, details)
    tc_worker(shards=4)

    task_publisher.publish_completed(taskcluster, task_id)
    task_publisher.publish_completed(taskcluster, task_id)
    retried = taskcluster.add_run(
        task_id, artifacts={"public/elmo.json": elmo_json([german_comparison("c" * 40, details)]),
                            DETAILS: details})
    task_publisher.publish_completed(taskcluster, task_id, run_id=retried)
    task_publisher.publish_completed(taskcluster, task_id, run_id=retried)

    wait_until(lambda: Run.objects.filter(task_run__run_id=retried).exists(), 60, "run 1")
    time.sleep(2)  # the duplicates are settled too
    keys = list(Run.objects.values_list("task_run__task_id", "task_run__run_id",
                                        "locale__code", "config"))
    assert sorted(keys) == [(task_id, 0, "de", CONFIG), (task_id, retried, "de", CONFIG)]


def test_invalid_elmo_json_is_dead_lettered_with_its_reason(taskcluster, task_publisher,
                                                            tc_worker, details):
    register()
    entry = german_comparison("d" * 40, details)
    entry["revisions"]["l10n-central/de"] = "not-a-revision"
    task_id = taskcluster.create_task(artifacts={"public/elmo.json": elmo_json([entry])})
    tc_worker()

    task_publisher.publish_completed(taskcluster, task_id)
    letter = wait_until(lambda: DeadLetter.objects.filter(source="taskcluster").first(), 60,
                        "the dead letter")

    assert "not a 40-hex revision" in letter.reason
    assert not Run.objects.exists()


def test_failed_and_exception_runs_are_recorded(taskcluster, task_publisher, tc_worker):
    register()
    task_id = taskcluster.create_task(state="failed")
    tc_worker()

    task_publisher.publish_failed(taskcluster, task_id)
    task_run = wait_until(lambda: TaskRun.objects.filter(task_id=task_id).first(), 60,
                          "the failed run")

    assert task_run.state == "failed"
    assert not Run.objects.exists()


def changeset_row(revision: str) -> tuple:
    changeset = Changeset.objects.get(revision=revision)
    return (changeset.id, changeset.user, changeset.description,
            sorted(changeset.repositories.values_list("name", flat=True)),
            sorted(changeset.parents.values_list("revision", flat=True)))


@pytest.mark.parametrize("order", ["result first", "push first", "at once"])
def test_result_and_push_in_any_order_give_the_same_changeset(
        order, hgmo, publisher, taskcluster, task_publisher, tc_worker, details):
    register(hgmo)
    pushed = hgmo.push("l10n-central/de", {"a.ftl": "a = A\n"}, author="Anna <a@example.org>",
                       message="Translate a")
    revision = pushed.nodes[0]
    task_id = create_task(taskcluster, revision, details)
    push_shard = route_to_shard(Delivery("exchange/hgpushes/v2", "l10n-central/de", b""), 4)
    while route_to_shard(Delivery("exchange/taskcluster-queue/v1/task-completed",
                                  f"primary.{task_id}.0", b""), 4) == push_shard:
        task_id = create_task(taskcluster, revision, details)
    tc_worker(shards=4)

    def recorded_push() -> bool:
        return Changeset.objects.filter(revision=revision, pushes__isnull=False).exists()

    def recorded_result() -> bool:
        return Run.objects.filter(task_run__task_id=task_id).exists()

    if order == "result first":
        task_publisher.publish_completed(taskcluster, task_id)
        wait_until(recorded_result, 60, "the comparison")
        placeholder = Changeset.objects.get(revision=revision)
        assert placeholder.user is None and not placeholder.pushes.exists()
        publisher.publish_changegroup(hgmo, "l10n-central/de", [pushed.push_id])
    elif order == "push first":
        publisher.publish_changegroup(hgmo, "l10n-central/de", [pushed.push_id])
        wait_until(recorded_push, 60, "the push")
        task_publisher.publish_completed(taskcluster, task_id)
    else:
        task_publisher.publish_completed(taskcluster, task_id)
        publisher.publish_changegroup(hgmo, "l10n-central/de", [pushed.push_id])
    wait_until(lambda: recorded_push() and recorded_result(), 60, "both")

    assert Changeset.objects.filter(revision=revision).count() == 1
    changeset_id, user, description, repositories, parents = changeset_row(revision)
    assert (user, description, repositories) == ("Anna <a@example.org>", "Translate a",
                                                 ["l10n-central/de"])
    assert parents == ["0" * 40]
    run = Run.objects.get(task_run__task_id=task_id)
    assert changeset_id in set(run.revisions.values_list("id", flat=True))


def recorded_run(taskcluster, details, **task_options) -> Run:
    """A comparison recorded in process, as the worker would."""
    from elmo.l10nstats.taskcluster import TaskclusterHandler

    register()
    task_id = create_task(taskcluster, "e" * 40, details, **task_options)
    body = (f'{{"version": 1, "runId": 0, "status": {{"taskId": "{task_id}", "runs": []}}}}')
    handler = TaskclusterHandler(taskcluster.root_url, "project.l10n.elmo.v1",
                                 http_timeout=10)
    handler(Delivery("exchange/taskcluster-queue/v1/task-completed",
                     f"primary.{task_id}.0", body.encode()))
    return Run.objects.get(task_run__task_id=task_id)


def artifact_requests(taskcluster) -> list[str]:
    return [path for _, path in taskcluster.requests if DETAILS in path]


def test_page_fetches_details_once_and_renders_them(taskcluster, details, db_rows):
    run = recorded_run(taskcluster, details)
    client = Client()

    with override_settings(TASKCLUSTER_ROOT_URL=taskcluster.root_url):
        first = client.get(f"/comparisons/{run.id}/")
        fetched = len(artifact_requests(taskcluster))
        second = client.get(f"/comparisons/{run.id}/")

    assert first.status_code == second.status_code == 200
    page = first.content.decode()
    assert "browser/app.ftl" in page
    assert "missing</b> app-tagline" in page
    assert "Missing attribute: accesskey" in page
    assert fetched == 2  # the queue's artifact call and the storage
    assert len(artifact_requests(taskcluster)) == fetched
    run.refresh_from_db()
    assert run.details_state == Run.FETCHED and run.details_fetched is not None


def test_expired_and_error_artifacts_render_as_states(taskcluster, details, db_rows):
    expired = recorded_run(taskcluster, details)
    taskcluster.remove_artifact(expired.task_run.task_id, 0, DETAILS)
    failed = recorded_run(taskcluster, details, errored={DETAILS})
    client = Client()

    with override_settings(TASKCLUSTER_ROOT_URL=taskcluster.root_url):
        expired_page = client.get(f"/comparisons/{expired.id}/")
        failed_page = client.get(f"/comparisons/{failed.id}/")

    assert expired_page.status_code == 200
    assert "expired on Taskcluster" in expired_page.content.decode()
    assert failed_page.status_code == 200
    assert "not available" in failed_page.content.decode()
    assert Run.objects.get(id=expired.id).details_state == Run.EXPIRED
    assert Run.objects.get(id=failed.id).details_state == Run.FAILED


def test_page_without_a_taskcluster_root_url_says_so(taskcluster, details, db_rows):
    run = recorded_run(taskcluster, details)

    with override_settings(TASKCLUSTER_ROOT_URL=""):
        page = Client().get(f"/comparisons/{run.id}/")

    assert page.status_code == 200
    assert "TASKCLUSTER_ROOT_URL is not set" in page.content.decode()
    assert Run.objects.get(id=run.id).details_state == Run.PENDING


def test_browser_shows_the_comparison_details(taskcluster, details, live_server, tmp_path,
                                              db_rows):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("chromium is not installed (Debian package chromium)")
    run = recorded_run(taskcluster, details)

    with override_settings(TASKCLUSTER_ROOT_URL=taskcluster.root_url):
        page = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu",
             f"--user-data-dir={tmp_path / 'chromium'}", "--dump-dom",
             f"{live_server.url}/comparisons/{run.id}/"],
            capture_output=True, text=True, timeout=120,
            env={**os.environ, "HOME": str(tmp_path)},
        ).stdout

    assert "<h1>de: browser/locales/l10n.toml</h1>" in page
    assert "app-tagline" in page and "newtab.ftl" in page
