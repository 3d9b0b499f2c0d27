"""Property tests of the checks that stand between a message (or a pushlog answer) and the
filesystem, the network and the database: `parse_message`, `parse_page` and
`Clones.path_for`. Whatever they are given, they answer with a value that keeps every
promise, or with a PermanentError that says what is wrong; never with another exception.

Examples are derandomized, so every run tries the same few thousand inputs; no example
database is written.
"""

import json
import math
import string
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from elmo.pushes.clones import Clones, check_repository_name
from elmo.pushes.hgmo import MAX_PUSHLOG_PUSHES, HgMessage, parse_message
from elmo.pushes.pushlog import NODE, PushlogPage, parse_page
from shardworker.deliveries import HGMO_EXCHANGE, Delivery
from shardworker.errors import PermanentError

BASE_URLS = ["http://127.0.0.1:8000/", "https://hg.mozilla.org/", "https://hg.example.org/hg/"]
PUSHLOG_URL = "http://127.0.0.1:8000/l10n-central/de/json-pushes?version=2&full=1"

PROPERTY = settings(max_examples=1500, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FEWER = settings(PROPERTY, max_examples=300)

# Pieces of paths that a hostile or broken publisher might send.
HOSTILE_SEGMENTS = [
    "..", ".", "", "%2e%2e", "%2E%2E", "%2f", "%2F", "..%2f", "%2e%2e%2f", "a\\..\\b", "\\",
    "\x00", "%00", "~", "~root", ".hg", ".locks", "a" * 100, "a" * 101, "ü", "de\u200b",
    "\u202e", "\ufeff", "\ud800", "C:", "//", "\u3002\u3002", "\uff0e\uff0e", "\u2025",
    "a b", "a\nb", "a\tb", ";", "?x", "#f", "@", "\u0130", "ǅ", "١٢", "l10n-central", "de",
    "fr", "en-US", "x" * 5000,
]
HOSTS = [
    "{host}", "{host}.", "localhost", "127.0.0.2", "[::1]", "evil.example", "{host}@evil.example",
    "evil.example@{host}", "127.1", "0x7f000001", "2130706433", "\uff11\uff12\uff17.0.0.1",
    "{HOST}", "{host}%2f", "",
]
PORTS = ["{port}", "", ":", ":0", ":1", ":65536", ":99999", ":+80", ":-1", ":80", ":443",
         ":8000", ":0008000", ":\uff18\uff10"]
SCHEMES = ["http", "https", "HTTP", "ftp", "file", "javascript", "hg", "ssh", ""]
SUFFIXES = ["", "/", "//", "?", "?x=1", "#", "#x", "/json-pushes", "\n", " ", "\x00"]

json_scalars = (
    st.none() | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=10,
)
# For values nested inside larger documents, where size costs time and adds nothing.
small_json = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=2)
    | st.dictionaries(st.text(max_size=4), children, max_size=2),
    max_leaves=4,
)
odd_text = st.one_of(st.sampled_from(HOSTILE_SEGMENTS), st.text(max_size=30))
safe_segments = st.builds(
    str.__add__,
    st.sampled_from(string.ascii_letters + string.digits),
    st.text(alphabet=string.ascii_letters + string.digits + "._-", max_size=12),
)


@st.composite
def repository_paths(draw) -> str:
    """Mostly valid-looking paths with hostile segments mixed in."""
    if not draw(st.booleans()):
        return "/".join(draw(st.lists(safe_segments, min_size=1, max_size=5)))
    segments = draw(st.lists(
        st.one_of(st.sampled_from(HOSTILE_SEGMENTS), safe_segments, st.text(max_size=8)),
        min_size=0, max_size=7,
    ))
    leading = draw(st.sampled_from(["", "/", "//", "\\", "./", "../"]))
    return leading + "/".join(segments)


@st.composite
def repo_urls(draw, base_url: str) -> object:
    """A repo_url as a message might carry it: often right, often subtly not."""
    base = urlsplit(base_url)
    # Hypothesis favours small choices; the smallest here is a URL on the right host.
    kind = draw(st.integers(0, 9))
    if kind <= 3:
        return base_url + draw(repository_paths())
    if kind == 4:
        return draw(small_json)
    if kind == 5:
        return draw(st.text(max_size=60))
    fill = {"host": base.hostname, "HOST": base.hostname.upper(),
            "port": f":{base.port}" if base.port else ""}
    scheme = draw(st.sampled_from(SCHEMES))
    userinfo = draw(st.sampled_from(["", "", "", "user@", ":@", "user:pw@", "@"]))
    host = draw(st.sampled_from(HOSTS)).format(**fill)
    port = draw(st.sampled_from(PORTS)).format(**fill)
    prefix = draw(st.sampled_from([base.path, "/", base.path + "/", "/other" + base.path]))
    suffix = draw(st.sampled_from(SUFFIXES))
    return f"{scheme}://{userinfo}{host}{port}{prefix}{draw(repository_paths())}{suffix}"


def push_entries():
    """pushlog_pushes items: mostly dicts with a pushid, some of any odd value or type."""
    pushid = st.one_of(
        st.integers(min_value=1, max_value=2**31 - 1),
        st.sampled_from([0, -1, 2**31, 2**63, 10**30, -(10**30), True, False, None, 1.0, 1.5,
                         "1", "", [], {}, float("nan"), float("inf")]),
        small_json,
    )
    return st.one_of(
        st.fixed_dictionaries({"pushid": pushid}, optional={
            "user": odd_text, "time": small_json, "push_json_url": odd_text}),
        small_json,
    )


@st.composite
def message_documents(draw, base_url: str) -> tuple[object, str]:
    """A body document and the routing key it travels with."""
    repo_url = draw(repo_urls(base_url))
    kind = draw(st.integers(0, 9).flatmap(lambda n: (
        st.sampled_from(["changegroup.1", "newrepo.1", "obsolete.1"]) if n < 7 else
        st.sampled_from(["changegroup.2", "", "CHANGEGROUP.1", "changegroup.1\x00"]) if n < 9
        else small_json)))
    valid_pushes = st.lists(st.fixed_dictionaries({"pushid": st.integers(1, 2**31 - 1)}),
                            max_size=4)
    pushes = draw(st.one_of(
        st.lists(push_entries(), max_size=6), valid_pushes, valid_pushes,
        small_json,
        st.integers(MAX_PUSHLOG_PUSHES - 1, MAX_PUSHLOG_PUSHES + 1).map(
            lambda n: [{"pushid": 1}] * n),
    ))
    data = {"repo_url": repo_url, "pushlog_pushes": pushes, "heads": ["0" * 40]}
    dropped = st.lists(st.sampled_from(["repo_url", "pushlog_pushes"]), max_size=2)
    for key in draw(st.just([]) | dropped):
        data.pop(key, None)
    payload = {"type": kind, "data": data}
    document: object = {"payload": payload, "_meta": {"routing_key": draw(odd_text)}}
    mutation = draw(st.integers(0, 19))
    if mutation == 1:
        document = {"payload": draw(json_values)}
    elif mutation == 2:
        payload["data"] = draw(json_values)
    elif mutation == 3:
        del payload["type"]
    elif mutation == 4:
        document = [document]
    elif mutation == 5:
        document = draw(json_values)
    path = urlsplit(repo_url).path if isinstance(repo_url, str) else ""
    base_path = urlsplit(base_url).path
    matching = path[len(base_path):].strip("/") if path.startswith(base_path) else path
    routing_key = draw(st.one_of(
        st.just(matching), st.just(matching), st.just(matching), st.just(""),
        st.sampled_from(["l10n-central/de", "l10n-central/de/", "L10N-central/de", "#", "*"]),
        odd_text,
    ))
    return document, routing_key


def encode(document: object) -> bytes:
    return json.dumps(document, ensure_ascii=False).encode("utf-8", "surrogatepass")


def check_message(delivery: Delivery, base_url: str, root: Path) -> None:
    """The contract of parse_message, checked for one delivery."""
    try:
        message = parse_message(delivery, base_url)
    except PermanentError as error:
        assert str(error).strip(), "a PermanentError must say what is wrong"
        event("rejected")
        return
    event(f"accepted {message.kind[:20]!r}")
    assert isinstance(message, HgMessage)
    assert isinstance(message.kind, str)
    assert check_repository_name(message.repository) == message.repository
    assert not delivery.routing_key or delivery.routing_key == message.repository
    clone = Clones(root).path_for(message.repository)
    assert clone.is_relative_to(root.resolve()) and clone != root.resolve()
    # The worker builds every URL from the base and the checked name.
    base, built = urlsplit(base_url), urlsplit(base_url + message.repository)
    assert (built.scheme, built.hostname, built.port) == (base.scheme, base.hostname, base.port)
    assert built.path == base.path + message.repository
    for push_id in message.push_ids:
        assert type(push_id) is int and 0 < push_id < 2**31
    assert message.kind == "changegroup.1" or message.push_ids == ()


@pytest.fixture(scope="module")
def clone_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("clone-root") / "clones"


@PROPERTY
@given(body=st.binary(max_size=300), routing_key=odd_text, base_url=st.sampled_from(BASE_URLS))
@example(body=b"", routing_key="", base_url=BASE_URLS[0])
@example(body=b"\xff\xfe{}", routing_key="l10n-central/de", base_url=BASE_URLS[0])
@example(body=b"null", routing_key="", base_url=BASE_URLS[0])
def test_arbitrary_bytes_are_rejected_or_parsed_safely(body, routing_key, base_url,
                                                       clone_root):
    check_message(Delivery(HGMO_EXCHANGE, routing_key, body), base_url, clone_root)


@settings(PROPERTY, max_examples=1000)
@given(document=json_values, routing_key=odd_text, base_url=st.sampled_from(BASE_URLS))
def test_arbitrary_json_is_rejected_or_parsed_safely(document, routing_key, base_url,
                                                     clone_root):
    body = encode(document)
    check_message(Delivery(HGMO_EXCHANGE, routing_key, body), base_url, clone_root)


@settings(PROPERTY, max_examples=800)
@given(data=st.data(), base_url=st.sampled_from(BASE_URLS))
@example(data=None, base_url=BASE_URLS[0])
def test_mutated_messages_are_rejected_or_name_a_safe_repository(data, base_url, clone_root):
    if data is None:
        document = {"payload": {"type": "changegroup.1", "data": {
            "repo_url": BASE_URLS[0] + "l10n-central/de", "pushlog_pushes": [{"pushid": 3}]}}}
        routing_key = "l10n-central/de"
    else:
        document, routing_key = data.draw(message_documents(base_url))
    check_message(Delivery(HGMO_EXCHANGE, routing_key, encode(document)), base_url, clone_root)


@FEWER
@given(url=st.sampled_from(BASE_URLS).flatmap(repo_urls))
def test_repo_url_off_the_hg_host_never_becomes_a_repository(url):
    """Whatever parse_message accepts names the configured host, port and path prefix."""
    for base_url in BASE_URLS:
        document = {"payload": {"type": "newrepo.1", "data": {"repo_url": url}}}
        delivery = Delivery(HGMO_EXCHANGE, "", encode(document))
        try:
            message = parse_message(delivery, base_url)
        except PermanentError as error:
            assert str(error)
            continue
        parts, base = urlsplit(url), urlsplit(base_url)
        assert parts.hostname == base.hostname and parts.port == base.port
        assert parts.path.startswith(base.path)
        assert parts.path[len(base.path):].strip("/") == message.repository


def test_routing_key_that_disagrees_with_repo_url_is_a_permanent_error():
    document = {"payload": {"type": "changegroup.1", "data": {
        "repo_url": BASE_URLS[0] + "l10n-central/de", "pushlog_pushes": [{"pushid": 1}]}}}
    for routing_key in ["l10n-central/fr", "l10n-central/de/", "l10n-central/DE", "#",
                        "l10n-central/de\x00", "l10n-central/./de"]:
        with pytest.raises(PermanentError, match="does not match"):
            parse_message(Delivery(HGMO_EXCHANGE, routing_key, encode(document)), BASE_URLS[0])


def test_huge_bodies_and_push_lists_are_permanent_errors():
    too_big = b"{" + b" " * (4 * 1024 * 1024) + b"}"
    with pytest.raises(PermanentError, match="exceeds"):
        parse_message(Delivery(HGMO_EXCHANGE, "", too_big), BASE_URLS[0])
    document = {"payload": {"type": "changegroup.1", "data": {
        "repo_url": BASE_URLS[0] + "a/b",
        "pushlog_pushes": [{"pushid": n + 1} for n in range(MAX_PUSHLOG_PUSHES + 1)]}}}
    with pytest.raises(PermanentError, match="too many"):
        parse_message(Delivery(HGMO_EXCHANGE, "a/b", encode(document)), BASE_URLS[0])


@pytest.mark.parametrize("body", [b"[" * 100_000, b'{"a":' * 100_000],
                         ids=["arrays", "objects"])
def test_deeply_nested_body_is_a_permanent_error(body):
    with pytest.raises(PermanentError, match="not JSON"):
        parse_message(Delivery(HGMO_EXCHANGE, "l10n-central/de", body), BASE_URLS[0])


# parse_page

def node() -> st.SearchStrategy[str]:
    return st.binary(min_size=20, max_size=20).map(bytes.hex)


def good_changesets() -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries({
        "node": node(), "author": odd_text, "desc": odd_text,
        "branch": st.sampled_from(["default", "", "stable"]),
        "parents": st.lists(node(), max_size=2), "files": st.lists(odd_text, max_size=3),
    })


def changesets() -> st.SearchStrategy[object]:
    node_like = st.one_of(node(), st.sampled_from(["0" * 39, "0" * 41, "G" * 40, "A" * 40,
                                                   "0" * 40 + "\n", ""]), small_json)

    @st.composite
    def mutated(draw) -> object:
        changeset = dict(draw(good_changesets()))
        field = draw(st.sampled_from(["node", "author", "desc", "branch", "parents", "files"]))
        choice = draw(st.integers(0, 2))
        if choice == 0:
            del changeset[field]
        elif field == "node":
            changeset[field] = draw(node_like)
        elif field == "parents":
            changeset[field] = draw(st.one_of(st.lists(node_like, max_size=3), small_json))
        else:
            changeset[field] = draw(small_json)
        return changeset

    return st.one_of(good_changesets(), mutated(), small_json)


push_keys = st.one_of(
    st.integers(-5, 40).map(str),
    st.sampled_from(["", "01", "+1", "-1", " 1", "1 ", "1.0", "1e3", "0x1", "\u0661",
                     "99999999999999999999", str(2**31)]),
    st.sampled_from(["\u00b2", "\u2460", "1\u00b9", "\uff11", "9" * 5000]),
    st.text(max_size=4),
)
dates = st.one_of(st.integers(0, 2**40 - 1), st.floats(0, 2**40),
                  st.sampled_from([-1, 2**40, 10**30, True, None, "1", float("nan"),
                                   float("inf"), -0.0]))
good_pushes = st.fixed_dictionaries({
    "user": odd_text, "date": st.integers(0, 2**40 - 1) | st.floats(0, 2**40 - 1),
    "changesets": st.lists(good_changesets(), max_size=3),
})


def pushes() -> st.SearchStrategy[object]:
    odd = st.fixed_dictionaries({
        "user": odd_text, "date": dates, "changesets": st.lists(changesets(), max_size=3),
    })
    return st.one_of(odd, small_json,
                     good_pushes.map(lambda push: {**push, "changesets": ["0" * 40]}),
                     good_pushes.map(lambda push: {k: v for k, v in push.items() if k != "user"}))


ids = st.one_of(st.integers(-3, 60), st.sampled_from([-(2**40), 2**31, 2**63]))


@st.composite
def pushlog_answers(draw) -> tuple[object, int, int | None]:
    """(document, start_id, end_id): an answer to a request for the pushes after start_id up
    to end_id. The smallest choices make an honest answer; the others lie in one or more
    ways: ids outside the range, wrong types, missing fields, a different shape."""
    start_id = draw(st.integers(0, 30) | ids)
    end_id = draw(st.none() | st.integers(start_id, start_id + 6) | ids)
    top = end_id if end_id is not None else start_id + 4
    honest_ids = st.integers(start_id + 1, max(start_id + 1, top)).map(str)
    lie = draw(st.integers(0, 9))
    if lie == 9:
        return draw(json_values), start_id, end_id
    keys = honest_ids if lie < 4 else honest_ids | push_keys
    values = good_pushes if lie < 3 else good_pushes | pushes()
    last = draw(st.integers(max(top, 0), max(top, 0) + 3) if lie < 6
                else st.integers(-1, 70) | small_json)
    document = {"lastpushid": last,
                "pushes": draw(st.dictionaries(keys, values, max_size=5) if lie < 8
                               else small_json)}
    if lie == 7:
        del document[draw(st.sampled_from(["lastpushid", "pushes"]))]
    return document, start_id, end_id


def roundtrip(document: object) -> object:
    """What json.loads makes of it: keys are always text, as in a real answer."""
    return json.loads(json.dumps(document))


def check_page(document: object, start_id: int, end_id: int | None) -> None:
    try:
        page = parse_page(document, PUSHLOG_URL, start_id, end_id)
    except PermanentError as error:
        assert str(error).strip()
        event("rejected")
        return
    event(f"accepted with {min(len(page.pushes), 2)}+ pushes")
    assert isinstance(page, PushlogPage)
    assert type(page.last_push_id) is int and 0 <= page.last_push_id < 2**31
    push_ids = [push.push_id for push in page.pushes]
    assert push_ids == sorted(push_ids)
    for push in page.pushes:
        assert start_id < push.push_id <= page.last_push_id
        assert end_id is None or push.push_id <= end_id
        assert isinstance(push.user, str) and type(push.date) is int and push.date >= 0
        for changeset in push.changesets:
            assert NODE.fullmatch(changeset.node)
            assert all(NODE.fullmatch(parent) for parent in changeset.parents)
            assert changeset.branch and isinstance(changeset.branch, str)
            assert all(isinstance(item, str) for item in
                       (changeset.author, changeset.desc, *changeset.files))


@settings(PROPERTY, max_examples=600)
@given(answer=pushlog_answers())
@example(answer=({"lastpushid": 2, "pushes": {}}, 0, None))
@example(answer=({"lastpushid": 2, "pushes": {
    "2": {"user": "u", "date": math.inf, "changesets": []}}}, 0, None))
def test_pushlog_answers_are_rejected_or_stay_in_range(answer):
    document, start_id, end_id = answer
    check_page(roundtrip(document), start_id, end_id)


@st.composite
def garbled_answers(draw) -> tuple[str, int, int | None]:
    """An answer's JSON text with a few characters deleted, replaced or inserted."""
    document, start_id, end_id = draw(pushlog_answers())
    text = json.dumps(document)
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(text)))
        new = draw(st.sampled_from('{}[]",:0123456789-.eE \\ntfu') | st.characters())
        cut = draw(st.integers(0, 2))
        text = text[:at] + new + text[at + cut:]
    return text, start_id, end_id


@FEWER
@given(answer=garbled_answers())
def test_garbled_pushlog_text_is_rejected_or_parsed_within_range(answer):
    text, start_id, end_id = answer
    try:
        document = json.loads(text)
    except ValueError:
        event("not JSON")
        return
    check_page(document, start_id, end_id)


@pytest.mark.parametrize("key", ["\u00b2", "\u2460", "1\u00b9", "9" * 5000],
                         ids=["superscript", "circled", "mixed", "too-long"])
def test_push_key_that_looks_like_digits_is_a_permanent_error(key):
    push = {"user": "u", "date": 1, "changesets": []}
    with pytest.raises(PermanentError, match="malformed push"):
        parse_page({"lastpushid": 3, "pushes": {key: push}}, PUSHLOG_URL, 0, None)


# Clones.path_for

names = st.one_of(
    repository_paths(),
    st.text(max_size=40),
    st.lists(st.sampled_from(HOSTILE_SEGMENTS + ["a", "b", "l10n-central"]), max_size=8)
    .map("/".join),
)


@PROPERTY
@given(name=names)
@example(name="/etc/passwd")
@example(name="l10n-central/../../etc")
@example(name="a/" * 5 + "b")
def test_clone_path_is_inside_the_root_or_a_permanent_error(name, clone_root):
    clones = Clones(clone_root)
    try:
        path = clones.path_for(name)
    except PermanentError as error:
        assert str(error).strip()
        event("rejected")
        return
    event("accepted")
    assert check_repository_name(name) == name
    assert path.is_relative_to(clones.root) and path != clones.root
    assert path == clones.root.joinpath(*name.split("/"))
    lock = clones.lock_path_for(name)
    assert lock.parent == clones.root / ".locks" and "/" not in lock.name


def test_symlink_inside_the_root_cannot_lead_a_clone_outside(tmp_path):
    root = tmp_path / "clones"
    root.mkdir()
    (root / "l10n-central").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (root / "self").symlink_to(root, target_is_directory=True)
    clones = Clones(root)
    with pytest.raises(PermanentError, match="leave the clone root"):
        clones.path_for("l10n-central/de")
    # A link back to the root itself resolves to the root, which is not a clone.
    with pytest.raises(PermanentError, match="leave the clone root"):
        clones.path_for("self")
