"""Tests of the hg.mozilla.org stand-in against the real hg client and the real RabbitMQ."""

from __future__ import annotations

import itertools
import json
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kombu
import pytest

from standins.hgmo import (
    DEFAULT_AMQP_URL,
    HGPUSHES_EXCHANGE,
    NULL_NODE,
    Commit,
    HgCommandError,
    HgmoPublisher,
    HgmoStandIn,
    run_hg,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
RELAY_BUNDLE = PROJECT_ROOT.parent / "shared" / "data" / "fx-private-relay-l10n.hg"


@pytest.fixture
def standin(tmp_path: Path):
    with HgmoStandIn(tmp_path / "hgmo") as running:
        yield running


@pytest.fixture(scope="module")
def relay_standin(tmp_path_factory: pytest.TempPathFactory):
    """A stand-in serving the real localization history as `relay`, shared by its readers."""
    if not RELAY_BUNDLE.exists():
        pytest.skip(f"no localization history at {RELAY_BUNDLE}")
    with HgmoStandIn(tmp_path_factory.mktemp("relay")) as running:
        running.import_bundle("relay", RELAY_BUNDLE)
        yield running


@pytest.fixture
def publisher():
    with HgmoPublisher() as connected:
        yield connected


@pytest.fixture
def amqp_connection():
    with kombu.Connection(DEFAULT_AMQP_URL) as connection:
        yield connection


def listen(connection: kombu.Connection, routing_key: str) -> Any:
    """A private queue that receives what is published for `routing_key`."""
    exchange = kombu.Exchange(HGPUSHES_EXCHANGE, type="topic", durable=True)
    queue = kombu.Queue(
        f"test-hgmo-standin-{uuid.uuid4().hex}",
        exchange,
        routing_key=routing_key,
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


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.headers["Content-Type"] == "application/json"
        return json.load(response)


def unique_repository_name() -> str:
    return f"l10n-central/test-{uuid.uuid4().hex[:12]}"


def test_pushed_changesets_clone_over_http_with_the_real_client(standin, tmp_path):
    standin.create_repository("l10n-central/de")
    pushed = standin.push("l10n-central/de", {"browser/app.ftl": "hello = Hallo\n"})

    clone = tmp_path / "clone"
    run_hg(["clone", standin.base_url + "l10n-central/de", str(clone)])

    assert (clone / "browser/app.ftl").read_text() == "hello = Hallo\n"
    assert run_hg(["log", "--rev", "tip", "--template", "{node}"], cwd=clone) == pushed.nodes[0]


def test_pushlog_records_pusher_date_and_nodes_in_push_order(standin):
    standin.create_repository("l10n-central/fr")
    before = int(time.time())

    first = standin.push("l10n-central/fr", {"a.ftl": "a = A\n"}, user="first@example.org")
    second = standin.push_commits(
        "l10n-central/fr",
        [Commit({"b.ftl": "b = B\n"}), Commit({"a.ftl": None, "c.ftl": "c = C\n"})],
        user="second@example.org",
    )

    pushlog = standin.pushlog("l10n-central/fr")
    assert [(push["id"], push["user"]) for push in pushlog] == [
        (1, "first@example.org"),
        (2, "second@example.org"),
    ]
    assert [push["nodes"] for push in pushlog] == [first.nodes, second.nodes]
    assert len(second.nodes) == 2
    assert all(before <= push["date"] <= time.time() for push in pushlog)
    assert standin.pusher == "translator@example.org"


def test_push_by_another_hg_client_is_logged_as_the_standin_pusher(standin, tmp_path):
    standin.create_repository("l10n-central/it")
    clone = tmp_path / "it"
    run_hg(["clone", standin.base_url + "l10n-central/it", str(clone)])
    (clone / "main.ftl").write_text("title = Titolo\n")
    run_hg(["commit", "--addremove", "--message", "Add title"], cwd=clone)

    standin.pusher = "outsider@example.org"
    run_hg(["push", standin.base_url + "l10n-central/it"], cwd=clone)

    assert [push["user"] for push in standin.pushlog("l10n-central/it")] == [
        "outsider@example.org"
    ]


def test_json_pushes_start_id_is_exclusive_and_end_id_inclusive(standin):
    standin.create_repository("l10n-central/de")
    for number in range(3):
        standin.push("l10n-central/de", {"strings.ftl": f"version = {number}\n"})
    json_pushes = standin.base_url + "l10n-central/de/json-pushes?version=2"

    middle = get_json(json_pushes + "&startID=1&endID=2")
    everything = get_json(json_pushes + "&startID=0&endID=3")
    after_two = get_json(json_pushes + "&startID=2")

    assert list(middle["pushes"]) == ["2"]
    assert list(everything["pushes"]) == ["1", "2", "3"]
    assert list(after_two["pushes"]) == ["3"]
    assert {middle["lastpushid"], everything["lastpushid"], after_two["lastpushid"]} == {3}
    push = middle["pushes"]["2"]
    assert push["user"] == "translator@example.org"
    assert isinstance(push["date"], int)
    assert push["changesets"] == standin.pushlog("l10n-central/de")[1]["nodes"]


def test_json_pushes_without_range_answers_the_last_ten_pushes(relay_standin):
    answer = get_json(relay_standin.base_url + "relay/json-pushes?version=2")

    last = answer["lastpushid"]
    assert list(answer["pushes"]) == [str(push_id) for push_id in range(last - 9, last + 1)]


def test_full_json_pushes_describes_roots_merges_and_files(standin):
    standin.create_repository("l10n-central/de")
    root = standin.push(
        "l10n-central/de",
        {"browser/app.ftl": "hello = Hallo\n"},
        message="Add German strings",
        author="A Translator <translator@example.org>",
    )
    merge = standin.push_merge(
        "l10n-central/de",
        left={"browser/menu.ftl": "file = Datei\n"},
        right={"toolkit/about.ftl": "about = Über\n"},
        merged={"browser/app.ftl": "hello = Hallo Welt\n"},
        message="Merge translations",
    )

    answer = get_json(
        standin.base_url + "l10n-central/de/json-pushes?version=2&full=1&startID=0&endID=2"
    )

    assert answer["lastpushid"] == 2
    (root_changeset,) = answer["pushes"]["1"]["changesets"]
    assert root_changeset == {
        "node": root.nodes[0],
        "author": "A Translator <translator@example.org>",
        "desc": "Add German strings",
        "branch": "default",
        "parents": [NULL_NODE],
        "tags": [],
        "files": ["browser/app.ftl"],
    }
    left, right, merged = answer["pushes"]["2"]["changesets"]
    assert [left["node"], right["node"], merged["node"]] == merge.nodes
    assert left["parents"] == right["parents"] == [root.nodes[0]]
    assert left["files"] == ["browser/menu.ftl"] and right["files"] == ["toolkit/about.ftl"]
    assert merged["parents"] == [left["node"], right["node"]]
    assert merged["files"] == ["browser/app.ftl"]
    assert merged["desc"] == "Merge translations" and merged["tags"] == ["tip"]


def test_empty_repository_has_no_pushes_and_lastpushid_zero(standin):
    standin.create_repository("l10n-central/sat")

    answer = get_json(standin.base_url + "l10n-central/sat/json-pushes?version=2&full=1")

    assert answer == {"lastpushid": 0, "pushes": {}}


def test_json_pushes_of_an_unknown_repository_is_not_found(standin):
    with pytest.raises(urllib.error.HTTPError) as answer:
        get_json(standin.base_url + "l10n-central/xx/json-pushes?version=2")

    assert answer.value.code == 404


def test_changegroup_message_has_the_hgmo_shape(standin, publisher, amqp_connection):
    name = unique_repository_name()
    standin.create_repository(name)
    standin.push(name, {"a.ftl": "a = A\n"})
    pushed = standin.push_merge(name, {"b.ftl": "b = B\n"}, {"c.ftl": "c = C\n"})
    queue = listen(amqp_connection, name)

    publisher.publish_changegroup(standin, name, [pushed.push_id])
    message = receive(queue)

    body = json.loads(message.body)
    repo_url = standin.base_url + name
    json_pushes = f"{repo_url}/json-pushes"
    push = standin.pushlog(name)[-1]
    assert body["payload"] == {
        "type": "changegroup.1",
        "data": {
            "repo_url": repo_url,
            "heads": [pushed.nodes[-1]],
            "source": "serve",
            "pushlog_pushes": [
                {
                    "pushid": 2,
                    "time": push["date"],
                    "user": "translator@example.org",
                    "push_json_url": f"{json_pushes}?version=2&startID=1&endID=2",
                    "push_full_json_url": f"{json_pushes}?version=2&full=1&startID=1&endID=2",
                }
            ],
        },
    }
    assert_meta_like_hgmo(body["_meta"], name)
    assert message.delivery_info["routing_key"] == name
    assert message.content_type == "application/json"
    assert message.properties["delivery_mode"] == 2


def test_changegroup_from_a_base_url_reads_the_pushlog_over_http(
    standin, publisher, amqp_connection
):
    name = unique_repository_name()
    standin.create_repository(name)
    pushed = standin.push(name, {"a.ftl": "a = A\n"}, user="remote@example.org")
    queue = listen(amqp_connection, name)

    publisher.publish_changegroup(standin.base_url, name, [pushed.push_id])
    data = json.loads(receive(queue).body)["payload"]["data"]

    assert data["heads"] == pushed.nodes
    assert [(push["pushid"], push["user"]) for push in data["pushlog_pushes"]] == [
        (1, "remote@example.org")
    ]


def test_newrepo_and_obsolete_messages_have_the_hgmo_shape(publisher, amqp_connection):
    name = unique_repository_name()
    base_url = "http://127.0.0.1:9/"
    queue = listen(amqp_connection, name)
    marker = {
        "precursor": {
            "node": "1" * 40,
            "known": True,
            "visible": False,
            "desc": "Fix typo",
            "push": None,
        },
        "successors": [
            {"node": "2" * 40, "known": False, "visible": None, "desc": None, "push": None}
        ],
        "user": None,
        "time": 1764853300.5,
    }

    publisher.publish_newrepo(base_url, name)
    publisher.publish_obsolete(base_url, name, [marker])
    newrepo, obsolete = json.loads(receive(queue).body), json.loads(receive(queue).body)

    assert newrepo["payload"] == {"type": "newrepo.1", "data": {"repo_url": base_url + name}}
    assert obsolete["payload"] == {
        "type": "obsolete.1",
        "data": {"repo_url": base_url + name, "markers": [marker]},
    }
    assert_meta_like_hgmo(newrepo["_meta"], name)
    assert_meta_like_hgmo(obsolete["_meta"], name)


def test_publish_raw_sends_the_bytes_unchanged(publisher, amqp_connection):
    name = unique_repository_name()
    queue = listen(amqp_connection, name)

    publisher.publish_raw(name, b'{"payload": not json', content_type="text/plain")
    message = receive(queue)

    # The client decodes bodies that declare an encoding, as the raw ones do (utf-8).
    assert message.body == '{"payload": not json'
    assert (message.content_type, message.content_encoding) == ("text/plain", "utf-8")


def assert_meta_like_hgmo(meta: dict, routing_key: str) -> None:
    assert set(meta) == {"exchange", "routing_key", "serializer", "sent"}
    assert meta["exchange"] == HGPUSHES_EXCHANGE
    assert meta["routing_key"] == routing_key
    assert meta["serializer"] == "json"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}", meta["sent"])
    now_utc = datetime.now(UTC).replace(tzinfo=None)
    assert abs(now_utc - datetime.fromisoformat(meta["sent"])).total_seconds() < 60


def test_bundle_import_replays_the_history_as_pushes_by_author_and_day(relay_standin):
    pushlog = relay_standin.pushlog("relay")
    answer = get_json(
        relay_standin.base_url + f"relay/json-pushes?version=2&full=1&startID=0&endID={10**6}"
    )

    changesets = [c for push in answer["pushes"].values() for c in push["changesets"]]
    assert len(changesets) == 5331
    assert sum(len(push["nodes"]) for push in pushlog) == 5331
    assert answer["lastpushid"] == len(pushlog) == pushlog[-1]["id"]
    assert sum(len(changeset["parents"]) == 2 for changeset in changesets) == 167
    for push in answer["pushes"].values():
        assert re.fullmatch(r"localizer\d+@example\.org", push["user"])
        assert all(push["user"] in changeset["author"] for changeset in push["changesets"])
    # One author's consecutive work on separate days makes separate pushes.
    neighbours = itertools.pairwise(pushlog)
    assert any(earlier["user"] == later["user"] for earlier, later in neighbours)
    first = pushlog[0]
    last_changeset_date = run_hg(
        ["log", "--rev", first["nodes"][-1], "--template", "{date|hgdate}"],
        cwd=relay_standin.repository_path("relay"),
    )
    assert first["date"] == int(last_changeset_date.split()[0])


def test_fail_next_answers_an_hg_pull_with_the_status_then_recovers(standin, tmp_path):
    standin.create_repository("l10n-central/de")
    standin.push("l10n-central/de", {"a.ftl": "a = A\n"})
    run_hg(["init", str(tmp_path / "local")])
    pull = ["pull", standin.base_url + "l10n-central/de"]

    standin.fail_next(1)
    with pytest.raises(HgCommandError) as failure:
        run_hg(pull, cwd=tmp_path / "local")
    run_hg(pull, cwd=tmp_path / "local")

    assert "500" in failure.value.stderr
    assert (
        run_hg(["log", "--template", "{node}\n"], cwd=tmp_path / "local").split()
        == (standin.pushlog("l10n-central/de")[0]["nodes"])
    )


def test_fail_next_applies_to_json_pushes_with_the_given_status(standin):
    standin.create_repository("l10n-central/de")
    url = standin.base_url + "l10n-central/de/json-pushes?version=2"

    standin.fail_next(2, status=503)
    statuses = []
    for _ in range(2):
        with pytest.raises(urllib.error.HTTPError) as failure:
            get_json(url)
        statuses.append(failure.value.code)

    assert statuses == [503, 503]
    assert get_json(url)["lastpushid"] == 0


def test_delay_slows_every_request_and_requests_are_recorded(standin):
    standin.create_repository("l10n-central/de")
    standin.delay = 0.3

    started = time.monotonic()
    get_json(standin.base_url + "l10n-central/de/json-pushes?version=2&startID=0")

    assert time.monotonic() - started >= 0.3
    assert standin.requests[-1] == ("GET", "/l10n-central/de/json-pushes?version=2&startID=0")


def test_command_line_serves_until_sigterm(tmp_path):
    server = subprocess.Popen(
        [sys.executable, "-m", "standins.hgmo", "--root", str(tmp_path), "--port", "0"],
        cwd=PROJECT_ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first_line = server.stderr.readline()
        base_url = re.search(r"http://127\.0\.0\.1:\d+/", first_line).group(0)
        with pytest.raises(urllib.error.HTTPError) as answer:
            get_json(base_url + "l10n-central/de/json-pushes")
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=10) == 0
    finally:
        server.kill()
        server.wait()
        server.stderr.close()

    assert answer.value.code == 404
