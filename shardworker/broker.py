"""The AMQP side: the connection to Pulse and the queues the worker consumes.

Queues are durable and named `queue/<PULSE_USER>/<name>`, as Pulse requires.
Exchanges belong to their publishers, so the worker only checks that they
exist (a passive declaration) before binding.
"""

from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from kombu import Connection, Exchange, Queue, binding

from shardworker import undecodable
from shardworker.deliveries import (
    GITHUB_PUSH_EXCHANGE,
    GITHUB_WEBHOOKS_EXCHANGE,
    HGMO_EXCHANGE,
    TASKCLUSTER_EXCHANGES,
)

# A replayed dead letter reaches its queue through the default exchange; these
# headers carry where it first came from.
REPLAY_EXCHANGE = "x-elmo-replay-exchange"
REPLAY_ROUTING_KEY = "x-elmo-replay-routing-key"


@dataclass(frozen=True)
class Binding:
    """One queue of the worker and the (exchange, routing key) pairs it is
    bound to."""

    queue_suffix: str
    routes: tuple[tuple[str, str], ...]

    @property
    def exchanges(self) -> set[str]:
        return {exchange for exchange, _ in self.routes}


def pulse_url() -> str:
    """The broker URL from PULSE_URL, or from PULSE_HOST and its companions."""
    if settings.PULSE_URL:
        parts = urlsplit(settings.PULSE_URL)
        if parts.scheme not in ("amqp", "amqps") or not parts.hostname:
            raise ImproperlyConfigured("PULSE_URL must be an amqp:// or amqps:// URL.")
        try:
            valid_port = parts.port is None or 0 < parts.port < 65536
        except ValueError:
            valid_port = False
        if not valid_port:
            raise ImproperlyConfigured("PULSE_URL has a port that is not a port number.")
        return settings.PULSE_URL
    scheme = "amqps" if settings.PULSE_SSL else "amqp"
    user = quote(settings.PULSE_USER, safe="")
    password = quote(settings.PULSE_PASSWORD, safe="")
    vhost = quote(settings.PULSE_VHOST, safe="")
    return f"{scheme}://{user}:{password}@{settings.PULSE_HOST}:{settings.PULSE_PORT}/{vhost}"


def pulse_user() -> str:
    if settings.PULSE_URL:
        return urlsplit(settings.PULSE_URL).username or "guest"
    return settings.PULSE_USER


def connect() -> Connection:
    """A kombu connection with heartbeats; not yet opened. Deliveries it cannot
    decode arrive marked as such (shardworker.undecodable)."""
    undecodable.install()
    url = pulse_url()
    return Connection(
        url,
        heartbeat=settings.PULSE_HEARTBEAT,
        ssl=url.startswith("amqps"),
        connect_timeout=10,
        transport_options={"confirm_publish": True},
    )


def bindings() -> list[Binding]:
    """hg.mozilla.org always; Taskcluster when TASKCLUSTER_ROOT_URL is set;
    GitHub when ELMO_GITHUB is on."""
    result = [Binding(settings.PULSE_QUEUE_HGMO, ((HGMO_EXCHANGE, "#"),))]
    if settings.TASKCLUSTER_ROOT_URL:
        route = f"route.{settings.ELMO_TASKCLUSTER_ROUTE}"
        result.append(Binding(settings.PULSE_QUEUE_TASKCLUSTER,
                              tuple((exchange, route) for exchange in TASKCLUSTER_EXCHANGES)))
    if settings.ELMO_GITHUB:
        result.append(Binding(settings.PULSE_QUEUE_GITHUB,
                              ((GITHUB_PUSH_EXCHANGE, "primary.#"),
                               (GITHUB_WEBHOOKS_EXCHANGE, "#"))))
    return result


def queue_name(binding: Binding) -> str:
    return f"queue/{pulse_user()}/{binding.queue_suffix}"


def queues() -> list[Queue]:
    """The worker's durable queues, bound to their (existing) exchanges."""
    return [
        Queue(
            queue_name(bound),
            bindings=[
                binding(Exchange(exchange, type="topic", passive=True), routing_key=key)
                for exchange, key in bound.routes
            ],
            durable=True,
            auto_delete=False,
        )
        for bound in bindings()
    ]


def safe_url(connection: Connection) -> str:
    """The broker address without its password, for logs."""
    return connection.as_uri(include_password=False)
