"""Tests of the GitHub stand-in against the real git client and the real RabbitMQ."""

from __future__ import annotations

import gzip
import json
import time
import uuid
from pathlib import Path
from typing import Any

import kombu
import pytest
import requests

from standins.github import (
    DEFAULT_AMQP_URL,
    DEFAULT_INSTALLATION_ID,
    GITHUB_WEBHOOKS_EXCHANGE,
    NULL_SHA,
    TASKCLUSTER_PUSH_EXCHANGE,
    GitCommandError,
    GitHubPublisher,
    GitHubStandIn,
    run_git,
)

REPO = "mozilla-l10n/firefox-l10n"
PUSH_EVENT_KEYS = {
    "ref",
    "before",
    "after",
    "created",
    "deleted",
    "forced",
    "base_ref",
    "compare",
    "commits",
    "head_commit",
    "repository",
    "pusher",
    "sender",
}
PUSH_COMMIT_KEYS = {
    "id",
    "tree_id",
    "distinct",
    "message",
    "timestamp",
    "url",
    "author",
    "committer",
    "added",
    "removed",
    "modified",
}
REPOSITORY_KEYS = {
    "id",
    "node_id",
    "name",
    "full_name",
    "private",
    "owner",
    "html_url",
    "clone_url",
    "git_url",
    "ssh_url",
    "default_branch",
    "master_branch",
    "pushed_at",
}


@pytest.fixture
def standin(tmp_path: Path):
    with GitHubStandIn(tmp_path / "github") as running:
        running.create_repository(REPO)
        yield running


@pytest.fixture
def publisher():
    with GitHubPublisher() as connected:
        yield connected


@pytest.fixture
def amqp_connection():
    with kombu.Connection(DEFAULT_AMQP_URL) as connection:
        yield connection


def git(standin: GitHubStandIn, *arguments: str | Path) -> str:
    """Run the real git client as a consumer of the stand-in would."""
    return run_git([str(argument) for argument in arguments], standin.home)


def listen(connection: kombu.Connection, exchange_name: str) -> Any:
    """A private queue that receives everything published to the exchange."""
    exchange = kombu.Exchange(exchange_name, type="topic", durable=True)
    queue = kombu.Queue(
        f"test-github-standin-{uuid.uuid4().hex}",
        exchange,
        routing_key="#",
        auto_delete=True,
        exclusive=True,
    )
    bound = queue(connection.default_channel)
    bound.declare()
    return bound


def receive(queue: Any, sent_id: str, timeout: float = 10) -> Any:
    """The first message in `queue` that carries `sent_id`; others' messages are skipped, since
    the exchange is shared with whatever else runs against this broker."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = queue.get(no_ack=True)
        if message is None:
            time.sleep(0.05)
        elif sent_id in message.body:
            return message
    raise AssertionError(f"nothing with {sent_id} arrived in {queue.name} within {timeout} s")


def test_commits_clone_over_http_with_the_real_client(standin, tmp_path):
    first = standin.commit(REPO, {"de/main.ftl": "hello = Hallo\n"}, message="Add German")
    second = standin.commit(REPO, {"fr/main.ftl": "hello = Bonjour\n"}, message="Add French")

    git(standin, "clone", "--bare", standin.repository_url(REPO), tmp_path / "with-suffix")
    git(standin, "clone", "--bare", standin.base_url + REPO, tmp_path / "without-suffix")

    for clone in ("with-suffix", "without-suffix"):
        git_dir = f"--git-dir={tmp_path / clone}"
        assert git(standin, git_dir, "rev-parse", "refs/heads/main").strip() == second
        history = git(standin, git_dir, "rev-list", "--reverse", "main").split()
        assert history == [first, second] == standin.log(REPO, "main")
        assert git(standin, git_dir, "show", "main:de/main.ftl") == "hello = Hallo\n"


def test_commit_removes_files_and_takes_author_date_and_parents(standin, tmp_path):
    root = standin.commit(REPO, {"de/a.ftl": "a\n", "de/b.ftl": "b\n"}, timestamp=1_700_000_000)
    standin.commit(REPO, {"de/a.ftl": None}, author="Ein Mensch <mensch@example.org>")
    side = standin.commit(REPO, {"de/c.ftl": "c\n"}, branch="side", parents=[root])

    git(standin, "clone", "--bare", standin.repository_url(REPO), tmp_path / "clone")
    git_dir = f"--git-dir={tmp_path / 'clone'}"
    assert git(standin, git_dir, "ls-tree", "--name-only", "-r", "main").split() == ["de/b.ftl"]
    assert git(standin, git_dir, "log", "-1", "--format=%an <%ae>", "main").strip() == (
        "Ein Mensch <mensch@example.org>"
    )
    assert git(standin, git_dir, "log", "-1", "--format=%at", root).strip() == "1700000000"
    assert git(standin, git_dir, "rev-parse", f"{side}^").strip() == root
    assert standin.head(REPO, "side") == side
    assert standin.head(REPO, "missing") is None


def test_fetch_brings_new_commits(standin, tmp_path):
    standin.commit(REPO, {"de/main.ftl": "one\n"})
    git(standin, "clone", "--bare", standin.repository_url(REPO), tmp_path / "clone")
    newer = standin.commit(REPO, {"de/main.ftl": "two\n"})

    git_dir = f"--git-dir={tmp_path / 'clone'}"
    git(standin, git_dir, "fetch", "origin", "+refs/heads/*:refs/heads/*")

    assert git(standin, git_dir, "rev-parse", "main").strip() == newer


def test_merge_appears_with_two_parents_in_git_log(standin, tmp_path):
    base = standin.commit(REPO, {"de/main.ftl": "base\n"})
    side = standin.commit(REPO, {"fr/main.ftl": "côté\n"}, branch="side", parents=[base])
    main = standin.commit(REPO, {"it/main.ftl": "lato\n"})
    merge = standin.merge(REPO, "main", side, message="Merge side")

    git(standin, "clone", "--bare", standin.repository_url(REPO), tmp_path / "clone")

    git_dir = f"--git-dir={tmp_path / 'clone'}"
    assert git(standin, git_dir, "log", "-1", "--format=%H %P", "main").split() == [
        merge,
        main,
        side,
    ]
    files = git(standin, git_dir, "ls-tree", "--name-only", "-r", "main").split()
    assert files == ["de/main.ftl", "fr/main.ftl", "it/main.ftl"]
    assert standin.log(REPO, "main")[0] == base and standin.log(REPO, "main")[-1] == merge


def test_conflicting_merge_raises(standin):
    base = standin.commit(REPO, {"de/main.ftl": "base\n"})
    side = standin.commit(REPO, {"de/main.ftl": "side\n"}, branch="side", parents=[base])
    standin.commit(REPO, {"de/main.ftl": "main\n"})

    with pytest.raises(ValueError, match="conflicts"):
        standin.merge(REPO, "main", side)


def test_force_branch_then_fetch_with_force_refspec_moves_the_ref(standin, tmp_path):
    first = standin.commit(REPO, {"de/main.ftl": "one\n"})
    standin.commit(REPO, {"de/main.ftl": "two\n"})
    git(standin, "clone", "--bare", standin.repository_url(REPO), tmp_path / "clone")

    standin.force_branch(REPO, "main", first)
    rewritten = standin.commit(REPO, {"de/main.ftl": "rewritten\n"})
    git_dir = f"--git-dir={tmp_path / 'clone'}"
    git(standin, git_dir, "fetch", "origin", "+refs/heads/*:refs/heads/*")

    assert git(standin, git_dir, "rev-parse", "main").strip() == rewritten
    assert standin.log(REPO, "main") == [first, rewritten]


def test_branches_and_tags_show_in_ls_remote(standin):
    first = standin.commit(REPO, {"de/main.ftl": "one\n"})
    standin.commit(REPO, {"de/main.ftl": "two\n"}, branch="old", parents=[first])
    standin.create_tag(REPO, "v1", first)
    standin.delete_branch(REPO, "old")

    listed = git(standin, "ls-remote", standin.repository_url(REPO)).splitlines()

    refs = dict(reversed(line.split("\t")) for line in listed)
    assert refs == {"HEAD": first, "refs/heads/main": first, "refs/tags/v1": first}
    assert standin.head(REPO, "old") is None and standin.log(REPO, "old") == []


def test_unknown_repository_is_not_found(standin, tmp_path):
    with pytest.raises(GitCommandError) as raised:
        git(standin, "clone", standin.base_url + "mozilla-l10n/missing", tmp_path / "clone")

    assert "not found" in raised.value.stderr.lower() or "404" in raised.value.stderr


@pytest.mark.parametrize("gzipped, chunked", [(True, False), (False, True)])
def test_upload_pack_accepts_gzipped_and_chunked_requests(standin, gzipped, chunked):
    head = standin.commit(REPO, {"de/main.ftl": "one\n"})
    request = f"0032want {head}\n".encode() + b"0000" + b"0009done\n"
    headers = {"Content-Type": "application/x-git-upload-pack-request"}
    if gzipped:
        request = gzip.compress(request)
        headers["Content-Encoding"] = "gzip"
    body = iter([request[:20], request[20:]]) if chunked else request

    response = requests.post(
        standin.repository_url(REPO) + "/git-upload-pack", data=body, headers=headers, timeout=30
    )

    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/x-git-upload-pack-result"
    assert response.content.startswith(b"0008NAK\nPACK")


def test_push_event_lists_at_most_twenty_commits_in_the_documented_shape(standin):
    shas = [
        standin.commit(REPO, {"de/main.ftl": f"{n}\n"}, message=f"Edit {n}") for n in range(26)
    ]

    event = standin.push_event(REPO, "main", shas[0], shas[-1])

    assert PUSH_EVENT_KEYS <= set(event)
    assert event["ref"] == "refs/heads/main"
    assert (event["before"], event["after"]) == (shas[0], shas[-1])
    assert (event["created"], event["deleted"], event["forced"]) == (False, False, False)
    assert event["base_ref"] is None
    assert [commit["id"] for commit in event["commits"]] == shas[-20:]
    assert all(set(commit) == PUSH_COMMIT_KEYS for commit in event["commits"])
    assert event["head_commit"] == event["commits"][-1]
    head = event["head_commit"]
    assert head["message"] == "Edit 25" and head["modified"] == ["de/main.ftl"]
    assert head["added"] == [] and head["removed"] == [] and head["distinct"] is True
    assert set(head["author"]) == {"name", "email", "username"}
    assert head["author"]["email"] == "translator@example.org"
    assert head["timestamp"].endswith("+00:00")
    repository = event["repository"]
    assert REPOSITORY_KEYS <= set(repository)
    assert repository["full_name"] == REPO and repository["name"] == "firefox-l10n"
    assert repository["owner"]["name"] == repository["owner"]["login"] == "mozilla-l10n"
    assert repository["clone_url"] == standin.repository_url(REPO)
    assert repository["default_branch"] == "main" and repository["private"] is False
    assert isinstance(repository["pushed_at"], int)
    assert event["pusher"] == {"name": "translator", "email": "translator@example.org"}
    assert event["sender"]["login"] == "translator" and event["sender"]["type"] == "User"
    json.dumps(event)


def test_push_event_of_created_merged_forced_and_deleted_refs(standin):
    base = standin.commit(REPO, {"de/main.ftl": "base\n"})
    feature = standin.commit(REPO, {"de/new.ftl": "new\n"}, branch="feature", parents=[base])
    created = standin.push_event(REPO, "feature", NULL_SHA, feature)
    merge = standin.merge(REPO, "main", feature)
    merged = standin.push_event(REPO, "main", base, merge)
    standin.force_branch(REPO, "feature", base)
    forced = standin.push_event(REPO, "feature", feature, base, forced=True)
    standin.delete_branch(REPO, "feature")
    deleted = standin.push_event(REPO, "feature", base, NULL_SHA)

    assert created["created"] is True and created["compare"].endswith("/compare/feature")
    assert [(c["id"], c["distinct"], c["added"]) for c in created["commits"]] == [
        (feature, True, ["de/new.ftl"])
    ]
    assert [(c["id"], c["distinct"]) for c in merged["commits"]] == [
        (feature, False),
        (merge, True),
    ]
    assert forced["forced"] is True and forced["commits"] == []
    assert forced["head_commit"]["id"] == base
    assert deleted["deleted"] is True
    assert deleted["commits"] == [] and deleted["head_commit"] is None


def test_taskcluster_push_message_has_the_documented_shape(tmp_path, publisher, amqp_connection):
    with GitHubStandIn(tmp_path / "dotted") as standin:
        standin.create_repository("my.org/a.b")
        head = standin.commit("my.org/a.b", {"de/main.ftl": "one\n"})
        event = standin.push_event("my.org/a.b", "main", NULL_SHA, head)
    queue = listen(amqp_connection, TASKCLUSTER_PUSH_EXCHANGE)

    sent = publisher.publish_push(event)
    message = receive(queue, sent["eventId"])

    assert message.delivery_info["routing_key"] == "primary.my%org.a%b"
    assert message.properties["delivery_mode"] == 2
    body = json.loads(message.body)
    assert body == sent
    assert body["version"] == 1
    assert (body["organization"], body["repository"]) == ("my%org", "a%b")
    assert body["installationId"] == DEFAULT_INSTALLATION_ID
    assert str(uuid.UUID(body["eventId"], version=4)) == body["eventId"]
    assert body["tasks_for"] == "github-push" and body["branch"] == "main"
    assert body["details"]["event.head.sha"] == head
    assert body["details"]["event.base.repo.branch"] == "main"
    assert body["body"] == event


def test_taskcluster_push_message_names_the_branch_of_nested_refs(
    standin, publisher, amqp_connection
):
    head = standin.commit(REPO, {"de/main.ftl": "one\n"}, branch="releases/v1")
    event = standin.push_event(REPO, "releases/v1", NULL_SHA, head)
    queue = listen(amqp_connection, TASKCLUSTER_PUSH_EXCHANGE)

    publisher.publish_push(event, event_id="8f7b4a3c-1d2e-4f5a-9b6c-7d8e9f0a1b2c")
    message = receive(queue, "8f7b4a3c-1d2e-4f5a-9b6c-7d8e9f0a1b2c")

    body = json.loads(message.body)
    assert message.delivery_info["routing_key"] == "primary.mozilla-l10n.firefox-l10n"
    assert body["branch"] == "releases/v1"
    assert body["eventId"] == "8f7b4a3c-1d2e-4f5a-9b6c-7d8e9f0a1b2c"


def test_github_webhooks_message_has_the_relay_shape(standin, publisher, amqp_connection):
    head = standin.commit(REPO, {"de/main.ftl": "one\n"})
    event = standin.push_event(REPO, "main", NULL_SHA, head)
    queue = listen(amqp_connection, GITHUB_WEBHOOKS_EXCHANGE)

    sent = publisher.publish_webhook(event)
    message = receive(queue, sent["request_id"])

    assert message.delivery_info["routing_key"] == "mozilla-l10n/firefox-l10n/push"
    body = json.loads(message.body)
    assert body == sent
    assert set(body) == {"event", "request_id", "payload", "_meta"}
    assert body["event"] == "push" and body["payload"] == event
    assert str(uuid.UUID(body["request_id"], version=4)) == body["request_id"]
    assert body["_meta"]["exchange"] == GITHUB_WEBHOOKS_EXCHANGE
    assert body["_meta"]["routing_key"] == "mozilla-l10n/firefox-l10n/push"
    assert body["_meta"]["serializer"] == "json"
    assert body["_meta"]["sent"].startswith(str(time.gmtime().tm_year))


def test_publish_raw_sends_the_bytes_unchanged(publisher, amqp_connection):
    queue = listen(amqp_connection, GITHUB_WEBHOOKS_EXCHANGE)

    marker = uuid.uuid4().hex
    publisher.publish_raw(
        GITHUB_WEBHOOKS_EXCHANGE, "mozilla-l10n/firefox-l10n/push", b"{" + marker.encode()
    )
    message = receive(queue, marker)

    # The client decodes bodies that declare an encoding, as the raw ones do (utf-8).
    assert message.body == "{" + marker
    assert message.content_type == "application/json"


def test_fail_next_answers_a_fetch_with_500_then_recovers(standin, tmp_path):
    standin.commit(REPO, {"de/main.ftl": "one\n"})
    git(standin, "clone", "--bare", standin.repository_url(REPO), tmp_path / "clone")
    git_dir = f"--git-dir={tmp_path / 'clone'}"
    standin.requests.clear()

    standin.fail_next(1)
    with pytest.raises(GitCommandError) as raised:
        git(standin, git_dir, "fetch", "origin", "+refs/heads/*:refs/heads/*")
    git(standin, git_dir, "fetch", "origin", "+refs/heads/*:refs/heads/*")

    assert raised.value.returncode != 0 and "500" in raised.value.stderr
    assert [method for method, _ in standin.requests[:2]] == ["GET", "GET"]
    assert standin.requests[0][1].endswith("/info/refs?service=git-upload-pack")


def test_delay_slows_every_request(standin):
    standin.commit(REPO, {"de/main.ftl": "one\n"})
    standin.delay = 0.3

    started = time.monotonic()
    git(standin, "ls-remote", standin.repository_url(REPO))

    assert time.monotonic() - started >= 0.3
