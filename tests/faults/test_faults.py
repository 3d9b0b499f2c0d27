"""Fault injection: the real `consume-pulse` on the real broker, with real hg
over HTTP and the test database, while processes die, the hg host fails or
hangs, the broker drops the connection, or two workers share one queue.

Load is the real localization history in ../shared/data, replayed by the
stand-in as 3,273 pushes and copied into several repositories. Each test
publishes changegroup messages naming push 1, 2, 3, ... per repository, in
order, so every message pulls and records; it injects its fault, lets the
workers settle, stops them, and compares the database (pushes, changesets,
parents, files, repository links) and the clones with what the stand-in's
pushlog says a clean run records. Then it prints one line:

    fault: <name> sent=N recorded=N lost=N duplicated=N seconds=S

- sent: messages the test published;
- recorded: those settled with a final outcome that the database reflects:
  a `processed` (or `dead_lettered`) line in a worker's log, or a dead letter
  row, and not left in the queue once the workers stopped;
- lost: published messages never settled, plus pushes of the pushlog (up to
  the highest push the messages of each repository name) missing from the
  database;
- duplicated: rows recorded twice or beyond the pushlog (more pushes,
  push-changeset links or changesets than the pushlog holds);
- seconds: from setting up the repositories to the end of the comparison.

"A clean run" is the stand-in's own account: its pushlog (push ids, pushers,
changesets) and `json-pushes?full=1` (authors, descriptions, branches,
parents, files), which is what one worker processing the messages one after
the other records.

The suite runs on PostgreSQL only (set DATABASE_URL): it is the database
production uses, and a database outage or two workers writing at once mean
little on SQLite. Two of its faults stop RabbitMQ's application and the local
PostgreSQL cluster for a few seconds, and start them again.

Other test runs share the broker and publish to the same exchange, so their
messages reach this test's queue too (and are dead-lettered here, for a host
on another port); only this test's own messages are counted.
"""

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl

import kombu
import pytest
from django.conf import settings
from django.db import connection, connections
from django.db.models import Count
from django.db.utils import OperationalError

from elmo.life.models import Changeset, Forest, Locale, Push, Repository
from shardworker.deliveries import HGMO_EXCHANGE, Delivery, route_to_shard
from shardworker.models import DeadLetter
from standins.hgmo import HgmoPublisher, HgmoStandIn
from tests.conftest import AMQP_URL, PROJECT, wait_until
from tests.helpers import clone_nodes, recorded_pushes

ON_POSTGRESQL = settings.DATABASES["default"]["ENGINE"].endswith("postgresql")
pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not ON_POSTGRESQL, reason="the fault suite runs on PostgreSQL, the "
                       "production database: set DATABASE_URL"),
]

BUNDLE = PROJECT.parent / "shared" / "data" / "fx-private-relay-l10n.hg"
HG = PROJECT / ".venv" / "bin" / "hg"
HG_ENVIRONMENT = {"HGRCPATH": "", "HGPLAIN": "1", "PATH": os.environ.get("PATH", os.defpath)}
FOREST = "l10n-central"
LOCALES = ("ab", "cd", "ef", "gh", "ij", "kl", "mn", "op", "qr", "st", "uv", "wx", "yz")
BATCH = 400

FINAL = re.compile(r"msg=([0-9a-f]{12}) (processed|ignored|unknown_repository|dead_lettered) in ")
RECEIVED = re.compile(r"shard=\d+ repo=\S+ msg=([0-9a-f]{12}) received")
STARTED = re.compile(r"shard=(\d+) repo=\S+ msg=([0-9a-f]{12}) started \(pid (\d+)\)")


# The load: repositories holding the real history, and the messages about them.


@dataclass(frozen=True)
class Sent:
    """A message the test published."""

    repository: str
    push_id: int
    message_id: str

    @property
    def short_id(self) -> str:
        return self.message_id[:12]


class Relay:
    """Stand-in repositories with the real history, tracked in the database,
    and the changegroup messages published about them."""

    def __init__(self, hgmo: HgmoStandIn, publisher, template: Path, clone_root: Path,
                 names: list[str]):
        self.hgmo = hgmo
        self.publisher = publisher
        self.clone_root = clone_root
        self.names = names
        self.sent: list[Sent] = []
        self.started = time.monotonic()
        forest, _ = Forest.objects.get_or_create(
            name=FOREST, defaults={"url": hgmo.base_url + FOREST})
        for name in names:
            shutil.copytree(template, hgmo.repository_path(name), symlinks=True)
            locale, _ = Locale.objects.get_or_create(code=name.rsplit("/", 1)[1])
            Repository.objects.create(name=name, url=hgmo.base_url + name, forest=forest,
                                      locale=locale)
        self.pushlog = {name: hgmo.pushlog(name) for name in names}

    def publish(self, name: str, push_id: int) -> Sent:
        body = self.publisher.publish_changegroup(self.hgmo, name, [push_id])
        delivery = Delivery(exchange=HGMO_EXCHANGE, routing_key=name,
                            body=json.dumps(body).encode())
        sent = Sent(name, push_id, delivery.message_id)
        self.sent.append(sent)
        return sent

    def publish_rounds(self, first: int, last: int) -> list[Sent]:
        """Pushes first..last of every repository, interleaved as on hg.mozilla.org."""
        return [self.publish(name, push_id) for push_id in range(first, last + 1)
                for name in self.names]

    def message(self, name: str, push_id: int) -> Sent:
        return next(s for s in self.sent if s.repository == name and s.push_id == push_id)

    def expected(self, name: str) -> list[tuple[int, str, list[str]]]:
        """What a clean run records for the messages sent so far."""
        highest = max((s.push_id for s in self.sent if s.repository == name), default=0)
        return [(push["id"], push["user"], sorted(push["nodes"]))
                for push in self.pushlog[name] if push["id"] <= highest]


def names_on_every_shard(count: int, shards: int = 4) -> list[str]:
    """`count` repository names that the worker routes to different shards."""
    chosen: list[str] = []
    used: set[int] = set()
    for code in LOCALES:
        name = f"{FOREST}/{code}"
        shard = route_to_shard(Delivery(HGMO_EXCHANGE, name, b""), shards)
        if shard not in used or len(used) == shards:
            chosen.append(name)
            used.add(shard)
        if len(chosen) == count:
            return chosen
    raise AssertionError("not enough repository names")


@pytest.fixture(scope="module")
def relay_template(tmp_path_factory) -> Path:
    """The bundle imported once, as the stand-in replays it; tests copy it."""
    if not BUNDLE.exists():
        pytest.skip(f"no localization history at {BUNDLE}")
    with HgmoStandIn(tmp_path_factory.mktemp("relay-template")) as standin:
        standin.import_bundle("relay", BUNDLE)
    return standin.repository_path("relay")


@pytest.fixture
def relay(hgmo, publisher, relay_template, db_rows, tmp_path):
    def make(count: int, shards: int = 4) -> Relay:
        return Relay(hgmo, publisher, relay_template, tmp_path / "clones",
                     names_on_every_shard(count, shards))

    return make


def preclone(relay: Relay, name: str, up_to_push: int | None = None) -> Path:
    """A clone the worker left earlier, of the whole history or of its first pushes."""
    target = relay.clone_root / name
    target.parent.mkdir(parents=True, exist_ok=True)
    revision = []
    if up_to_push is not None:
        revision = ["-r", relay.pushlog[name][up_to_push - 1]["nodes"][-1]]
    subprocess.run([str(HG), "clone", "-U", "--pull", *revision,
                    str(relay.hgmo.repository_path(name)), str(target)],
                   env=HG_ENVIRONMENT, check=True, capture_output=True)
    return target


# Faults of the hg host for chosen requests: the stand-in's own `fail_next` and
# `delay` hit every request, whichever repository it is for.


class HostFaults:
    """Answers 500, holds or stalls requests of one repository only."""

    def __init__(self, hgmo: HgmoStandIn, monkeypatch):
        self.failing: set[str] = set()
        self.held_pushlogs: dict[tuple[str, int, int], float] = {}
        self.held_pulls: dict[str, float] = {}
        self.stall_repository: str | None = None
        self.stall_after = 0
        self.stalled = threading.Event()
        self.release = threading.Event()
        serve_pushlog, hgweb = hgmo._serve_json_pushes, hgmo._hgweb

        def pushlog(path, query, start_response):
            name = path.strip("/")
            if name in self.failing:
                return self.fail(start_response)
            parameters = dict(parse_qsl(query))
            key = (name, int(parameters.get("startID", -1)), int(parameters.get("endID", -1)))
            if key in self.held_pushlogs:
                time.sleep(self.held_pushlogs[key])
            return serve_pushlog(path, query, start_response)

        def hg(environ, start_response):
            name = environ.get("PATH_INFO", "").strip("/")
            if name in self.failing:
                return self.fail(start_response)
            if name in self.held_pulls:
                time.sleep(self.held_pulls[name])
            answer = hgweb(environ, start_response)
            if (name == self.stall_repository and not self.stalled.is_set()
                    and "cmd=getbundle" in environ.get("QUERY_STRING", "")):
                return self.stall(answer)
            return answer

        monkeypatch.setattr(hgmo, "_serve_json_pushes", pushlog)
        monkeypatch.setattr(hgmo, "_hgweb", hg)

    @staticmethod
    def fail(start_response) -> list[bytes]:
        body = b"injected failure\n"
        start_response("500 Internal Server Error",
                       [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    def stall(self, answer: Iterable[bytes]) -> Iterable[bytes]:
        """Send the first bytes of the bundle, then stop until released."""
        sent = 0
        for chunk in answer:
            yield chunk
            sent += len(chunk)
            if sent >= self.stall_after and not self.stalled.is_set():
                self.stalled.set()
                self.release.wait(120)


# What the workers' logs say, read as they grow.


class Logs:
    """The lines of every worker's log (but the file lock's chatter), with
    each message's deliveries, starts and outcomes."""

    def __init__(self, *workers):
        self.workers: list = []
        self.offsets: list[int] = []
        self.partial: list[bytes] = []
        self.lines: list[tuple[int, str]] = []
        self.events: dict[str, list[tuple[int, str]]] = defaultdict(list)
        self.starts: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for worker in workers:
            self.follow(worker)

    def follow(self, worker) -> None:
        self.workers.append(worker)
        self.offsets.append(0)
        self.partial.append(b"")

    def refresh(self) -> "Logs":
        for index, worker in enumerate(self.workers):
            if not worker.log_path.exists():
                continue
            with open(worker.log_path, "rb") as log:
                log.seek(self.offsets[index])
                data = log.read()
            self.offsets[index] += len(data)
            *complete, self.partial[index] = (self.partial[index] + data).split(b"\n")
            for raw in complete:
                self.parse(index, raw.decode("utf-8", "replace"))
        return self

    def parse(self, worker: int, line: str) -> None:
        if " filelock: " in line:
            return
        self.lines.append((worker, line))
        if match := FINAL.search(line):
            self.events[match[1]].append((worker, match[2]))
        elif match := RECEIVED.search(line):
            self.events[match[1]].append((worker, "received"))
        elif match := STARTED.search(line):
            self.starts[match[2]].append((int(match[1]), int(match[3])))

    def outcomes(self, short_id: str, worker: int | None = None) -> list[str]:
        return [event for index, event in self.events.get(short_id, [])
                if event != "received" and worker in (None, index)]

    def settled(self, sent: Sent, dead_letters: set[str] = frozenset()) -> bool:
        """A final outcome, and no running worker holds a later delivery of it."""
        if sent.message_id in dead_letters:
            return True
        events = self.events.get(sent.short_id, [])
        if not any(event != "received" for _, event in events):
            return False
        for index, worker in enumerate(self.workers):
            mine = [event for at, event in events if at == index]
            if mine and mine[-1] == "received" and worker.process.poll() is None:
                return False
        return True

    def mark(self) -> int:
        return len(self.refresh().lines)

    def find(self, pattern: str, since: int = 0) -> re.Match | None:
        compiled = re.compile(pattern)
        for _, line in self.lines[since:]:
            if match := compiled.search(line):
                return match
        return None

    def wait_for(self, pattern: str, since: int = 0, timeout: float = 60) -> re.Match:
        return wait_until(lambda: self.refresh().find(pattern, since), timeout,
                          f"{pattern!r} in the log\n{self.tail()}")

    def count(self, text: str, worker: int | None = None) -> int:
        return sum(text in line for index, line in self.refresh().lines
                   if worker in (None, index))

    def started(self, sent: Sent) -> list[tuple[int, int]]:
        """(shard, pid) of every start of the message so far."""
        return list(self.starts.get(sent.short_id, []))

    def tail(self, characters: int = 4000) -> str:
        return "\n".join(line for _, line in self.lines[-200:])[-characters:]


def own_dead_letters(relay: Relay) -> dict[str, DeadLetter]:
    ids = [sent.message_id for sent in relay.sent]
    letters = {}
    for start in range(0, len(ids), BATCH):
        for letter in DeadLetter.objects.filter(message_id__in=ids[start:start + BATCH]):
            letters[letter.message_id] = letter
    return letters


def wait_settled(relay: Relay, logs: Logs, timeout: float = 90) -> None:
    """Until every message sent so far has its final outcome."""

    def unsettled() -> list[Sent]:
        logs.refresh()
        letters = set(own_dead_letters(relay))
        return [sent for sent in relay.sent if not logs.settled(sent, letters)]

    deadline = time.monotonic() + timeout
    while (waiting := unsettled()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not waiting, (f"{len(waiting)} of {len(relay.sent)} messages unsettled after "
                         f"{timeout:.0f} s, e.g. {waiting[:3]}\n{logs.tail()}")


def settled_count(relay: Relay, logs: Logs) -> int:
    logs.refresh()
    return sum(bool(logs.outcomes(sent.short_id)) for sent in relay.sent)


# The comparison with a clean run.


def own_messages_left_in_queue(queue_suffix: str, relay: Relay) -> set[str]:
    """Drain the queue (the workers have stopped) and name our messages in it."""
    ours = {sent.message_id for sent in relay.sent}
    left = set()
    with kombu.Connection(AMQP_URL) as connection:
        channel = connection.channel()
        while True:
            message = channel.basic_get(f"queue/guest/{queue_suffix}", no_ack=True)
            if message is None:
                break
            body = message.body
            if isinstance(body, str):
                body = body.encode(getattr(message, "content_encoding", None) or "utf-8")
            info = message.delivery_info
            delivery = Delivery(exchange=info.get("exchange", ""),
                                routing_key=info.get("routing_key", ""), body=body)
            if delivery.message_id in ours:
                left.add(delivery.message_id)
    return left


def duplicated_rows(relay: Relay) -> int:
    extra = 0
    for name in relay.names:
        expected = relay.expected(name)
        push_ids = list(Push.objects.filter(repository__name=name)
                        .values_list("push_id", flat=True))
        extra += len(push_ids) - len(set(push_ids))
        extra += max(0, len(set(push_ids)) - len(expected))
        links = Push.changesets.through.objects.filter(push__repository__name=name).count()
        extra += max(0, links - sum(len(push[2]) for push in expected))
    extra += (Changeset.objects.values("revision").annotate(rows=Count("id"))
              .filter(rows__gt=1).count())
    return extra


def in_batches(model, field: str, values: list[str], *columns: str) -> list[tuple]:
    rows = []
    for start in range(0, len(values), BATCH):
        rows += model.objects.filter(**{f"{field}__in": values[start:start + BATCH]}) \
            .values_list(*columns)
    return rows


def changeset_rows(relay: Relay) -> tuple[dict, dict]:
    """What the stand-in says and what the database holds, for every changeset
    of the pushes a clean run records: (user, description, branch, parents,
    files, repositories)."""
    expected: dict[str, list] = {}
    for name in relay.names:
        highest = max((push[0] for push in relay.expected(name)), default=0)
        if not highest:
            continue
        document = relay.hgmo.json_pushes(name, 0, highest, full=True)
        for push in document["pushes"].values():
            for changeset in push["changesets"]:
                row = expected.setdefault(changeset["node"], [
                    changeset["author"][:200], changeset["desc"], changeset["branch"],
                    sorted(changeset["parents"]), sorted(changeset["files"]), set(),
                ])
                row[5].add(name)
    revisions = sorted(expected)
    actual: dict[str, list] = {
        revision: [user, description, branch, [], [], set()]
        for revision, user, description, branch in in_batches(
            Changeset, "revision", revisions, "revision", "user", "description",
            "branch__name")
    }
    parents = Changeset.parents.through
    for child, parent in in_batches(parents, "from_changeset__revision", revisions,
                                    "from_changeset__revision", "to_changeset__revision"):
        actual[child][3].append(parent)
    files = Changeset.files.through
    for revision, path in in_batches(files, "changeset__revision", revisions,
                                     "changeset__revision", "file__path"):
        actual[revision][4].append(path)
    links = Changeset.repositories.through
    for revision, name in in_batches(links, "changeset__revision", revisions,
                                     "changeset__revision", "repository__name"):
        if name in relay.names:
            actual[revision][5].add(name)
    for row in actual.values():
        row[3].sort()
        row[4].sort()
    return expected, actual


def account(fault: str, relay: Relay, logs: Logs, queue_suffix: str,
            dead_lettered: Iterable[Sent] = ()) -> dict[str, DeadLetter]:
    """Stop the workers, print the `fault:` line and compare with a clean run."""
    for worker in logs.workers:
        worker.stop()
    logs.refresh()
    left = own_messages_left_in_queue(queue_suffix, relay)
    letters = own_dead_letters(relay)
    recorded = [sent for sent in relay.sent
                if (logs.outcomes(sent.short_id) or sent.message_id in letters)
                and sent.message_id not in left]
    missing = 0
    for name in relay.names:
        present = set(Push.objects.filter(repository__name=name)
                      .values_list("push_id", flat=True))
        missing += len({push[0] for push in relay.expected(name)} - present)
    lost = len(relay.sent) - len(recorded) + missing
    duplicated = duplicated_rows(relay)
    seconds = time.monotonic() - relay.started
    print(f"fault: {fault} sent={len(relay.sent)} recorded={len(recorded)} lost={lost} "
          f"duplicated={duplicated} seconds={seconds:.1f}")

    assert lost == 0, f"unsettled: {set(relay.sent) - set(recorded)}, left in queue: {left}"
    assert duplicated == 0
    assert set(letters) == {sent.message_id for sent in dead_lettered}, \
        {letter.message_id[:12]: letter.reason for letter in letters.values()}
    for name in relay.names:
        assert recorded_pushes(name) == relay.expected(name), name
    expected, actual = changeset_rows(relay)
    wrong = {revision[:12]: (expected.get(revision), actual.get(revision))
             for revision in expected.keys() | actual.keys()
             if expected.get(revision) != actual.get(revision)}
    assert not wrong, f"{len(wrong)} changesets differ, e.g. {list(wrong.items())[:2]}"
    for name in relay.names:
        if relay.expected(name):
            recorded_nodes = {node for push in relay.expected(name) for node in push[2]}
            assert recorded_nodes <= clone_nodes(relay.clone_root, name), name
    return letters


def hg_verify(clone: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(HG), "-R", str(clone), "verify", "-q"], env=HG_ENVIRONMENT,
                          capture_output=True, text=True)


# Processes and the broker.


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children[parent].append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def broker_connection(pid: int) -> tuple[str, int]:
    """(the broker's name for it, negotiated heartbeat) of the AMQP connection
    that process `pid` holds."""
    sockets = subprocess.run(["ss", "-tnpH", "state", "established", "( dport = :5672 )"],
                             capture_output=True, text=True, check=True).stdout
    ports = {line.split()[2].rpartition(":")[2] for line in sockets.splitlines()
             if f"pid={pid}," in line}
    listing = subprocess.run(
        ["rabbitmqctl", "list_connections", "pid", "peer_port", "timeout", "-q",
         "--no-table-headers"], capture_output=True, text=True, check=True).stdout
    for row in listing.splitlines():
        fields = row.split("\t")
        if len(fields) == 3 and fields[1] in ports:
            return fields[0], int(fields[2])
    raise AssertionError(f"no broker connection of pid {pid} (ports {ports})\n{listing}")


def close_broker_connection(name: str) -> None:
    subprocess.run(["rabbitmqctl", "close_connection", name, "test"], check=True,
                   capture_output=True)


# 1. kill -9 of a shard in the middle of a message.


@pytest.mark.slow
def test_shard_killed_mid_message_is_restarted_and_loses_nothing(relay, start_worker,
                                                                 queue_suffix):
    load = relay(4)
    worker = start_worker(shards=4)
    logs = Logs(worker)
    load.publish_rounds(1, 40)

    # Five different messages (each may kill its shard 3 times), on every
    # shard, at different moments of their work.
    targets = [(0, 6), (1, 12), (2, 18), (3, 24), (0, 32)]
    delays = [0.0, 0.1, 0.2, 0.05, 0.15]
    in_flight = []
    for (index, push_id), delay in zip(targets, delays, strict=True):
        target = load.message(load.names[index], push_id)
        shard, pid = wait_until(lambda t=target: logs.refresh().started(t), 90,
                                f"{target} to start\n{logs.tail()}")[0]
        time.sleep(delay)
        since = logs.mark()
        os.kill(pid, signal.SIGKILL)
        logs.wait_for(rf"shard={shard} \(pid {pid}\) was killed by signal 9", since)
        died = logs.wait_for(rf"shard={shard} repo=\S+ msg=([0-9a-f]{{12}}) shard died "
                             rf"during the message \(1 of 3\); trying again", since)
        logs.wait_for(rf"shard={shard} started as pid (?!{pid}\b)\d+", since)
        in_flight.append(died[1])

    wait_settled(load, logs, timeout=180)
    account("shard-kill-9", load, logs, queue_suffix)
    for short_id in in_flight:
        assert "processed" in logs.outcomes(short_id), short_id
    assert logs.count("was killed by signal 9") == 5


# 2. kill -9 of the supervisor and its shards; a new worker takes over.


def test_supervisor_killed_with_its_shards_loses_nothing(relay, start_worker, queue_suffix):
    load = relay(4)
    first = start_worker(shards=4)
    logs = Logs(first)
    load.publish_rounds(1, 14)
    wait_until(lambda: settled_count(load, logs) >= 16, 90, "16 messages processed")

    victims = [first.process.pid, *descendants(first.process.pid)]
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):  # an hg that just finished
            os.kill(pid, signal.SIGKILL)
    assert first.process.wait(10) == -signal.SIGKILL
    wait_until(lambda: not any(running(pid) for pid in victims), 10, "every process to die")
    logs.refresh()
    done_before = {sent.short_id for sent in load.sent if logs.outcomes(sent.short_id)}
    assert len(done_before) < len(load.sent)

    second = start_worker(shards=4)
    logs.follow(second)
    wait_settled(load, logs)
    account("supervisor-kill-9", load, logs, queue_suffix)
    redelivered = [line for index, line in logs.lines if index == 1
                   and "(redelivered)" in line
                   and any(f"msg={sent.short_id} " in line for sent in load.sent)]
    assert redelivered, "the unacknowledged messages did not come back"


# 3. A message that kills its shard every time.


def test_message_that_kills_its_shard_every_time_is_dead_lettered(relay, hgmo, monkeypatch,
                                                                  start_worker, queue_suffix):
    load = relay(4)
    victim = load.names[0]
    faults = HostFaults(hgmo, monkeypatch)
    # Its pushlog read takes a while: time enough to kill the shard in the act.
    faults.held_pushlogs[(victim, 4, 5)] = 5.0
    worker = start_worker(shards=4)
    logs = Logs(worker)
    load.publish_rounds(1, 12)
    poison = load.message(victim, 5)

    killed: list[int] = []
    others_at_kills = []
    deadline = time.monotonic() + 90
    while not DeadLetter.objects.filter(message_id=poison.message_id).exists():
        assert time.monotonic() < deadline, f"no dead letter after {killed}\n{logs.tail()}"
        for _, pid in logs.refresh().started(poison):
            if pid not in killed:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                others_at_kills.append(sum(
                    bool(logs.outcomes(sent.short_id)) for sent in load.sent
                    if sent.repository != victim))
        time.sleep(0.05)
    others_at_dead_letter = sum(bool(logs.refresh().outcomes(sent.short_id))
                                for sent in load.sent if sent.repository != victim)

    wait_settled(load, logs)
    letters = account("poison-message", load, logs, queue_suffix, dead_lettered=[poison])
    letter = letters[poison.message_id]
    assert len(killed) == 3
    assert letter.reason == "the shard processing it died 3 times"
    assert letter.attempts == 3
    assert letter.repository == victim
    assert others_at_dead_letter > others_at_kills[0], "other repositories stood still"
    assert "processed" not in logs.outcomes(poison.short_id)


# 4. The hg host fails or hangs.


def test_hg_host_answering_500_briefly_is_retried_then_processed(relay, hgmo, start_worker,
                                                                 queue_suffix):
    load = relay(2, shards=2)
    worker = start_worker(shards=2)
    logs = Logs(worker)
    load.publish_rounds(1, 1)
    wait_settled(load, logs)

    hgmo.fail_next(2, 500)
    retried = load.publish(load.names[0], 2)
    wait_settled(load, logs)
    load.publish(load.names[1], 2)
    load.publish_rounds(3, 10)
    wait_settled(load, logs)

    account("hg-500-brief", load, logs, queue_suffix)
    for attempt in (1, 2):
        assert logs.find(rf"msg={retried.short_id} attempt {attempt} failed: .*answered 500; "
                         rf"retrying")
    seconds = float(logs.find(rf"msg={retried.short_id} processed in ([\d.]+) s")[1])
    assert seconds >= 0.2 + 0.4, "no backoff between the attempts"


def test_hg_host_answering_500_too_long_dead_letters_and_others_keep_flowing(
        relay, hgmo, monkeypatch, start_worker, queue_suffix):
    load = relay(4)
    faults = HostFaults(hgmo, monkeypatch)
    worker = start_worker(shards=4)
    logs = Logs(worker)
    load.publish_rounds(1, 1)
    wait_settled(load, logs)
    down = load.names[0]

    # Three failures in a row, ELMO_MAX_ATTEMPTS being 3.
    hgmo.fail_next(3, 500)
    first = load.publish(down, 2)
    wait_settled(load, logs)

    # One repository answers 500 to everything while the others keep working.
    faults.failing.add(down)
    during = load.publish_rounds(3, 8)
    wait_settled(load, logs)
    faults.failing.clear()
    load.publish(down, 9)
    wait_settled(load, logs)

    dead = [first, *(sent for sent in during if sent.repository == down)]
    letters = account("hg-500-long", load, logs, queue_suffix, dead_lettered=dead)
    for sent in dead:
        letter = letters[sent.message_id]
        assert letter.attempts == 3
        assert re.fullmatch(r"gave up after 3 attempts: pushlog \S+ answered 500",
                            letter.reason), letter.reason
    others = [sent for sent in during if sent.repository != down]
    assert all(logs.outcomes(sent.short_id) == ["processed"] for sent in others)


def test_hg_host_that_hangs_is_timed_out_and_dead_lettered(relay, hgmo, monkeypatch,
                                                           start_worker, queue_suffix):
    load = relay(2, shards=2)
    for name in load.names:
        preclone(load, name)
    faults = HostFaults(hgmo, monkeypatch)
    worker = start_worker(shards=2, ELMO_HTTP_TIMEOUT="1", ELMO_HG_TIMEOUT="2")
    logs = Logs(worker)
    load.publish_rounds(1, 1)
    wait_settled(load, logs)

    # Every request hangs: the pushlog read times out.
    hgmo.delay = 5
    hung_pushlog = load.publish(load.names[0], 2)
    wait_settled(load, logs)
    hgmo.delay = 0
    # Only hg's requests hang: the pull times out.
    faults.held_pulls[load.names[1]] = 5.0
    hung_pull = load.publish(load.names[1], 2)
    wait_settled(load, logs)
    faults.held_pulls.clear()
    load.publish_rounds(3, 4)
    wait_settled(load, logs)

    letters = account("hg-hang", load, logs, queue_suffix,
                      dead_lettered=[hung_pushlog, hung_pull])
    assert re.fullmatch(r"gave up after 3 attempts: pushlog \S+ took longer than the HTTP "
                        r"timeout", letters[hung_pushlog.message_id].reason)
    assert letters[hung_pull.message_id].reason == \
        "gave up after 3 attempts: hg pull timed out after 2 s"


@pytest.mark.parametrize("cut", ["hang", "kill"])
def test_pull_cut_off_mid_transaction_is_repaired_and_loses_nothing(
        cut, relay, hgmo, monkeypatch, start_worker, queue_suffix):
    """hg dies while it writes the clone (the host stalls past ELMO_HG_TIMEOUT,
    or the shard is killed): the clone is left with an abandoned transaction."""
    load = relay(1)
    name = load.names[0]
    clone = preclone(load, name, up_to_push=100)
    faults = HostFaults(hgmo, monkeypatch)
    faults.stall_repository, faults.stall_after = name, 200_000
    worker = start_worker(shards=2, ELMO_HG_TIMEOUT="8" if cut == "hang" else "120")
    logs = Logs(worker)

    first = load.publish(name, 101)
    assert faults.stalled.wait(60), logs.refresh().tail()
    wait_until(lambda: (clone / ".hg" / "store" / "journal").exists(), 10,
               "hg to be inside its transaction")
    if cut == "kill":
        since = logs.mark()
        _, pid = logs.started(first)[-1]
        os.kill(pid, signal.SIGKILL)
        logs.wait_for(rf"\(pid {pid}\) was killed by signal 9", since)
    else:
        logs.wait_for(rf"msg={first.short_id} attempt 1 failed: hg pull timed out")
    faults.release.set()
    load.publish(name, 102)
    wait_settled(load, logs)

    account(f"pull-cut-off-{cut}", load, logs, queue_suffix)
    assert logs.find(rf"repo={name} clone damaged .*repairing: recover")
    verified = hg_verify(clone)
    assert verified.returncode == 0, verified.stdout + verified.stderr


# 5. SIGTERM in the middle of a burst.


def test_sigterm_during_a_burst_finishes_in_flight_work_and_returns_the_rest(
        relay, hgmo, monkeypatch, start_worker, queue_suffix):
    load = relay(4)
    slow_repository = load.names[0]
    faults = HostFaults(hgmo, monkeypatch)
    faults.held_pushlogs[(slow_repository, 5, 6)] = 3.0
    first = start_worker(shards=4, extra=["--drain-seconds", "20"])
    logs = Logs(first)
    load.publish_rounds(1, 12)
    slow = load.message(slow_repository, 6)
    wait_until(lambda: logs.refresh().started(slow), 90, f"{slow} to start")

    time.sleep(0.5)
    signalled = time.monotonic()
    first.process.send_signal(signal.SIGTERM)
    code = first.process.wait(40)
    stopped_in = time.monotonic() - signalled
    logs.refresh()
    drained = logs.find(r"received SIGTERM: finishing (\d+) in-flight message\(s\), "
                        r"returning (\d+) to the queue")
    done_by_first = {sent.short_id for sent in load.sent if logs.outcomes(sent.short_id, 0)}
    assert code == 0, logs.tail()
    assert stopped_in < 30
    assert drained and int(drained[1]) >= 1
    assert "processed" in logs.outcomes(slow.short_id, 0), "in-flight work was cut off"
    assert len(done_by_first) < len(load.sent)

    second = start_worker(shards=4)
    logs.follow(second)
    wait_settled(load, logs)
    account("sigterm-drain", load, logs, queue_suffix)
    done_by_second = {sent.short_id for sent in load.sent if logs.outcomes(sent.short_id, 1)}
    assert not done_by_first & done_by_second, "acknowledged work came back"


def test_drain_waits_quietly_for_its_one_busy_shard(relay, hgmo, monkeypatch, start_worker,
                                                    queue_suffix):
    load = relay(4)
    faults = HostFaults(hgmo, monkeypatch)
    slow_repository = load.names[0]
    faults.held_pushlogs[(slow_repository, 1, 2)] = 10.0
    worker = start_worker(shards=4, extra=["--drain-seconds", "30"])
    logs = Logs(worker)
    load.publish_rounds(1, 2)
    slow = load.message(slow_repository, 2)
    others = [sent for sent in load.sent if sent != slow]
    wait_until(lambda: logs.refresh().started(slow)
               and all(logs.outcomes(sent.short_id) for sent in others), 90,
               f"all but {slow} processed")
    assert not logs.outcomes(slow.short_id)

    worker.process.send_signal(signal.SIGTERM)
    assert worker.process.wait(40) == 0
    account("sigterm-one-busy-shard", load, logs, queue_suffix)
    assert "processed" in logs.outcomes(slow.short_id)
    # Three idle shards exit on `stop` at once while the fourth finishes its
    # message: none of them died, and a drain that waits between its turns
    # has nothing to report about them.
    assert logs.count("died while draining") == 0


# 6. A shard busy for longer than the heartbeat interval.


def test_shard_busy_longer_than_the_heartbeat_keeps_the_broker_connection(
        relay, hgmo, start_worker, queue_suffix):
    load = relay(2, shards=2)
    worker = start_worker(shards=2, PULSE_HEARTBEAT="2", ELMO_HTTP_TIMEOUT="60",
                          ELMO_HG_TIMEOUT="120")
    logs = Logs(worker)
    load.publish_rounds(1, 1)
    wait_settled(load, logs)
    connection, heartbeat = broker_connection(worker.process.pid)
    assert heartbeat == 2

    requests = len(hgmo.requests)
    hgmo.delay = 8
    slow = load.publish(load.names[0], 2)
    wait_until(lambda: len(hgmo.requests) > requests, 30, "the pushlog request")
    hgmo.delay = 0
    wait_settled(load, logs)
    load.publish(load.names[1], 2)
    load.publish_rounds(3, 4)
    wait_settled(load, logs)
    still = broker_connection(worker.process.pid)

    account("heartbeat-busy-shard", load, logs, queue_suffix)
    assert float(logs.find(rf"msg={slow.short_id} processed in ([\d.]+) s")[1]) >= 8
    assert logs.count("lost the broker connection") == 0
    assert logs.count("connected to ") == 1
    assert still == (connection, heartbeat)


# 7. Two supervisors on one queue and one clone root.


def test_two_supervisors_on_one_queue_and_clone_root_record_what_a_serial_run_does(
        relay, start_worker, queue_suffix):
    # Five repositories: with four, the broker's round robin over two
    # consumers could hand every message of a repository to the same one.
    load = relay(5)
    both = [start_worker(shards=4), start_worker(shards=4)]
    logs = Logs(*both)
    load.publish_rounds(1, 10)
    wait_settled(load, logs, timeout=120)

    account("two-supervisors", load, logs, queue_suffix)
    for index in (0, 1):
        assert any("processed" in logs.outcomes(sent.short_id, index) for sent in load.sent)
    for name in load.names:
        repository_shared = {index for sent in load.sent if sent.repository == name
                             for index in (0, 1) if logs.outcomes(sent.short_id, index)}
        assert repository_shared == {0, 1}, f"{name} was not shared by both workers"
        verified = hg_verify(load.clone_root / name)
        assert verified.returncode == 0, verified.stdout + verified.stderr


# 8. The broker closes the connection.


def test_broker_closing_the_connection_is_survived_by_reconnecting(relay, start_worker,
                                                                   queue_suffix):
    load = relay(4)
    worker = start_worker(shards=4)
    logs = Logs(worker)
    load.publish_rounds(1, 16)
    for closed, threshold in enumerate((12, 32), start=1):
        wait_until(lambda t=threshold: settled_count(load, logs) >= t, 90,
                   f"{threshold} messages processed")
        since = logs.mark()
        name, _ = broker_connection(worker.process.pid)
        close_broker_connection(name)
        logs.wait_for("lost the broker connection", since)
        logs.wait_for("connected to ", since, timeout=30)
        assert logs.count("connected to ") == closed + 1

    wait_settled(load, logs)
    account("broker-closes-connection", load, logs, queue_suffix)
    assert logs.count("lost the broker connection") == 2


# 9. RabbitMQ restarts.


def rabbitmqctl(*arguments: str, timeout: float = 120) -> None:
    subprocess.run(["rabbitmqctl", "-q", *arguments], check=True, capture_output=True,
                   timeout=timeout)


@contextlib.contextmanager
def broker_stopped() -> Iterator[None]:
    """RabbitMQ's application stopped (every connection closed, the port shut)
    and started again, with its durable queues and persistent messages."""
    rabbitmqctl("stop_app")
    try:
        yield
    finally:
        rabbitmqctl("start_app")
        rabbitmqctl("await_startup")


def test_broker_restart_is_survived_by_reconnecting(relay, start_worker, queue_suffix):
    load = relay(4)
    worker = start_worker(shards=4)
    logs = Logs(worker)
    load.publish_rounds(1, 12)
    wait_until(lambda: settled_count(load, logs) >= 12, 90, "12 messages processed")

    since = logs.mark()
    with broker_stopped():
        logs.wait_for("lost the broker connection", since)
        # Down long enough for the worker to fail to reconnect and back off.
        logs.wait_for("cannot consume from", since, timeout=30)
        time.sleep(3)
    logs.wait_for("connected to ", since, timeout=90)
    # The test's own publisher lost its connection too.
    with HgmoPublisher(AMQP_URL) as publisher:
        load.publisher = publisher
        load.publish_rounds(13, 16)
    wait_settled(load, logs)

    account("broker-restart", load, logs, queue_suffix)
    assert logs.count("lost the broker connection") == 1
    assert logs.count("connected to ") == 2


# 10. PostgreSQL stops for a while.


def local_postgresql_cluster() -> str | None:
    """The version of the local PostgreSQL cluster the tests use, if they use one
    that this machine can stop and start."""
    config = connection.settings_dict
    if not config["ENGINE"].endswith("postgresql") or \
            (config.get("HOST") or "127.0.0.1") not in ("127.0.0.1", "localhost"):
        return None
    versions = sorted(path.parent.name for path in Path("/etc/postgresql").glob("*/main"))
    return versions[-1] if versions and shutil.which("pg_ctlcluster") else None


@contextlib.contextmanager
def database_stopped(version: str) -> Iterator[None]:
    """The PostgreSQL cluster stopped (every connection cut) and started again."""
    def cluster(action: str) -> None:
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action],
                       check=True, capture_output=True, timeout=120)

    connections.close_all()
    cluster("stop")
    try:
        yield
    finally:
        cluster("start")
        connections.close_all()
        wait_until(database_answers, 60, "PostgreSQL to answer again")


def database_answers() -> bool:
    try:
        connections.close_all()
        connection.ensure_connection()
        return True
    except OperationalError:
        return False


def test_database_outage_keeps_every_message_and_records_it_afterwards(
        relay, hgmo, monkeypatch, start_worker, queue_suffix):
    version = local_postgresql_cluster()
    if version is None:
        pytest.skip("needs the tests' database on a local PostgreSQL cluster")
    load = relay(4)
    victims = load.names[:2]
    faults = HostFaults(hgmo, monkeypatch)
    # Time to kill the shard in the act, once before the outage and once after.
    faults.held_pushlogs[(victims[0], 2, 3)] = 3.0
    faults.held_pushlogs[(victims[1], 11, 12)] = 3.0
    worker = start_worker(shards=4, extra=["--max-crashes", "1"])
    logs = Logs(worker)
    load.publish_rounds(1, 10)
    # The supervisor dead-letters a message whose shard died: it opens its
    # own database connection, which the outage will break.
    poisons = [kill_shard_processing(load, logs, load.message(victims[0], 3))]
    wait_until(lambda: settled_count(load, logs) >= 16, 90, "16 messages processed")

    since = logs.mark()
    with database_stopped(version):
        load.publish_rounds(11, 14)
        logs.wait_for(r"database unavailable: .*; retrying in", since)
        time.sleep(5)
        outcomes_during = settled_count(load, logs)
        time.sleep(2)
        assert settled_count(load, logs) == outcomes_during, "settled while the database was down"
    poisons.append(kill_shard_processing(load, logs, load.message(victims[1], 12)))
    wait_settled(load, logs, timeout=120)

    letters = account("database-outage", load, logs, queue_suffix, dead_lettered=poisons)
    assert all(letters[sent.message_id].reason == "the shard processing it died 1 times"
               for sent in poisons)
    assert logs.count("cannot store dead letter") == 0


def kill_shard_processing(load: Relay, logs: Logs, target: Sent) -> Sent:
    """kill -9 the shard while it processes `target`."""
    shard, pid = wait_until(lambda: logs.refresh().started(target), 90,
                            f"{target} to start\n{logs.tail()}")[0]
    os.kill(pid, signal.SIGKILL)
    logs.wait_for(rf"msg={target.short_id} dead_lettered in")
    return target
