"""End to end: hg.mozilla.org messages through the real broker into the
database and the clones, with the worker running as `consume-pulse`."""

import json
from pathlib import Path

import pytest

from elmo.life.models import NULL_REVISION, Changeset, Forest, Locale, Push, Repository
from shardworker.models import DeadLetter
from tests.conftest import wait_until
from tests.helpers import (
    clone_nodes,
    files_of,
    parents_of,
    recorded_pushes,
    short_id,
    standin_pushes,
)

pytestmark = pytest.mark.django_db(transaction=True)


def track(standin, name: str) -> Repository:
    standin.create_repository(name)
    forest, _ = Forest.objects.get_or_create(name=name.rsplit("/", 1)[0],
                                             defaults={"url": standin.base_url})
    locale, _ = Locale.objects.get_or_create(code=name.rsplit("/", 1)[1])
    return Repository.objects.create(name=name, url=standin.base_url + name, forest=forest,
                                     locale=locale)


def wait_for_outcome(worker, body: dict | bytes, routing_key: str, outcome: str = "processed",
                     timeout: float = 60) -> None:
    needle = f"msg={short_id(body, routing_key)} {outcome}"
    wait_until(lambda: needle in worker.log(), timeout, f"{needle!r}\n{worker.log()[-3000:]}")


def test_push_recorded_with_changesets_parents_and_files(hgmo, publisher, start_worker,
                                                         tmp_path: Path):
    track(hgmo, "l10n-central/de")
    first = hgmo.push("l10n-central/de", {"browser/menu.ftl": "file = Datei\n"},
                      user="anna@example.org", message="Add menu",
                      author="Anna <anna@example.org>")
    second = hgmo.push("l10n-central/de",
                       {"browser/menu.ftl": "file = Datei\nedit = Bearbeiten\n",
                        "toolkit/about.ftl": "about = Über\n"},
                       user="ben@example.org", message="Translate edit menu")
    worker = start_worker(shards=4)

    body = publisher.publish_changegroup(hgmo, "l10n-central/de", [second.push_id])
    wait_for_outcome(worker, body, "l10n-central/de")

    assert recorded_pushes("l10n-central/de") == standin_pushes(hgmo, "l10n-central/de")
    root = Changeset.objects.get(revision=first.nodes[0])
    assert root.user == "Anna <anna@example.org>"
    assert root.description == "Add menu"
    assert root.branch.name == "default"
    assert parents_of(first.nodes[0]) == [NULL_REVISION]
    assert parents_of(second.nodes[0]) == [first.nodes[0]]
    assert files_of(second.nodes[0]) == ["browser/menu.ftl", "toolkit/about.ftl"]
    push = Push.objects.get(repository__name="l10n-central/de", push_id=second.push_id)
    assert push.user == "ben@example.org"
    assert clone_nodes(tmp_path / "clones", "l10n-central/de") == {*first.nodes, *second.nodes}


def test_nul_in_a_commit_message_is_recorded_as_a_replacement_character(
        hgmo, publisher, start_worker):
    """Mercurial accepts NUL in a message; PostgreSQL refuses it in text. The push is
    recorded, and the ones after it too."""
    track(hgmo, "l10n-central/de")
    odd = hgmo.push("l10n-central/de", {"a.ftl": "a = A\n"}, message="Add a\x00 by mistake")
    after = hgmo.push("l10n-central/de", {"a.ftl": "a = B\n"}, message="Change a")
    worker = start_worker(shards=1)

    body = publisher.publish_changegroup(hgmo, "l10n-central/de", [odd.push_id])
    wait_for_outcome(worker, body, "l10n-central/de")
    body = publisher.publish_changegroup(hgmo, "l10n-central/de", [after.push_id])
    wait_for_outcome(worker, body, "l10n-central/de")

    assert Changeset.objects.get(revision=odd.nodes[0]).description == \
        "Add a\ufffd by mistake"
    assert recorded_pushes("l10n-central/de") == standin_pushes(hgmo, "l10n-central/de")


def test_merge_recorded_with_both_parents(hgmo, publisher, start_worker):
    track(hgmo, "l10n-central/fr")
    base = hgmo.push("l10n-central/fr", {"a.ftl": "a = A\n"})
    merge = hgmo.push_merge("l10n-central/fr", left={"b.ftl": "b = B\n"},
                            right={"c.ftl": "c = C\n"})
    worker = start_worker(shards=2)

    body = publisher.publish_changegroup(hgmo, "l10n-central/fr",
                                         [base.push_id, merge.push_id])
    wait_for_outcome(worker, body, "l10n-central/fr")

    left, right, merged = merge.nodes
    assert parents_of(merged) == sorted([left, right])
    assert parents_of(left) == [base.nodes[0]] == parents_of(right)
    assert recorded_pushes("l10n-central/fr") == standin_pushes(hgmo, "l10n-central/fr")


def test_duplicate_message_changes_nothing(hgmo, publisher, start_worker):
    track(hgmo, "l10n-central/it")
    pushed = hgmo.push("l10n-central/it", {"a.ftl": "a = A\n"})
    worker = start_worker(shards=2)
    body = publisher.publish_changegroup(hgmo, "l10n-central/it", [pushed.push_id])
    wait_for_outcome(worker, body, "l10n-central/it")
    before = (recorded_pushes("l10n-central/it"), Changeset.objects.count(),
              Push.objects.count())

    again = publisher.publish_changegroup(hgmo, "l10n-central/it", [pushed.push_id])
    wait_for_outcome(worker, again, "l10n-central/it")

    assert (recorded_pushes("l10n-central/it"), Changeset.objects.count(),
            Push.objects.count()) == before


def test_missed_message_is_repaired_by_the_next(hgmo, publisher, start_worker, tmp_path):
    track(hgmo, "l10n-central/ja")
    missed = [hgmo.push("l10n-central/ja", {f"f{n}.ftl": f"n = {n}\n"}) for n in range(3)]
    last = hgmo.push("l10n-central/ja", {"last.ftl": "x = y\n"})
    worker = start_worker(shards=4)

    body = publisher.publish_changegroup(hgmo, "l10n-central/ja", [last.push_id])
    wait_for_outcome(worker, body, "l10n-central/ja")

    assert [p[0] for p in recorded_pushes("l10n-central/ja")] == [1, 2, 3, 4]
    expected = {node for push in [*missed, last] for node in push.nodes}
    assert clone_nodes(tmp_path / "clones", "l10n-central/ja") == expected


def test_several_pushes_in_one_message(hgmo, publisher, start_worker):
    track(hgmo, "l10n-central/es-ES")
    pushes = [hgmo.push("l10n-central/es-ES", {"a.ftl": f"a = {n}\n"}) for n in range(3)]
    worker = start_worker(shards=1)

    body = publisher.publish_changegroup(hgmo, "l10n-central/es-ES",
                                         [p.push_id for p in pushes])
    wait_for_outcome(worker, body, "l10n-central/es-ES")

    assert recorded_pushes("l10n-central/es-ES") == standin_pushes(hgmo, "l10n-central/es-ES")


def test_messages_of_one_repository_are_processed_in_order(hgmo, publisher, start_worker):
    track(hgmo, "l10n-central/nl")
    worker = start_worker(shards=3)
    ids = []
    for n in range(8):
        pushed = hgmo.push("l10n-central/nl", {"a.ftl": f"a = {n}\n"})
        body = publisher.publish_changegroup(hgmo, "l10n-central/nl", [pushed.push_id])
        ids.append(short_id(body, "l10n-central/nl"))
    wait_until(lambda: Push.objects.filter(repository__name="l10n-central/nl").count() == 8
               and all(f"msg={i} processed" in worker.log() for i in ids), 60, "8 pushes")

    log = worker.log()
    positions = [log.index(f"msg={i} processed") for i in ids]
    assert positions == sorted(positions)


def test_newrepo_records_whole_history(hgmo, publisher, start_worker, tmp_path):
    Forest.objects.create(name="l10n-central", url=hgmo.base_url + "l10n-central")
    hgmo.create_repository("l10n-central/sat")
    pushes = [hgmo.push("l10n-central/sat", {"a.ftl": f"a = {n}\n"}) for n in range(4)]
    worker = start_worker(shards=2)

    body = publisher.publish_newrepo(hgmo, "l10n-central/sat")
    wait_for_outcome(worker, body, "l10n-central/sat")

    repository = Repository.objects.get(name="l10n-central/sat")
    assert repository.forest.name == "l10n-central"
    assert repository.locale.code == "sat"
    assert recorded_pushes("l10n-central/sat") == standin_pushes(hgmo, "l10n-central/sat")
    expected = {node for push in pushes for node in push.nodes}
    assert clone_nodes(tmp_path / "clones", "l10n-central/sat") == expected


def test_newrepo_leaves_archived_and_git_repositories_alone(hgmo, publisher, start_worker,
                                                           tmp_path):
    forest = Forest.objects.create(name="l10n-central", url=hgmo.base_url + "l10n-central")
    for name in ("l10n-central/old", "l10n-central/gh"):
        hgmo.create_repository(name)
        hgmo.push(name, {"a.ftl": "a = A\n"})
    Repository.objects.create(name="l10n-central/old", url=hgmo.base_url + "l10n-central/old",
                              forest=forest, archived=True)
    Repository.objects.create(name="l10n-central/gh", url="https://github.com/l10n-central/gh",
                              kind=Repository.GIT, branch="main")
    worker = start_worker(shards=2)

    archived = publisher.publish_newrepo(hgmo, "l10n-central/old")
    changegroup = publisher.publish_changegroup(hgmo, "l10n-central/old", [1])
    git = publisher.publish_newrepo(hgmo, "l10n-central/gh")
    wait_for_outcome(worker, archived, "l10n-central/old", "ignored")
    wait_for_outcome(worker, changegroup, "l10n-central/old", "ignored")
    wait_for_outcome(worker, git, "l10n-central/gh", "dead_lettered")

    assert not Push.objects.exists()
    assert not (tmp_path / "clones" / "l10n-central").exists()
    letter = DeadLetter.objects.get(repository="l10n-central/gh")
    assert "tracks as a git repository" in letter.reason


def test_unknown_repository_and_unknown_type_are_acknowledged(hgmo, publisher, start_worker):
    hgmo.create_repository("l10n-central/xx")
    pushed = hgmo.push("l10n-central/xx", {"a.ftl": "a = A\n"})
    worker = start_worker(shards=2)

    untracked = publisher.publish_changegroup(hgmo, "l10n-central/xx", [pushed.push_id])
    odd = {"payload": {"type": "something.9", "data": {"repo_url": hgmo.base_url +
                                                                   "l10n-central/xx"}}}
    publisher.publish_raw("l10n-central/xx", json.dumps(odd).encode())
    obsolete = publisher.publish_obsolete(hgmo, "l10n-central/xx", [])

    wait_for_outcome(worker, untracked, "l10n-central/xx", "unknown_repository")
    wait_for_outcome(worker, json.dumps(odd).encode(), "l10n-central/xx", "ignored")
    wait_for_outcome(worker, obsolete, "l10n-central/xx", "ignored")
    assert not Push.objects.exists()
    assert not DeadLetter.objects.filter(repository="l10n-central/xx").exists()


def test_body_that_is_not_json_is_dead_lettered(hgmo, publisher, start_worker):
    worker = start_worker(shards=2)

    publisher.publish_raw("l10n-central/de", b"\x00 this is not json")
    wait_for_outcome(worker, b"\x00 this is not json", "l10n-central/de", "dead_lettered")

    letter = DeadLetter.objects.get(message_id__startswith=short_id(b"\x00 this is not json",
                                                                    "l10n-central/de"))
    assert letter.source == "hgmo"
    assert letter.routing_key == "l10n-central/de"
    assert bytes(letter.body) == b"\x00 this is not json"
    assert "not JSON" in letter.reason
    assert letter.attempts == 1
