"""End to end: an hg host whose hgweb is honest but whose json-pushes lies. Each lie must
end as a dead letter with a reason that names the problem (at once when it is permanent,
after the retries when it may heal), never as a hang, a crash or recorded pushes."""

import json
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator
from typing import Any

import pytest

from elmo.life.models import Changeset, Push
from shardworker.models import DeadLetter
from tests.conftest import wait_until
from tests.helpers import short_id
from tests.test_hgmo_ingest import track

pytestmark = pytest.mark.django_db(transaction=True)

MAX_BYTES = 100_000
SHARD_DEATH = re.compile(r"shard=\d+ \(pid \d+\) (exited|was killed)")
UNKNOWN_NODE = "deadbeef" * 5


def answer(start_response: Any, body: bytes, status: str = "200 OK",
           content_type: str = "application/json") -> list[bytes]:
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return [body]


def honest(standin, name: str, query: dict[str, str]) -> dict:
    end = int(query["endID"]) if "endID" in query else None
    return standin.json_pushes(name, int(query.get("startID", 0)), end, full=True)


def lie_with(body: bytes, status: str = "200 OK", content_type: str = "application/json"):
    def lie(standin, name, query, start_response):
        return answer(start_response, body, status, content_type)
    return lie


def lie_about_document(change):
    """Serve the honest document after `change` has edited it."""
    def lie(standin, name, query, start_response):
        document = honest(standin, name, query)
        return answer(start_response, json.dumps(change(document)).encode())
    return lie


def outside_range(document: dict) -> dict:
    push = next(iter(document["pushes"].values()))
    return {"lastpushid": 7, "pushes": {"7": push}}


def before_range(document: dict) -> dict:
    push = next(iter(document["pushes"].values()))
    return {"lastpushid": document["lastpushid"], "pushes": {"0": push, **document["pushes"]}}


def ends_early(document: dict) -> dict:
    return {"lastpushid": 0, "pushes": {}}


def claims_endless_pushes(document: dict) -> dict:
    return {"lastpushid": 2 ** 31 - 1, "pushes": {}}


def nodes_only(document: dict) -> dict:
    for push in document["pushes"].values():
        push["changesets"] = [changeset["node"] for changeset in push["changesets"]]
    return document


def malformed_node(document: dict) -> dict:
    for push in document["pushes"].values():
        push["changesets"][0]["node"] = push["changesets"][0]["node"].upper()
    return document


def unknown_node(document: dict) -> dict:
    for push in document["pushes"].values():
        push["changesets"][0]["node"] = UNKNOWN_NODE
    return document


def superscript_key(document: dict) -> dict:
    return {"lastpushid": 1, "pushes": {"\u00b9": document["pushes"]["1"]}}


def cut_off(standin, name, query, start_response) -> list[bytes]:
    """Valid JSON, but shorter than the length the answer announces."""
    body = b'{"lastpushid": 1, "pushes": {}}'
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body) + 500))])
    return [body]


def endless(standin, name, query, start_response) -> Iterator[bytes]:
    """A 200 answer without a length that never ends (until the client hangs up)."""
    start_response("200 OK", [("Content-Type", "application/json")])

    def body() -> Iterator[bytes]:
        yield b'{"lastpushid": 1, "pushes": {"1": {"user": "'
        chunk = b"x" * 65536
        while not standin.stopped.is_set():
            yield chunk
    return body()


def trickle(standin, name, query, start_response) -> Iterator[bytes]:
    """A 200 answer that sends one byte every half second, well inside any socket timeout."""
    start_response("200 OK", [("Content-Type", "application/json")])

    def body() -> Iterator[bytes]:
        yield b'{"lastpushid": 1, "pushes": {"1": {"user": "'
        deadline = time.monotonic() + 300
        while not standin.stopped.wait(0.5) and time.monotonic() < deadline:
            yield b"x"
    return body()


def publish_first_push(hgmo, publisher, name: str) -> dict:
    track(hgmo, name)
    hgmo.push(name, {"a.ftl": "a = A\n"}, message="Add a")
    return publisher.publish_changegroup(hgmo, name, [1])


# (lie, attempts the dead letter records: 1 when permanent, ELMO_MAX_ATTEMPTS (3) when the
# failure may heal, and a pattern its reason must match)
LIES = {
    "truncated-json": (lie_with(b'{"lastpushid": 1, "pushes": {"1": {'), 1, "not JSON"),
    "html-page": (lie_with(b"<html><body>Internal error</body></html>",
                           content_type="text/html"), 1, "not JSON"),
    "invalid-utf8": (lie_with(b'{"lastpushid": 1, "pushes": {"1": "\xff"}}'), 1, "not JSON"),
    "list": (lie_with(b"[]"), 1, "not an object"),
    "null": (lie_with(b"null"), 1, "not an object"),
    "version-1-shape": (lie_about_document(lambda doc: doc["pushes"]), 1,
                        "lacks lastpushid or pushes"),
    "text-lastpushid": (lie_about_document(lambda doc: {**doc, "lastpushid": "1"}), 1,
                        "lacks lastpushid or pushes"),
    "pushes-as-list": (lie_about_document(lambda doc: {**doc, "pushes": list(doc["pushes"])}),
                       1, "lacks lastpushid or pushes"),
    "push-after-range": (lie_about_document(outside_range), 1, "outside the range"),
    "push-before-range": (lie_about_document(before_range), 1, "outside the range"),
    "ends-early": (lie_about_document(ends_early), 1, "ends at 0"),
    "claims-endless-pushes": (lie_about_document(claims_endless_pushes), 1,
                              "claims pushes up to 2147483647 but sent none after 0"),
    "nodes-without-full": (lie_about_document(nodes_only), 1, "needs full=1"),
    "malformed-node": (lie_about_document(malformed_node), 1, "malformed node"),
    "superscript-push-id": (lie_about_document(superscript_key), 1, "malformed push"),
    "deeply-nested": (lie_with(b"[" * 90_000), 1, "not JSON"),
    "endless-body": (endless, 1, f"larger than {MAX_BYTES} bytes"),
    "cut-off-body": (cut_off, 3, r"gave up after 3 attempts: pushlog .* unreachable: the "
                                 r"answer was cut off after 31 bytes, 500 short"),
    "not-found": (lie_with(b"no such repository", "404 Not Found", "text/plain"), 1,
                  "answered 404"),
    "unavailable": (lie_with(b"try later", "503 Service Unavailable", "text/plain"), 3,
                    r"gave up after 3 attempts: pushlog .* answered 503"),
}
@pytest.mark.parametrize("lie_name", list(LIES))
def test_lying_pushlog_ends_as_a_dead_letter_with_its_reason(hgmo, publisher, start_worker,
                                                             lie_name):
    lie, attempts, reason = LIES[lie_name]
    name = f"lies/{lie_name}"
    hgmo.lies[name] = lie
    worker = start_worker(shards=2, ELMO_PUSHLOG_MAX_BYTES=str(MAX_BYTES),
                          ELMO_HTTP_TIMEOUT="10")
    body = publish_first_push(hgmo, publisher, name)
    needle = f"msg={short_id(body, name)} dead_lettered in"

    wait_until(lambda: needle in worker.log(), 60, f"{needle}\n{worker.log()[-3000:]}")

    letter = DeadLetter.objects.get(message_id__startswith=short_id(body, name))
    assert re.search(reason, letter.reason), letter.reason
    assert letter.attempts == attempts, letter.reason
    assert letter.repository == name
    assert worker.process.poll() is None
    assert not SHARD_DEATH.search(worker.log())
    assert not Push.objects.filter(repository__name=name).exists()


def test_pushlog_naming_a_node_the_clone_lacks_is_not_recorded(hgmo, publisher, start_worker):
    name = "lies/unknown-node"
    hgmo.lies[name] = lie_about_document(unknown_node)
    worker = start_worker(shards=1)
    body = publish_first_push(hgmo, publisher, name)
    outcome = re.compile(rf"msg={short_id(body, name)} (\w+) in")

    wait_until(lambda: outcome.search(worker.log()), 60, f"an outcome\n{worker.log()[-3000:]}")

    assert worker.process.poll() is None
    assert not Changeset.objects.filter(revision=UNKNOWN_NODE).exists()
    assert not Push.objects.filter(repository__name=name).exists()
    assert outcome.search(worker.log())[1] == "dead_lettered"
    letter = DeadLetter.objects.get(message_id__startswith=short_id(body, name))
    assert "did not send" in letter.reason and UNKNOWN_NODE in letter.reason
    assert letter.attempts == 1


def test_trickling_pushlog_is_given_up_within_the_http_timeout(hgmo, publisher, start_worker):
    name = "lies/trickle"
    hgmo.lies[name] = trickle
    # A short drain, so that stopping does not wait for the trickle.
    worker = start_worker(shards=1, ELMO_HTTP_TIMEOUT="3", ELMO_DRAIN_SECONDS="2")
    body = publish_first_push(hgmo, publisher, name)
    needle = f"msg={short_id(body, name)} dead_lettered in"
    # Three attempts of three seconds each, with backoff, fit easily in 40 s.
    wait_until(lambda: needle in worker.log(), 40, f"{needle}\n{worker.log()[-2000:]}")

    letter = DeadLetter.objects.get(message_id__startswith=short_id(body, name))
    assert re.search(r"gave up after 3 attempts: pushlog .* took longer than the HTTP timeout",
                     letter.reason), letter.reason
    assert worker.process.poll() is None


def trickle_until_the_shard_is_killed(hgmo, publisher, start_worker):
    name = "lies/trickle"
    hgmo.lies[name] = trickle
    worker = start_worker(shards=1, extra=["--message-timeout", "4", "--max-crashes", "1"],
                          ELMO_HTTP_TIMEOUT="3")
    body = publish_first_push(hgmo, publisher, name)
    message_id = short_id(body, name)
    wait_until(lambda: DeadLetter.objects.filter(message_id__startswith=message_id).exists(),
               60, f"a dead letter for {message_id}\n{worker.log()[-3000:]}")
    return worker, name, message_id


def test_trickling_pushlog_is_dead_lettered_once_the_message_timeout_kills_the_shard(
        hgmo, publisher, start_worker):
    worker, name, message_id = trickle_until_the_shard_is_killed(hgmo, publisher,
                                                                 start_worker)

    letter = DeadLetter.objects.get(message_id__startswith=message_id)
    assert "died 1 times" in letter.reason
    assert re.search(rf"msg={message_id} busy for over 4 s; killing it", worker.log())
    assert worker.process.poll() is None
    assert not Push.objects.filter(repository__name=name).exists()


def test_message_the_supervisor_dead_letters_is_logged_with_its_outcome(
        hgmo, publisher, start_worker):
    worker, name, message_id = trickle_until_the_shard_is_killed(hgmo, publisher,
                                                                 start_worker)

    wait_until(lambda: re.search(rf"msg={message_id} dead_lettered in [0-9.]+ s: the shard "
                                 r"processing it died 1 times", worker.log()), 5,
               f"the outcome line\n{worker.log()[-3000:]}")


def test_pushlog_redirect_to_another_host_is_not_followed(hgmo, publisher, start_worker,
                                                         stranger):
    name = "lies/redirect"

    def redirect(standin, repository, query, start_response) -> Iterable[bytes]:
        start_response("302 Found", [("Location", stranger.base_url + "json-pushes"),
                                     ("Content-Length", "0")])
        return [b""]

    hgmo.lies[name] = redirect
    worker = start_worker(shards=1)
    body = publish_first_push(hgmo, publisher, name)
    needle = f"msg={short_id(body, name)} dead_lettered"

    wait_until(lambda: needle in worker.log(), 60, f"{needle}\n{worker.log()[-3000:]}")

    assert stranger.requests == []
    letter = DeadLetter.objects.get(message_id__startswith=short_id(body, name))
    assert "redirects to another host" in letter.reason
    assert letter.attempts == 1


def test_hg_redirect_to_another_host_is_not_followed(hgmo, publisher, start_worker, stranger):
    """The pushlog is honest; hgweb, which hg clones from, redirects elsewhere."""
    name = "lies/hg-redirect"

    def redirect(standin, repository, query, start_response) -> Iterable[bytes]:
        location = f"{stranger.base_url}{repository}?{urllib.parse.urlencode(query)}"
        start_response("302 Found", [("Location", location), ("Content-Length", "0")])
        return [b""]

    worker = start_worker(shards=1)
    body = publish_first_push(hgmo, publisher, name)
    hgmo.hgweb_lies[name] = redirect
    needle = f"msg={short_id(body, name)} dead_lettered"

    wait_until(lambda: needle in worker.log(), 60, f"{needle}\n{worker.log()[-3000:]}")

    assert stranger.requests == []
    assert not Push.objects.filter(repository__name=name).exists()
    letter = DeadLetter.objects.get(message_id__startswith=short_id(body, name))
    assert "redirects to another host" in letter.reason
    assert letter.attempts == 1


@pytest.fixture
def clone_bundles_advertised():
    """hgweb advertises the `clonebundles` capability of a repository holding
    .hg/clonebundles.manifest, as hg.mozilla.org's server extension makes it do."""
    from mercurial import wireprotov1server

    original = wireprotov1server._capabilities

    def capabilities(repo, proto):
        answer = original(repo, proto)
        if repo.vfs.exists(b"clonebundles.manifest"):
            answer.append(b"clonebundles")
        return answer

    wireprotov1server._capabilities = capabilities
    yield
    wireprotov1server._capabilities = original


def test_clone_bundles_on_another_host_are_not_fetched(hgmo, publisher, start_worker,
                                                       stranger, clone_bundles_advertised):
    name = "l10n-central/bundled"
    track(hgmo, name)
    pushed = hgmo.push(name, {"a.ftl": "a = A\n"})
    manifest = hgmo.repository_path(name) / ".hg" / "clonebundles.manifest"
    manifest.write_text(f"{stranger.base_url}bundles/bundled.hg BUNDLESPEC=gzip-v2\n")
    worker = start_worker(shards=1)
    body = publisher.publish_changegroup(hgmo, name, [pushed.push_id])
    needle = f"msg={short_id(body, name)} processed"

    wait_until(lambda: needle in worker.log(), 60, f"{needle}\n{worker.log()[-3000:]}")

    assert stranger.requests == []
    assert Push.objects.filter(repository__name=name).count() == 1


class SlowHeadersHost:
    """An "hg host" on loopback that accepts every request and then sends its status line
    and headers one byte every 0.3 s, for as long as the client listens."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stopped = threading.Event()
        self.requests: list[bytes] = []
        threading.Thread(target=self.serve, daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def serve(self) -> None:
        while not self.stopped.is_set():
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self.trickle, args=(connection,), daemon=True).start()

    def trickle(self, connection: socket.socket) -> None:
        with connection:
            self.requests.append(connection.recv(65536))
            head = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"y" * 60_000
            for byte in head:
                if self.stopped.wait(0.3):
                    return
                try:
                    connection.sendall(bytes([byte]))
                except OSError:
                    return

    def close(self) -> None:
        self.stopped.set()
        self.listener.close()


def test_pushlog_host_trickling_its_headers_is_given_up_within_the_http_timeout(
        hgmo, publisher, start_worker):
    slow = SlowHeadersHost()
    try:
        name = "lies/slow-headers"
        track(hgmo, name)
        worker = start_worker(shards=1, ELMO_HG_BASE_URL=slow.base_url,
                              ELMO_HTTP_TIMEOUT="2", ELMO_DRAIN_SECONDS="2")
        body = json.dumps({"payload": {"type": "changegroup.1", "data": {
            "repo_url": slow.base_url + name, "pushlog_pushes": [{"pushid": 1}]}}}).encode()
        publisher.publish_raw(name, body)
        needle = f"msg={short_id(body, name)} dead_lettered in"

        wait_until(lambda: needle in worker.log(), 40, f"{needle}\n{worker.log()[-2000:]}")

        assert slow.requests and b"/json-pushes?" in slow.requests[0]
    finally:
        slow.close()


def test_every_lie_leaves_other_repositories_of_the_shard_working(hgmo, publisher,
                                                                  start_worker):
    """Lies and honest answers interleaved on one shard: the honest repository is recorded."""
    honest_name = "l10n-central/de"
    track(hgmo, honest_name)
    for lie_name in ("truncated-json", "push-after-range", "endless-body"):
        hgmo.lies[f"lies/{lie_name}"] = LIES[lie_name][0]
        track(hgmo, f"lies/{lie_name}")
        hgmo.push(f"lies/{lie_name}", {"a.ftl": "a = A\n"})
    worker = start_worker(shards=1, ELMO_PUSHLOG_MAX_BYTES=str(MAX_BYTES))
    ids = []
    for n in range(3):
        pushed = hgmo.push(honest_name, {"a.ftl": f"a = {n}\n"})
        for lie_name in ("truncated-json", "push-after-range", "endless-body"):
            body = publisher.publish_changegroup(hgmo, f"lies/{lie_name}", [1])
            ids.append((short_id(body, f"lies/{lie_name}"), "dead_lettered"))
        body = publisher.publish_changegroup(hgmo, honest_name, [pushed.push_id])
        ids.append((short_id(body, honest_name), "processed"))

    wait_until(lambda: all(f"msg={i} {outcome}" in worker.log() for i, outcome in ids), 90,
               worker.log()[-3000:])

    assert Push.objects.filter(repository__name=honest_name).count() == 3
    assert not Push.objects.filter(repository__name__startswith="lies/").exists()
    assert worker.process.poll() is None
