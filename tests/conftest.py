"""Fixtures that run the real thing: the worker as a subprocess, a stand-in
for hg.mozilla.org over HTTP, the local RabbitMQ and the test database."""

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import kombu
import pytest
from django.db import connection

from standins.github import GitHubPublisher, GitHubStandIn
from standins.hgmo import HgmoPublisher, HgmoStandIn
from standins.taskcluster import TaskclusterPublisher, TaskclusterStandIn

PROJECT = Path(__file__).resolve().parent.parent
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"


def database_url() -> str:
    """The URL of the test database, for worker subprocesses."""
    config = connection.settings_dict
    if config["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{config['NAME']}"
    user = config.get("USER") or ""
    password = f":{config['PASSWORD']}" if config.get("PASSWORD") else ""
    return (f"postgres://{user}{password}@{config.get('HOST') or '127.0.0.1'}:"
            f"{config.get('PORT') or 5432}/{config['NAME']}")


def wait_until(condition: Callable[[], object], timeout: float = 60.0,
               what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture
def db_rows(transactional_db):
    """A committed database that worker subprocesses can see, with the rows
    the migrations create (flushing between tests removes them)."""
    from elmo.life.models import NULL_REVISION, Branch, Changeset

    Branch.objects.get_or_create(id=1, defaults={"name": "default"})
    Changeset.objects.get_or_create(revision=NULL_REVISION, defaults={"user": ""})
    yield
    connection.close()


@pytest.fixture
def hgmo(tmp_path: Path) -> Iterator[HgmoStandIn]:
    with HgmoStandIn(tmp_path / "hgmo") as standin:
        yield standin


@pytest.fixture
def queue_suffix() -> Iterator[str]:
    """A queue of this test's own, deleted afterwards."""
    suffix = f"test-{uuid.uuid4().hex[:10]}"
    yield suffix
    with kombu.Connection(AMQP_URL) as broker:
        for name in (f"queue/guest/{suffix}", f"queue/guest/{suffix}-tc",
                     f"queue/guest/{suffix}-gh"):
            try:
                broker.channel().queue_delete(name)
            except Exception:
                pass


@pytest.fixture
def publisher() -> Iterator[HgmoPublisher]:
    with HgmoPublisher(AMQP_URL) as publisher:
        yield publisher


@pytest.fixture
def github(tmp_path: Path) -> Iterator[GitHubStandIn]:
    with GitHubStandIn(tmp_path / "github") as standin:
        yield standin


@pytest.fixture
def github_publisher() -> Iterator[GitHubPublisher]:
    """Publishes GitHub pushes; creating it declares both exchanges."""
    with GitHubPublisher(AMQP_URL) as publisher:
        yield publisher


@pytest.fixture
def taskcluster(tmp_path: Path) -> Iterator[TaskclusterStandIn]:
    with TaskclusterStandIn(tmp_path / "taskcluster") as standin:
        yield standin


@pytest.fixture
def task_publisher() -> Iterator[TaskclusterPublisher]:
    """Publishes task resolutions; creating it declares the queue's exchanges."""
    with TaskclusterPublisher(AMQP_URL) as publisher:
        yield publisher


class Worker:
    """`./manage.py consume-pulse` running as a subprocess."""

    def __init__(self, environment: dict[str, str], log_path: Path, shards: int,
                 extra: list[str]):
        self.environment = environment
        self.log_path = log_path
        self.shards = shards
        self.extra = extra
        self.process: subprocess.Popen | None = None

    def start(self) -> "Worker":
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, str(PROJECT / "manage.py"), "consume-pulse",
             "--shards", str(self.shards), *self.extra],
            env=self.environment, stdout=log, stderr=subprocess.STDOUT, cwd=PROJECT,
        )
        log.close()
        wait_until(lambda: "consuming" in self.log() or self.process.poll() is not None,
                   timeout=60, what="the worker to consume")
        assert self.process.poll() is None, self.log()
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 60.0) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(
                f"worker did not stop within {timeout} s\n{self.log()}"
            ) from None


@pytest.fixture
def worker_environment(tmp_path: Path, hgmo: HgmoStandIn, queue_suffix: str,
                       db_rows) -> dict[str, str]:
    environment = {
        key: value for key, value in os.environ.items()
        if not key.startswith(("PULSE_", "ELMO_", "DATABASE_URL"))
    }
    environment.update(
        DJANGO_SETTINGS_MODULE="elmo.settings",
        DATABASE_URL=database_url(),
        PULSE_URL=AMQP_URL,
        PULSE_QUEUE_HGMO=queue_suffix,
        ELMO_HG_BASE_URL=hgmo.base_url,
        ELMO_REPOSITORY_BASE=str(tmp_path / "clones"),
        ELMO_VAR_DIR=str(tmp_path / "var"),
        ELMO_RETRY_SECONDS="0.2",
        ELMO_RETRY_MAX_SECONDS="1",
        ELMO_MAX_ATTEMPTS="3",
        ELMO_LOG_LEVEL="DEBUG",
        ELMO_METRICS_PORT="0",
    )
    return environment


@pytest.fixture
def start_worker(worker_environment: dict[str, str], tmp_path: Path):
    """Start workers on the test's queue; all are stopped after the test."""
    workers: list[Worker] = []

    def start(shards: int = 4, extra: list[str] | None = None, **overrides: str) -> Worker:
        environment = {**worker_environment, **overrides}
        log_path = tmp_path / f"worker-{len(workers)}.log"
        worker = Worker(environment, log_path, shards, extra or [])
        workers.append(worker)
        return worker.start()

    yield start
    for worker in workers:
        worker.stop()


FIGURES: list[str] = []


def pytest_runtest_logreport(report) -> None:
    """Collect the `fault: ...` figures the fault suite prints."""
    if report.when == "call":
        FIGURES.extend(line for line in report.capstdout.splitlines()
                       if line.startswith("fault: "))


def pytest_terminal_summary(terminalreporter) -> None:
    if FIGURES:
        terminalreporter.section("fault figures")
        for line in FIGURES:
            terminalreporter.write_line(line)
