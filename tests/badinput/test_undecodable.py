"""Deliveries that the AMQP client cannot decode (a property or routing key that
is not UTF-8, a timestamp header out of range) end as dead letters: the
supervisor keeps running and the rest of the queue flows."""

import struct
import uuid

import amqp
import pytest
from amqp import serialization

from shardworker.models import DeadLetter
from tests.conftest import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


class OutOfRangeTimestamp:
    """Written as an AMQP timestamp field of 2**63 seconds."""


def publish(exchange: str, routing_key: str | bytes, body: bytes, **properties) -> None:
    with amqp.Connection("127.0.0.1:5672", userid="guest", password="guest") as connection:
        channel = connection.channel()
        channel.basic_publish(amqp.Message(body, delivery_mode=2, **properties),
                              exchange=exchange, routing_key=routing_key)


@pytest.fixture
def out_of_range_timestamps(monkeypatch):
    """Let this process write OutOfRangeTimestamp header values, as a broken publisher
    would (the broker passes them on)."""
    write_item = serialization._write_item

    def write(value, write_bytes, bits):
        if isinstance(value, OutOfRangeTimestamp):
            write_bytes(struct.pack(">cQ", b"T", 2 ** 63))
        else:
            write_item(value, write_bytes, bits)

    monkeypatch.setattr(serialization, "_write_item", write)


def poison(kind: str, queue: str, body: bytes) -> None:
    if kind == "content-type":
        publish("", queue, body, content_type=b"application/json\xff\xfe")
    elif kind == "timestamp-header":
        publish("", queue, body, content_type="application/json",
                application_headers={"x-when": OutOfRangeTimestamp()})
    else:
        # A routing key that is not UTF-8 can only come through an exchange: a topic
        # exchange of the test's own, bound to its queue.
        exchange = f"test-undecodable-{uuid.uuid4().hex[:8]}"
        with amqp.Connection("127.0.0.1:5672", userid="guest", password="guest") as c:
            channel = c.channel()
            channel.exchange_declare(exchange, "topic", durable=False, auto_delete=False)
            channel.queue_bind(queue, exchange, "#")
            channel.basic_publish(amqp.Message(body, content_type="application/json",
                                               delivery_mode=2),
                                  exchange=exchange, routing_key=b"l10n-central/\xff")
            channel.exchange_delete(exchange)


@pytest.mark.parametrize("kind", ["content-type", "timestamp-header", "routing-key"])
def test_undecodable_delivery_is_dead_lettered_and_the_queue_flows_on(
        hgmo, start_worker, queue_suffix, out_of_range_timestamps, kind):
    queue = f"queue/guest/{queue_suffix}"
    worker = start_worker(shards=1)
    body = f"undecodable {kind} {uuid.uuid4().hex}".encode()
    after = f"after {uuid.uuid4().hex}".encode()

    poison(kind, queue, body)
    publish("", queue, after, content_type="application/json")

    letters = DeadLetter.objects.filter(body__in=[body, after])
    wait_until(lambda: letters.count() == 2 or worker.process.poll() is not None, 30,
               f"both dead letters\n{worker.log()[-3000:]}")
    assert worker.process.poll() is None, worker.log()[-3000:]
    letter = DeadLetter.objects.get(body=body)
    expected = "envelope" if kind == "routing-key" else "properties"
    assert f"cannot decode its {expected}" in letter.reason, letter.reason
    assert "supervisor failed" not in worker.log()
    worker.stop()
    with amqp.Connection("127.0.0.1:5672", userid="guest", password="guest") as connection:
        _, waiting, _ = connection.channel().queue_declare(queue, passive=True)
    assert waiting == 0
