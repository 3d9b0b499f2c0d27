"""A message as the broker delivered it, in a form that crosses process
boundaries, and the facts the supervisor reads without parsing the body."""

import hashlib
from dataclasses import dataclass, field

HGMO_EXCHANGE = "exchange/hgpushes/v2"
TASKCLUSTER_EXCHANGES = (
    "exchange/taskcluster-queue/v1/task-completed",
    "exchange/taskcluster-queue/v1/task-failed",
    "exchange/taskcluster-queue/v1/task-exception",
)

GITHUB_PUSH_EXCHANGE = "exchange/taskcluster-github/v1/push"
GITHUB_WEBHOOKS_EXCHANGE = "exchange/github-webhooks/v1"

SOURCES = {
    HGMO_EXCHANGE: "hgmo",
    **{exchange: "taskcluster" for exchange in TASKCLUSTER_EXCHANGES},
    GITHUB_PUSH_EXCHANGE: "github",
    GITHUB_WEBHOOKS_EXCHANGE: "github",
}


@dataclass(frozen=True)
class Delivery:
    """The raw message: body bytes and the envelope the broker gave."""

    exchange: str
    routing_key: str
    body: bytes
    content_type: str = ""
    content_encoding: str = ""
    headers: dict = field(default_factory=dict)
    redelivered: bool = False

    @property
    def source(self) -> str:
        return SOURCES.get(self.exchange, "unknown")

    @property
    def message_id(self) -> str:
        """A digest that names this message the same way in every process."""
        digest = hashlib.sha256()
        for part in (_utf8(self.exchange), _utf8(self.routing_key), self.body):
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)
        return digest.hexdigest()

    @property
    def short_id(self) -> str:
        return self.message_id[:12]

    @property
    def repository(self) -> str:
        """The repository the message is about, as logs and dead letters name
        it: the path on the hg host, `<owner>/<name>` on GitHub. Taskcluster
        messages name a task, not a repository: their routing key."""
        if self.exchange == GITHUB_PUSH_EXCHANGE:
            # primary.<organization>.<repository>, periods in names as `%`.
            return "/".join(self.routing_key.split(".")[1:3]).replace("%", ".")
        if self.exchange == GITHUB_WEBHOOKS_EXCHANGE:
            # <owner>/<repository>/<event>
            return "/".join(self.routing_key.split("/")[:2])
        return self.routing_key

    @property
    def repository_key(self) -> str:
        """What the message is about, for routing. hg.mozilla.org and GitHub
        put the repository in the routing key. A Taskcluster routing key starts
        `primary.<taskId>.<runId>.`: every run of a task goes to one shard,
        so a retried run never races its predecessor (docs/design.md)."""
        if self.source == "taskcluster":
            parts = self.routing_key.split(".")
            return f"taskcluster:{parts[1] if len(parts) > 1 else self.routing_key}"
        if self.source == "github":
            return f"github:{self.repository.lower()}"
        return f"{self.source}:{self.routing_key}"


def route_to_shard(delivery: Delivery, shards: int) -> int:
    """The shard for this message's repository: the same in every process,
    on every machine and after every restart (unlike the built-in hash)."""
    key = _utf8(delivery.repository_key)
    return int.from_bytes(hashlib.sha1(key).digest()[:8], "big") % shards


def _utf8(text: str) -> bytes:
    """Bytes for any string the broker hands over, lone surrogates included."""
    return text.encode("utf-8", "surrogatepass")


def printable(text: str) -> str:
    """`text` as the database and logs can hold it: no NUL, no lone surrogates."""
    return _utf8(text).decode("utf-8", "replace").replace("\x00", "\ufffd")
