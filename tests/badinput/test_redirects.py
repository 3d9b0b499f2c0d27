"""Clones come from the configured hosts only: a git host that redirects
elsewhere is not followed, and the message says why it was not recorded."""

import http.server
import threading
from collections.abc import Iterator

import pytest

from elmo.life.models import Push, Repository
from shardworker.models import DeadLetter
from tests.conftest import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

NAME = "mozilla-l10n/moved-away"
NULL_SHA = "0" * 40


class Redirector:
    """An HTTP host on loopback that answers every request with a 301 to `target`."""

    def __init__(self, target: str) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(301)
                self.send_header("Location", target + self.path.lstrip("/"))
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def redirector(stranger) -> Iterator[Redirector]:
    redirector = Redirector(stranger.base_url)
    yield redirector
    redirector.close()


def test_git_host_redirecting_elsewhere_is_not_followed(github, github_publisher, redirector,
                                                        stranger, start_worker, queue_suffix):
    github.create_repository(NAME)
    head = github.commit(NAME, {"a.ftl": "a = A\n"})
    Repository.objects.create(name=NAME, url=redirector.base_url + NAME,
                              kind=Repository.GIT, branch="main")
    worker = start_worker(shards=1, ELMO_GITHUB="true", ELMO_GITHUB_BASE_URL=redirector.base_url,
                          PULSE_QUEUE_GITHUB=f"{queue_suffix}-gh")

    github_publisher.publish_push(github.push_event(NAME, "main", NULL_SHA, head, created=True))

    letters = DeadLetter.objects.filter(reason__contains=f"git for {NAME}:")
    wait_until(letters.exists, 60, f"a dead letter\n{worker.log()[-3000:]}")
    letter = letters.get()
    assert "the host redirects" in letter.reason and "returned error: 301" in letter.reason
    assert letter.attempts == 1
    assert letter.repository == NAME
    assert stranger.requests == []
    assert not Push.objects.filter(repository__name=NAME).exists()
