"""Keeping messages that cannot be processed, with their reason."""

import logging

from shardworker.deliveries import Delivery, printable
from shardworker.models import DeadLetter

logger = logging.getLogger(__name__)


def keep(delivery: Delivery, reason: str, attempts: int, repository: str = "") -> DeadLetter:
    """Store the message as a dead letter; the same message again updates
    the row instead of adding one."""
    letter, created = DeadLetter.objects.update_or_create(
        message_id=delivery.message_id,
        defaults={
            "source": delivery.source,
            "exchange": printable(delivery.exchange)[:255],
            "routing_key": printable(delivery.routing_key)[:255],
            "repository": printable(repository)[:255],
            "body": delivery.body,
            "content_type": printable(delivery.content_type)[:100],
            "content_encoding": printable(delivery.content_encoding)[:100],
            "headers": _json_safe(delivery.headers),
            "reason": printable(reason),
            "attempts": attempts,
        },
    )
    logger.debug("msg=%s stored as dead letter %d (%s)", delivery.short_id, letter.id,
                 "new" if created else "again")
    return letter


def _json_safe(value: object) -> object:
    """Headers as JSON: AMQP tables may hold bytes, dates and decimals."""
    if isinstance(value, dict):
        return {printable(str(key)): _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, int | float | bool) or value is None:
        return value
    if isinstance(value, bytes):
        return printable(value.decode("utf-8", "replace"))
    return printable(str(value))
