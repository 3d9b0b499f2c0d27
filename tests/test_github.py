"""GitHub pushes end to end: real git over HTTP from the GitHub stand-in,
both Pulse formats through the real broker, commits recorded from the clone."""

import subprocess
import time

import pytest

from elmo.life.models import NULL_REVISION, Changeset, Push, Repository
from elmo.pushes.gitclones import git_environment
from tests.conftest import wait_until
from tests.helpers import files_of, parents_of

pytestmark = pytest.mark.django_db(transaction=True)

NAME = "mozilla-l10n/firefox-l10n"
NULL_SHA = "0" * 40


@pytest.fixture
def gh_worker(start_worker, github, github_publisher, queue_suffix):
    def start(shards: int = 2):
        return start_worker(shards=shards, ELMO_GITHUB="true",
                            ELMO_GITHUB_BASE_URL=github.base_url,
                            PULSE_QUEUE_GITHUB=f"{queue_suffix}-gh")
    return start


def track(github, branch: str = "main") -> Repository:
    github.create_repository(NAME)
    return Repository.objects.create(name=NAME, url=github.base_url + NAME,
                                     kind=Repository.GIT, branch=branch)


def pushes() -> list[tuple[int, str, list[str]]]:
    return [(push.push_id, push.user, sorted(push.changesets.values_list("revision", flat=True)))
            for push in Push.objects.filter(repository__name=NAME).order_by("push_id")]


def wait_for_pushes(count: int) -> None:
    wait_until(lambda: Push.objects.filter(repository__name=NAME).count() >= count, 60,
               f"{count} push(es)")


def wait_for_log(worker, text: str, count: int = 1) -> None:
    wait_until(lambda: worker.log().count(text) >= count, 60, repr(text))


def test_push_recorded_with_commits_parents_and_files(github, github_publisher, gh_worker):
    track(github)
    root = github.commit(NAME, {"de/app.ftl": "a = A\n"}, "Add German",
                         author="Anna <anna@example.org>")
    side = github.commit(NAME, {"fr/app.ftl": "a = A\n"}, "Add French", parents=[root],
                         branch="side")
    merge = github.merge(NAME, "main", side, "Merge French")
    gh_worker()

    github_publisher.publish_push(github.push_event(NAME, "main", NULL_SHA, merge,
                                                    created=True))
    wait_for_pushes(1)

    assert pushes() == [(1, "translator@example.org", sorted([root, side, merge]))]
    changeset = Changeset.objects.get(revision=root)
    assert (changeset.user, changeset.description) == ("Anna <anna@example.org>", "Add German")
    assert changeset.branch.name == "main"
    assert parents_of(root) == [NULL_REVISION]
    assert parents_of(merge) == sorted([root, side])
    assert files_of(side) == ["fr/app.ftl"]
    assert files_of(merge) == ["fr/app.ftl"]
    assert Push.objects.get(repository__name=NAME).delivery_id


def test_duplicate_delivery_changes_nothing(github, github_publisher, gh_worker):
    track(github)
    first = github.commit(NAME, {"a.ftl": "a = 1\n"})
    worker = gh_worker()
    event = github.push_event(NAME, "main", NULL_SHA, first, created=True)

    github_publisher.publish_push(event, event_id="delivery-1")
    wait_for_pushes(1)
    github_publisher.publish_push(event, event_id="delivery-1")
    wait_for_log(worker, "delivery already recorded")

    assert pushes() == [(1, "translator@example.org", [first])]


def test_missed_delivery_is_repaired_by_the_next(github, github_publisher, gh_worker):
    track(github)
    first = github.commit(NAME, {"a.ftl": "a = 1\n"})
    worker = gh_worker()
    github_publisher.publish_push(github.push_event(NAME, "main", NULL_SHA, first,
                                                    created=True))
    wait_for_pushes(1)
    missed = github.commit(NAME, {"a.ftl": "a = 2\n"})  # its delivery never arrives
    latest = github.commit(NAME, {"a.ftl": "a = 3\n"})

    github_publisher.publish_webhook(github.push_event(NAME, "main", missed, latest))
    wait_for_pushes(2)

    wait_for_log(worker, "push 2 (2 commits)")
    assert pushes()[1][2] == sorted([missed, latest])


def test_forced_push_deleted_branch_tag_and_other_branch(github, github_publisher, gh_worker):
    track(github)
    base = github.commit(NAME, {"a.ftl": "a = 1\n"})
    replaced = github.commit(NAME, {"a.ftl": "a = 2\n"})
    worker = gh_worker()
    github_publisher.publish_push(github.push_event(NAME, "main", NULL_SHA, replaced,
                                                    created=True))
    wait_for_pushes(1)

    rewritten = github.commit(NAME, {"a.ftl": "a = 2, reworded\n"}, parents=[base])
    github.force_branch(NAME, "main", rewritten)
    github_publisher.publish_push(github.push_event(NAME, "main", replaced, rewritten,
                                                    forced=True))
    wait_for_pushes(2)
    assert pushes()[1][2] == [rewritten]
    assert Changeset.objects.filter(revision=replaced).exists()

    other = github.commit(NAME, {"b.ftl": "b\n"}, branch="feature", parents=[rewritten])
    github_publisher.publish_push(github.push_event(NAME, "feature", NULL_SHA, other,
                                                    created=True))
    github.create_tag(NAME, "v1", rewritten)
    github_publisher.publish_push(github.push_event(NAME, "main", NULL_SHA, rewritten,
                                                    ref="refs/tags/v1", created=True))
    github_publisher.publish_push(github.push_event(NAME, "main", rewritten, NULL_SHA,
                                                    deleted=True))
    for text in ("push to untracked branch feature", "push to refs/tags/v1, not a branch",
                 "tracked branch main deleted"):
        wait_for_log(worker, text)
    time.sleep(1)
    assert len(pushes()) == 2

    clone = worker.environment["ELMO_REPOSITORY_BASE"] + "/" + NAME
    kept = subprocess.run(["git", "-C", clone, "cat-file", "-t", replaced],
                          env=git_environment(), capture_output=True, text=True)
    assert kept.stdout.strip() == "commit"


def test_comparison_can_name_a_git_revision(github, db_rows, taskcluster):
    from elmo.l10nstats.models import Run
    from elmo.l10nstats.taskcluster import TaskclusterHandler
    from shardworker.deliveries import Delivery
    from standins.taskcluster import comparison, elmo_json

    track(github)
    sha = github.commit(NAME, {"de/app.ftl": "a = A\n"})
    summary = dict.fromkeys(("errors", "warnings", "missing", "missing_w", "report",
                             "obsolete", "changed", "changed_w", "unchanged", "unchanged_w",
                             "keys"), 1)
    document = elmo_json([comparison("de", "l10n.toml", "public/de.json", {NAME: sha},
                                     summary)])
    task_id = taskcluster.create_task(artifacts={"public/elmo.json": document})
    body = f'{{"version": 1, "runId": 0, "status": {{"taskId": "{task_id}", "runs": []}}}}'
    TaskclusterHandler(taskcluster.root_url, "project.l10n.elmo.v1", http_timeout=10)(
        Delivery("exchange/taskcluster-queue/v1/task-completed", f"primary.{task_id}.0",
                 body.encode()))

    run = Run.objects.get(task_run__task_id=task_id)
    revision = run.revisions.get()
    assert revision.revision == sha
    assert list(revision.repositories.values_list("name", flat=True)) == [NAME]
