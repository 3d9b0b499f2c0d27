"""The retry policy around a handler: what is retried, for how long, and
when a message becomes a dead letter. The shard calls `Processor.process`
once per message; the result says whether to acknowledge."""

import logging
from collections.abc import Callable

from django.db import close_old_connections, connections
from django.db.utils import InterfaceError, OperationalError

from shardworker import deadletters
from shardworker.deliveries import Delivery
from shardworker.errors import PermanentError, TransientError
from shardworker.results import DEAD_LETTERED, REQUEUED, Result

logger = logging.getLogger(__name__)

Handler = Callable[[Delivery], Result]
# Sleeps for the given seconds; answers True when the shard must stop instead.
Wait = Callable[[float], bool]


class Processor:
    """Runs a message through its source's handler.

    A PermanentError dead-letters at once. A TransientError (a host down,
    a lock held too long) and an unexpected exception are retried with
    exponential backoff, up to `max_attempts`, then dead-lettered. A
    database that cannot be reached is waited for without limit: nothing can
    be recorded, not even a dead letter, and the message stays unacknowledged.
    """

    def __init__(self, handlers: dict[str, Handler], *, max_attempts: int,
                 retry_seconds: float, retry_max_seconds: float, wait: Wait):
        self.handlers = handlers
        self.max_attempts = max_attempts
        self.retry_seconds = retry_seconds
        self.retry_max_seconds = retry_max_seconds
        self.wait = wait

    def backoff(self, attempt: int) -> float:
        return min(self.retry_seconds * 2 ** (attempt - 1), self.retry_max_seconds)

    def process(self, delivery: Delivery, earlier_attempts: int = 0) -> Result:
        attempt = earlier_attempts
        database_failures = 0
        while True:
            attempt += 1
            close_old_connections()
            try:
                return self.handle(delivery)
            except (OperationalError, InterfaceError) as error:
                attempt -= 1
                database_failures += 1
                reason = f"database unavailable: {error}".strip()
                delay = self.backoff(database_failures)
                logger.error("repo=%s msg=%s %s; retrying in %.1f s", delivery.repository,
                             delivery.short_id, reason.splitlines()[0], delay)
                connections.close_all()
                if self.wait(delay):
                    return Result(REQUEUED, delivery.repository, reason)
                continue
            except PermanentError as error:
                return self.dead_letter(delivery, str(error), attempt)
            except TransientError as error:
                reason = str(error)
            except Exception as error:
                logger.exception("repo=%s msg=%s unexpected failure", delivery.repository,
                                 delivery.short_id)
                reason = f"unexpected {type(error).__name__}: {error}"
            if attempt >= self.max_attempts:
                return self.dead_letter(
                    delivery, f"gave up after {attempt} attempts: {reason}", attempt
                )
            delay = self.backoff(attempt)
            logger.warning("repo=%s msg=%s attempt %d failed: %s; retrying in %.1f s",
                           delivery.repository, delivery.short_id, attempt, reason, delay)
            if self.wait(delay):
                return Result(REQUEUED, delivery.repository, reason)

    def handle(self, delivery: Delivery) -> Result:
        handler = self.handlers.get(delivery.source)
        if handler is None:
            raise PermanentError(f"no handler for messages from {delivery.exchange!r:.120}")
        return handler(delivery)

    def dead_letter(self, delivery: Delivery, reason: str, attempts: int) -> Result:
        """Keep the message; if the database is down, wait for it."""
        failures = 0
        while True:
            try:
                deadletters.keep(delivery, reason, attempts, delivery.repository)
                return Result(DEAD_LETTERED, delivery.repository, reason)
            except (OperationalError, InterfaceError) as error:
                failures += 1
                logger.error("msg=%s cannot store dead letter: %s", delivery.short_id,
                             str(error).strip().splitlines()[0] if str(error) else error)
                connections.close_all()
                if self.wait(self.backoff(failures)):
                    return Result(REQUEUED, delivery.repository, reason)
