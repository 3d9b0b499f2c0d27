"""A shard: a child process that processes the messages the supervisor hands
it, one at a time and in order, and reports each outcome back.

One pipe joins a shard to the supervisor. The supervisor sends
("process", delivery, earlier_attempts) or ("stop",); the shard answers
("ready",) once, then ("done", message_id, result, seconds) per message.
"""

import logging
import os
import signal
import time
from multiprocessing.connection import Connection

from shardworker.results import DEAD_LETTERED

logger = logging.getLogger(__name__)


def run_shard(index: int, pipe: Connection) -> None:
    """Entry point of a shard process (started with the spawn method)."""
    # The supervisor decides when shards stop: a Ctrl-C or a SIGTERM sent to
    # the whole process group must not cut a message in half.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from shardworker import metrics

        metrics.use_directory(os.environ["PROMETHEUS_MULTIPROC_DIR"], f"shard{index}")

    import django

    django.setup()
    Shard(index, pipe).run()


class Shard:
    """The processing loop of one shard process."""

    def __init__(self, index: int, pipe: Connection):
        from django.conf import settings

        from elmo.pushes.clones import Clones
        from elmo.pushes.hgmo import HgmoHandler
        from shardworker.processing import Processor

        self.index = index
        self.pipe = pipe
        self.stopping = False
        clones = Clones(settings.ELMO_REPOSITORY_BASE, settings.ELMO_HG_COMMAND,
                        timeout=settings.ELMO_HG_TIMEOUT,
                        lock_timeout=settings.ELMO_LOCK_TIMEOUT)
        handlers = {
            "hgmo": HgmoHandler(clones, settings.ELMO_HG_BASE_URL,
                                http_timeout=settings.ELMO_HTTP_TIMEOUT,
                                pushlog_page=settings.ELMO_PUSHLOG_PAGE,
                                pushlog_max_bytes=settings.ELMO_PUSHLOG_MAX_BYTES),
        }
        if settings.ELMO_GITHUB:
            from elmo.pushes.gitclones import GitClones
            from elmo.pushes.github import GitHubHandler

            handlers["github"] = GitHubHandler(
                GitClones(settings.ELMO_REPOSITORY_BASE, timeout=settings.ELMO_HG_TIMEOUT,
                          lock_timeout=settings.ELMO_LOCK_TIMEOUT),
                settings.ELMO_GITHUB_BASE_URL,
            )
        if settings.TASKCLUSTER_ROOT_URL:
            from elmo.l10nstats.taskcluster import TaskclusterHandler

            handlers["taskcluster"] = TaskclusterHandler(
                settings.TASKCLUSTER_ROOT_URL, settings.ELMO_TASKCLUSTER_ROUTE,
                http_timeout=settings.ELMO_HTTP_TIMEOUT,
            )
        self.processor = Processor(
            handlers,
            max_attempts=settings.ELMO_MAX_ATTEMPTS,
            retry_seconds=settings.ELMO_RETRY_SECONDS,
            retry_max_seconds=settings.ELMO_RETRY_MAX_SECONDS,
            wait=self.wait,
        )

    def run(self) -> None:
        self.pipe.send(("ready",))
        while not self.stopping:
            try:
                command = self.pipe.recv()
            except (EOFError, OSError):
                logger.warning("shard=%d lost its supervisor; exiting", self.index)
                return
            if command[0] == "stop":
                return
            _, delivery, earlier_attempts = command
            logger.debug("shard=%d repo=%s msg=%s started (pid %d)", self.index,
                         delivery.repository[:100], delivery.short_id, os.getpid())
            started = time.monotonic()
            result = self.processor.process(delivery, earlier_attempts)
            seconds = time.monotonic() - started
            level = logging.INFO if result.outcome != DEAD_LETTERED else logging.WARNING
            logger.log(level, "shard=%d repo=%s msg=%s %s in %.2f s: %s", self.index,
                        result.repository or delivery.repository[:100], delivery.short_id,
                        result.outcome, seconds, result.summary)
            try:
                self.pipe.send(("done", delivery.message_id, result, seconds))
            except (BrokenPipeError, OSError):
                logger.warning("shard=%d lost its supervisor; exiting", self.index)
                return

    def wait(self, seconds: float) -> bool:
        """Sleep between retries; True when the supervisor asked to stop."""
        if self.stopping:
            return True
        if self.pipe.poll(seconds):
            try:
                command = self.pipe.recv()
            except (EOFError, OSError):
                command = ("stop",)
            if command[0] == "stop":
                self.stopping = True
                return True
        return False
