"""End to end: a few hundred malformed deliveries through the real broker into a running
`consume-pulse`. Every one must end with a final outcome, the ones that can never be
processed as dead letters with a reason, and none may crash the supervisor, touch the
filesystem outside the clone root, or make the worker talk to a host other than the hg host.

The deliveries are drawn by Hypothesis, derandomized, so every run publishes the same ones.
Messages that could break the workers of other tests sharing the broker (everything sent to
exchange/hgpushes/v2 reaches every bound queue) go to this test's queue only.
"""

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from elmo.life.models import Forest, Locale, Push, Repository
from elmo.pushes.clones import check_repository_name
from shardworker.errors import PermanentError
from shardworker.models import DeadLetter
from tests.conftest import wait_until
from tests.helpers import short_id

pytestmark = pytest.mark.django_db(transaction=True)

TRACKED = "l10n-central/de"
UNTRACKED = "l10n-central/xx"
UNKNOWN = "l10n-central/zz"
INCOMING = "incoming"
FINAL = ("processed", "ignored", "unknown_repository", "dead_lettered")
OUTCOME_LINE = re.compile(r"msg=([0-9a-f]{12}) (\w+) in \d+\.\d+ s")
SHARD_DEATH = re.compile(r"shard=\d+ \(pid \d+\) (exited|was killed)")

CONTENT_TYPES = ["application/json", "text/plain", "application/octet-stream", "text/html",
                 "application/x-www-form-urlencoded", "application/json; charset=latin-1",
                 "image/png", "x/\u00fc"]
HOSTILE_PATHS = [
    "..", "../de", "l10n-central/..", "l10n-central/../../etc", "/etc/passwd", "//etc",
    "%2e%2e/%2e%2e/etc", "l10n-central%2fde", "l10n-central/%2e%2e", "l10n-central\\de",
    "..\\..\\etc", "l10n-central/de\x00", "l10n-central/d\u00e9", "l10n-central/\u202ede",
    "l10n-central/.hg", "l10n-central/.locks", ".locks/x", "l10n-central/-de",
    "l10n-central/" + "a" * 101, "a/b/c/d/e/f", "l10n-central//de", "~/de", "C:/de",
    "l10n-central/\uff0e\uff0e", "l10n-central/d%65", "l10n-central/de/../fr",
]
# Routing keys travel to every queue bound to the exchange: no NUL and no lone surrogates,
# which the tests at the end of this module send to their own queue only.
routing_text = st.text(
    alphabet=st.characters(exclude_categories=("Cs", "Cc")), max_size=30
).filter(lambda key: len(key.encode()) <= 200)
odd_text = st.one_of(
    st.sampled_from(["", "\u202e", "\ufeff", "\U0001f600", "\u0000", "\\u0000", "\ud7ff",
                     "\u00e9" * 50, "\r\n", "'\"", "%s%d"]),
    st.text(max_size=20),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | odd_text,
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(odd_text, children, max_size=3),
    max_leaves=8,
)


@dataclass(frozen=True)
class Bad:
    """One delivery to publish and what must become of it."""

    category: str
    routing_key: str
    body: bytes
    content_type: str
    outcomes: tuple[str, ...]
    reason: str = ""  # a pattern the dead letter's reason must match, when dead-lettered

    @property
    def short_id(self) -> str:
        return short_id(self.body, self.routing_key)


def envelope(kind: object, data: object, meta: object = None) -> dict:
    return {"payload": {"type": kind, "data": data},
            "_meta": meta if meta is not None else {"exchange": "exchange/hgpushes/v2"}}


def encode(document: object) -> bytes:
    return json.dumps(document, ensure_ascii=False).encode("utf-8", "surrogatepass")


def pushes(ids: list[int]) -> list[dict]:
    return [{"pushid": push_id, "user": "translator@example.org"} for push_id in ids]


@st.composite
def bad_deliveries(draw, base_url: str, stranger_url: str) -> Bad:
    """A malformed, hostile or merely unusual delivery, with the outcome it must get."""
    category = draw(st.sampled_from([
        "not json", "not an envelope", "another host", "hostile path", "routing mismatch",
        "missing fields", "bad push ids", "ignored type", "untracked", "tracked",
        "new repository",
    ]))
    content_type = draw(st.sampled_from(CONTENT_TYPES))
    meta = draw(st.none() | st.dictionaries(odd_text, odd_text, max_size=3))
    repository = draw(st.sampled_from([TRACKED, UNTRACKED, UNKNOWN]))
    key_for = draw(st.sampled_from(["matching", "matching", "empty"]))

    def routing(name: str) -> str:
        return name if key_for == "matching" else ""

    def made(routing_key: str, body: bytes, outcomes: tuple[str, ...], reason: str = "") -> Bad:
        return Bad(category, routing_key, body, content_type, outcomes, reason)

    any_key = st.sampled_from([TRACKED, UNTRACKED, UNKNOWN, "", "#"]) | routing_text
    dead = ("dead_lettered",)
    if category == "not json":
        body = draw(st.sampled_from([b"<", b"\xff", b"}", b"NaN?", b"'a'", b"\x00\x00"]))
        body += draw(st.binary(max_size=300))
        return made(draw(any_key), body, dead, "not JSON")
    if category == "not an envelope":
        document = draw(json_values.filter(
            lambda value: not isinstance(value, dict)
            or not isinstance(value.get("payload"), dict)))
        return made(draw(any_key), encode(document), dead, "payload")
    if category == "another host":
        url = draw(st.sampled_from([
            stranger_url, stranger_url.replace("127.0.0.1", "localhost"),
            "http://evil.example/", "https://127.0.0.2/", base_url.replace("http:", "ftp:"),
            base_url.replace("127.0.0.1", "127.0.0.1@evil.example"),
            base_url.replace("://", "://user:pw@"), base_url.rstrip("/") + "0/",
        ]))
        document = envelope(draw(st.sampled_from(["changegroup.1", "newrepo.1"])),
                            {"repo_url": url + repository, "pushlog_pushes": pushes([1])},
                            meta)
        return made(routing(repository), encode(document), dead, "repo_url")
    if category == "hostile path":
        path = draw(st.sampled_from(HOSTILE_PATHS))
        document = envelope(draw(st.sampled_from(["changegroup.1", "newrepo.1", "obsolete.1"])),
                            {"repo_url": base_url + path, "pushlog_pushes": pushes([1])}, meta)
        key = draw(st.sampled_from(["", TRACKED, path.strip("/")[:100]]))
        key = key.replace("\x00", "")
        # A leading slash is dropped ("/etc/passwd" names the repository etc/passwd, inside
        # the clone root); no such repository is tracked.
        return made(key, encode(document), ("dead_lettered", "unknown_repository", "ignored"),
                    "repository path|repo_url|does not match")
    if category == "routing mismatch":
        other = draw(st.sampled_from([
            TRACKED + "/", "L10N-central/de", "l10n-central/fr", "l10n-central", "#", "*",
            "l10n-central.de", " " + repository,
        ]) | routing_text.filter(lambda key: key not in ("", repository)))
        document = envelope("changegroup.1",
                            {"repo_url": base_url + repository, "pushlog_pushes": pushes([1])},
                            meta)
        return made(other, encode(document), dead, "does not match")
    if category == "missing fields":
        data = {"repo_url": base_url + repository, "pushlog_pushes": pushes([1])}
        breakage = draw(st.sampled_from(["no type", "no data", "no repo_url", "repo_url type",
                                         "type type", "data type", "no pushlog_pushes",
                                         "pushlog_pushes type"]))
        document = envelope("changegroup.1", data, meta)
        if breakage == "no type":
            del document["payload"]["type"]
        elif breakage == "no data":
            del document["payload"]["data"]
        elif breakage == "no repo_url":
            del data["repo_url"]
        elif breakage == "repo_url type":
            data["repo_url"] = draw(json_values.filter(lambda value: not isinstance(value, str)))
        elif breakage == "type type":
            document["payload"]["type"] = draw(
                json_values.filter(lambda value: not isinstance(value, str)))
        elif breakage == "data type":
            document["payload"]["data"] = draw(
                json_values.filter(lambda value: not isinstance(value, dict)))
        elif breakage == "no pushlog_pushes":
            del data["pushlog_pushes"]
        else:
            data["pushlog_pushes"] = draw(
                json_values.filter(lambda value: not isinstance(value, list)))
        return made(routing(repository), encode(document), dead, "payload|repo_url|pushlog")
    if category == "bad push ids":
        bad = draw(st.sampled_from([0, -1, 2**31, 2**63, 10**40, -(10**40), 1.0, 1.5, "1",
                                    True, None, [], {}]) | json_values.filter(
                                        lambda value: not isinstance(value, int)))
        entries = pushes(draw(st.lists(st.integers(1, 3), max_size=2)))
        entries.insert(draw(st.integers(0, len(entries))),
                       draw(st.sampled_from([{"pushid": bad}, {"push_id": 1}, bad])))
        document = envelope("changegroup.1",
                            {"repo_url": base_url + repository, "pushlog_pushes": entries}, meta)
        return made(routing(repository), encode(document), dead, "pushid")
    if category == "ignored type":
        kind = draw(st.sampled_from(["obsolete.1", "changegroup.2", "", "CHANGEGROUP.1",
                                     "changegroup.1\x00"]) | odd_text)
        data = {"repo_url": base_url + repository, "markers": draw(json_values),
                "pushlog_pushes": draw(json_values)}
        return made(routing(repository), encode(envelope(kind, data, meta)), ("ignored",))
    if category == "untracked":
        name = draw(st.sampled_from([UNTRACKED, UNKNOWN, "l10n-central/" + "a" * 87,
                                     "other-forest/de", "a/b/c/d/e"]))
        kind = draw(st.sampled_from(["changegroup.1", "newrepo.1"]))
        ids = draw(st.lists(st.integers(1, 2**31 - 1), max_size=4))
        document = envelope(kind, {"repo_url": base_url + name, "pushlog_pushes": pushes(ids),
                                   "extra": draw(json_values)}, meta)
        return made(routing(name), encode(document), ("unknown_repository",))
    if category == "tracked":
        ids = draw(st.lists(st.integers(1, 2**31 - 1) | st.just(1), min_size=1, max_size=4))
        document = envelope("changegroup.1",
                            {"repo_url": base_url + TRACKED, "pushlog_pushes": pushes(ids),
                             "heads": draw(json_values)}, meta)
        if max(ids) <= 1:
            return made(routing(TRACKED), encode(document), ("processed",))
        return made(routing(TRACKED), encode(document), dead, "pushlog")
    # A repository announced in a tracked forest that the hg host does not serve.
    segment = draw(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.",
                           min_size=1, max_size=110).map(lambda text: "x" + text))
    name = f"{INCOMING}/{segment}"
    document = envelope("newrepo.1", {"repo_url": base_url + name}, meta)
    return made(routing(name), encode(document), dead, ".")


def big_deliveries(base_url: str) -> list[Bad]:
    """A handful of large bodies, written out rather than drawn: they cost every queue
    bound to the exchange a few megabytes each."""
    limit = 4 * 1024 * 1024
    padding = "\u00e9\U0001f600" * ((limit - 2000) // 6)
    under = envelope("changegroup.1", {"repo_url": base_url + TRACKED,
                                       "pushlog_pushes": pushes([1])}, {"padding": padding})
    many = envelope("changegroup.1", {"repo_url": base_url + TRACKED,
                                      "pushlog_pushes": pushes([1] * 10_001)})
    return [
        Bad("huge", TRACKED, b"{" + b" " * limit + b"}", "application/json",
            ("dead_lettered",), "exceeds"),
        Bad("huge", UNTRACKED, random.Random(7).randbytes(limit + 10), "application/octet-stream",
            ("dead_lettered",), "exceeds"),
        Bad("huge", TRACKED, encode(under), "application/json", ("processed",)),
        Bad("huge", TRACKED, encode(many), "application/json", ("dead_lettered",), "too many"),
    ]


def draw_deliveries(base_url: str, stranger_url: str, count: int) -> list[Bad]:
    drawn: list[Bad] = []

    @settings(max_examples=count, database=None, derandomize=True, deadline=None,
              phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(bad_deliveries(base_url, stranger_url))
    def collect(bad: Bad) -> None:
        drawn.append(bad)

    collect()
    return drawn


def outcomes_in(log: str) -> dict[str, str]:
    return {match[1]: match[2] for match in OUTCOME_LINE.finditer(log) if match[2] in FINAL}


def listing(root: Path) -> set[Path]:
    return {path.relative_to(root) for path in root.rglob("*")}


def track(standin, name: str, forest: Forest) -> Repository:
    standin.create_repository(name)
    locale, _ = Locale.objects.get_or_create(code=name.rsplit("/", 1)[1])
    return Repository.objects.create(name=name, url=standin.base_url + name, forest=forest,
                                     locale=locale)


def test_malformed_deliveries_end_as_dead_letters_or_are_acknowledged(
        hgmo, publisher, start_worker, stranger, tmp_path):
    # l10n-central is archived: its one tracked repository is processed, but newrepo.1 in it
    # is not registered. New repositories of `incoming` are, and the hg host has none.
    central = Forest.objects.create(name="l10n-central", url=hgmo.base_url + "l10n-central",
                                    archived=True)
    Forest.objects.create(name=INCOMING, url=hgmo.base_url + INCOMING)
    track(hgmo, TRACKED, central)
    hgmo.push(TRACKED, {"browser/menu.ftl": "file = Datei\n"})
    hgmo.create_repository(UNTRACKED)
    hgmo.push(UNTRACKED, {"a.ftl": "a = A\n"})
    worker = start_worker(shards=4)
    hgmo.requests.clear()
    deliveries = [*draw_deliveries(hgmo.base_url, stranger.base_url, 320),
                  *big_deliveries(hgmo.base_url)]
    parent_before = {path.name for path in tmp_path.parent.iterdir()}
    before = listing(tmp_path)

    for bad in deliveries:
        publisher.publish_raw(bad.routing_key, bad.body, content_type=bad.content_type)

    expected = {bad.short_id: bad for bad in deliveries}
    wait_until(lambda: expected.keys() <= outcomes_in(worker.log()).keys(), 300,
               "a final outcome for every delivery: missing "
               f"{sorted(expected.keys() - outcomes_in(worker.log()).keys())[:10]}")

    log = worker.log()
    assert worker.process.poll() is None, log[-3000:]
    assert not SHARD_DEATH.search(log), SHARD_DEATH.search(log)
    outcomes = outcomes_in(log)
    wrong = [(bad.category, bad.routing_key, bad.body[:160], outcomes[bad.short_id])
             for bad in deliveries if outcomes[bad.short_id] not in bad.outcomes]
    assert not wrong, wrong[:10]
    letters = {letter.message_id[:12]: letter for letter in DeadLetter.objects.all()}
    for bad in deliveries:
        if outcomes[bad.short_id] != "dead_lettered":
            assert bad.short_id not in letters
            continue
        letter = letters[bad.short_id]
        assert letter.reason.strip() and re.search(bad.reason, letter.reason), (bad, letter.reason)
        assert bytes(letter.body) == bad.body
        assert letter.routing_key == bad.routing_key[:255]
    categories = {bad.category for bad in deliveries}
    assert len(categories) == 12, categories
    assert {outcomes[bad.short_id] for bad in deliveries} == set(FINAL)

    # Nothing was written outside the clone root, and no clone but the tracked one exists.
    grown = listing(tmp_path) - before
    clones = Path("clones")
    strays = [path for path in grown if not path.is_relative_to(clones)
              and not re.fullmatch(r"worker-\d+\.log", str(path))
              and not (path.is_relative_to("hgmo/repos") and ".hg" in path.parts)]
    assert not strays, strays
    assert {path.name for path in tmp_path.parent.iterdir()} == parent_before
    stores = {str(path.parent.parent.relative_to(tmp_path / "clones"))
              for path in (tmp_path / "clones").rglob(".hg/store")}
    assert stores == {TRACKED}
    assert not (tmp_path / "clones" / "etc").exists()

    # The hg host was asked only about repositories the worker tracks, and nothing else was.
    asked = {request[1].split("?")[0].strip("/").removesuffix("/json-pushes")
             for request in hgmo.requests}
    registered = set(Repository.objects.values_list("name", flat=True))
    assert asked <= registered, asked - registered
    for name in asked:
        assert check_repository_name(name) == name
        assert name == TRACKED or name.startswith(INCOMING + "/")
    assert stranger.requests == []
    assert Push.objects.filter(repository__name=TRACKED).count() == 1
    assert not Push.objects.exclude(repository__name=TRACKED).exists()


def test_repo_url_on_another_port_of_the_hg_host_never_reaches_it(
        hgmo, publisher, start_worker, stranger):
    """The stranger listens on the hg host's address; only the port differs."""
    central = Forest.objects.create(name="l10n-central", url=hgmo.base_url + "l10n-central")
    track(hgmo, TRACKED, central)
    hgmo.push(TRACKED, {"a.ftl": "a = A\n"})
    worker = start_worker(shards=2)
    hgmo.requests.clear()
    sent = []
    for kind in ["changegroup.1", "newrepo.1"]:
        for name in [TRACKED, "l10n-central/new"]:
            for base in [stranger.base_url, stranger.base_url.replace("127.0.0.1", "localhost")]:
                document = envelope(kind, {"repo_url": base + name,
                                           "pushlog_pushes": pushes([1])})
                publisher.publish_raw(name, encode(document))
                sent.append(short_id(encode(document), name))

    wait_until(lambda: all(f"msg={i} dead_lettered" in worker.log() for i in sent), 60,
               f"dead letters\n{worker.log()[-3000:]}")
    assert stranger.requests == []
    assert hgmo.requests == []
    letters = {letter.message_id[:12] for letter in DeadLetter.objects.all()}
    assert letters >= set(sent) and len(set(sent)) == 8
    assert not Repository.objects.filter(name="l10n-central/new").exists()


def test_new_repository_with_a_name_longer_than_the_model_holds_is_dead_lettered_at_once(
        hgmo, publisher, start_worker):
    Forest.objects.create(name=INCOMING, url=hgmo.base_url + INCOMING)
    name = f"{INCOMING}/{'a' * 100}"
    with pytest.raises(PermanentError):
        check_repository_name(name)
    worker = start_worker(shards=1)
    body = encode(envelope("newrepo.1", {"repo_url": hgmo.base_url + name}))
    publisher.publish_raw(name, body)
    needle = f"msg={short_id(body, name)} dead_lettered"

    wait_until(lambda: needle in worker.log(), 60, f"{needle}\n{worker.log()[-3000:]}")

    letter = DeadLetter.objects.get(message_id__startswith=short_id(body, name))
    assert letter.attempts == 1, letter.reason
    assert not Repository.objects.filter(name=name).exists()


def stop_quietly(worker) -> str:
    """Stop the worker within seconds even if a crash left it wedged (a supervisor that died
    of an exception waits forever for its shards to exit); returns its log. Whether it
    crashed is for the test's own assertions to say: Worker.stop raises after killing it."""
    try:
        worker.stop(timeout=5)
    except AssertionError:
        pass
    return worker.log()


def test_content_encoding_that_cannot_round_trip_leaves_the_supervisor_running(
        hgmo, start_worker, publish_to_worker):
    """py-amqp decodes a body by its content_encoding; the supervisor has to turn it back
    into bytes, and some codecs (idna) refuse to."""
    worker = start_worker(shards=1)
    body = b"abc"
    try:
        publish_to_worker(TRACKED, body, content_encoding="idna")
        needle = f"msg={short_id(body, TRACKED)} dead_lettered"
        wait_until(lambda: needle in worker.log() or worker.process.poll() is not None
                   or "Traceback" in worker.log(), 30, needle)
        assert worker.process.poll() is None and needle in worker.log(), worker.log()[-3000:]
        letter = DeadLetter.objects.get(message_id__startswith=short_id(body, TRACKED))
        assert bytes(letter.body) == body and letter.content_encoding == "idna"
    finally:
        stop_quietly(worker)


@pytest.mark.parametrize("routing_key", [TRACKED + "\ud800", TRACKED + "\udcff"],
                         ids=["high-surrogate", "escaped-byte"])
def test_routing_key_with_a_lone_surrogate_leaves_the_supervisor_running(
        hgmo, start_worker, publish_to_worker, routing_key):
    """py-amqp decodes routing keys and header strings with 'surrogatepass', so a key that
    is not valid UTF-8 reaches the worker as a string with a lone surrogate."""
    worker = start_worker(shards=2)
    body = b"{}"
    try:
        publish_to_worker(routing_key, body)
        publish_to_worker(TRACKED, b"after the surrogate")
        needles = [f"msg={short_id(body, routing_key)} dead_lettered",
                   f"msg={short_id(b'after the surrogate', TRACKED)} dead_lettered"]
        wait_until(lambda: all(needle in worker.log() for needle in needles)
                   or worker.process.poll() is not None or "Traceback" in worker.log(),
                   30, str(needles))
        assert worker.process.poll() is None, worker.log()[-3000:]
        assert all(needle in worker.log() for needle in needles), worker.log()[-3000:]
        assert "Traceback" not in worker.log()
        letter = DeadLetter.objects.get(message_id__startswith=short_id(body, routing_key))
        assert letter.routing_key.startswith(TRACKED) and "payload" in letter.reason
    finally:
        stop_quietly(worker)


@pytest.mark.parametrize("routing_key, headers", [
    (TRACKED + "\x00", {}),
    (TRACKED, {"x-note": "a\x00b"}),
], ids=["nul-routing-key", "nul-header"])
def test_nul_in_the_envelope_ends_as_a_dead_letter(hgmo, start_worker, publish_to_worker,
                                                   routing_key, headers):
    worker = start_worker(shards=1)
    body = b"not json"
    try:
        publish_to_worker(routing_key, body, headers=headers)
        needle = f"msg={short_id(body, routing_key)} dead_lettered"
        wait_until(lambda: needle in worker.log(), 30, f"{needle}\n{worker.log()[-3000:]}")
        assert worker.process.poll() is None
        assert not SHARD_DEATH.search(worker.log())
        letter = DeadLetter.objects.get(message_id__startswith=short_id(body, routing_key))
        assert "not JSON" in letter.reason
    finally:
        stop_quietly(worker)


def test_parse_message_rejects_what_the_generator_calls_dead():
    """The generator's expectations, checked in process, so that an end-to-end failure
    points at the worker rather than at the generator."""
    from elmo.pushes.hgmo import parse_message
    from shardworker.deliveries import HGMO_EXCHANGE, Delivery

    base_url, stranger_url = "http://127.0.0.1:8000/", "http://127.0.0.1:9000/"
    for bad in draw_deliveries(base_url, stranger_url, 400):
        delivery = Delivery(HGMO_EXCHANGE, bad.routing_key, bad.body)
        try:
            parse_message(delivery, base_url)
        except PermanentError as error:
            assert "dead_lettered" in bad.outcomes, (bad, error)
            assert re.search(bad.reason, str(error)), (bad, error)
            continue
        assert bad.outcomes != ("dead_lettered",) or bad.category in ("tracked", "new repository")
        assert bad.category in ("hostile path", "ignored type", "untracked", "tracked",
                                "new repository"), bad
