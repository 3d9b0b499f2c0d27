"""Deliveries that py-amqp cannot decode reach the supervisor as dead letters
instead of stopping it.

py-amqp decodes a delivery's routing key and properties while it reads
frames. A property that is not UTF-8, or a timestamp header out of range,
raises inside `drain_events`, before the message exists: the supervisor
would stop, and the broker would hand the same message to every restart.
`install()` makes both steps lenient: the frame is read to its end, the
text is decoded with replacement characters, and the message carries the
header UNDECODABLE with what was wrong, so the supervisor keeps it as a
dead letter and acknowledges it.
"""

import struct

from amqp import serialization, spec
from amqp.channel import Channel

UNDECODABLE = "x-elmo-undecodable"
_installed = False


def install() -> None:
    """Patch py-amqp once per process; the worker's connections all use it."""
    global _installed
    if _installed:
        return
    _installed = True
    load_properties = serialization.GenericContent._load_properties
    dispatch_method = Channel.dispatch_method

    def lenient_load_properties(self, class_id, buf, offset):
        try:
            return load_properties(self, class_id, buf, offset)
        except (UnicodeDecodeError, OverflowError, ValueError, KeyError, struct.error,
                serialization.FrameSyntaxError) as error:
            self.properties = {"application_headers": {
                UNDECODABLE: f"properties: {type(error).__name__}: {error}"[:500]}}
            return offset

    def lenient_dispatch_method(self, method_sig, payload, content):
        try:
            dispatch_method(self, method_sig, payload, content)
        except (UnicodeDecodeError, struct.error) as error:
            # Only the arguments' decoding raises these: the delivery callback
            # (Supervisor.on_message) never raises.
            if method_sig != spec.Basic.Deliver or content is None:
                raise
            headers = content.properties.get("application_headers") or {}
            content.properties["application_headers"] = headers
            headers.setdefault(UNDECODABLE, f"envelope: {type(error).__name__}: {error}"[:500])
            self._on_basic_deliver(*_deliver_arguments(payload), content)

    serialization.GenericContent._load_properties = lenient_load_properties
    Channel.dispatch_method = lenient_dispatch_method


def _deliver_arguments(payload: bytes) -> tuple[str, int, bool, str, str]:
    """basic.deliver's consumer tag, delivery tag, redelivered flag, exchange and
    routing key, with text that is not UTF-8 decoded with replacement characters."""
    offset = 4

    def shortstr() -> str:
        nonlocal offset
        length = payload[offset]
        text = bytes(payload[offset + 1:offset + 1 + length]).decode("utf-8", "replace")
        offset += 1 + length
        return text

    consumer_tag = shortstr()
    (delivery_tag,) = struct.unpack_from(">Q", payload, offset)
    offset += 8
    redelivered = bool(payload[offset] & 1)
    offset += 1
    exchange = shortstr()
    routing_key = shortstr()
    return consumer_tag, delivery_tag, redelivered, exchange, routing_key
