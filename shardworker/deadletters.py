"""Keeping messages that cannot be processed, with their reason."""

import logging

from shardworker.deliveries import Delivery
from shardworker.models import DeadLetter

logger = logging.getLogger(__name__)


def keep(delivery: Delivery, reason: str, attempts: int, repository: str = "") -> DeadLetter:
    """Store the message as a dead letter; the same message again updates
    the row instead of adding one."""
    letter, created = DeadLetter.objects.update_or_create(
        message_id=delivery.message_id,
        defaults={
            "source": delivery.source,
            "exchange": delivery.exchange[:255],
            "routing_key": delivery.routing_key[:255],
            "repository": repository[:255],
            "body": delivery.body,
            "content_type": delivery.content_type[:100],
            "content_encoding": delivery.content_encoding[:100],
            "headers": _json_safe(delivery.headers),
            "reason": reason,
            "attempts": attempts,
        },
    )
    logger.debug("msg=%s stored as dead letter %d (%s)", delivery.short_id, letter.id,
                 "new" if created else "again")
    return letter


def _json_safe(value: object) -> object:
    """Headers as JSON: AMQP tables may hold bytes, dates and decimals."""
    if isinstance(value, dict):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
