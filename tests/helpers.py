"""Small readers for test assertions: what the database and clones hold."""

import subprocess
from pathlib import Path

from elmo.life.models import Changeset, Push
from elmo.pushes.clones import clean_environment, find_hg
from shardworker.deliveries import HGMO_EXCHANGE, Delivery


def short_id(body: dict | bytes, routing_key: str, exchange: str = HGMO_EXCHANGE) -> str:
    """The id the worker logs for a message we published."""
    import json

    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Delivery(exchange=exchange, routing_key=routing_key, body=raw).short_id


def recorded_pushes(repository: str) -> list[tuple[int, str, list[str]]]:
    """(push id, user, changeset revisions) of every recorded push."""
    pushes = Push.objects.filter(repository__name=repository).order_by("push_id")
    return [
        (push.push_id, push.user,
         sorted(push.changesets.values_list("revision", flat=True)))
        for push in pushes
    ]


def standin_pushes(standin, repository: str) -> list[tuple[int, str, list[str]]]:
    return [(push["id"], push["user"], sorted(push["nodes"]))
            for push in standin.pushlog(repository)]


def clone_nodes(clone_root: Path, repository: str) -> set[str]:
    """Every changeset in the local clone."""
    output = subprocess.run(
        [find_hg(), "-R", str(clone_root / repository), "log", "-T", "{node}\n"],
        env=clean_environment(), capture_output=True, check=True, text=True,
    ).stdout
    return set(output.split())


def parents_of(revision: str) -> list[str]:
    changeset = Changeset.objects.get(revision=revision)
    return sorted(changeset.parents.values_list("revision", flat=True))


def files_of(revision: str) -> list[str]:
    changeset = Changeset.objects.get(revision=revision)
    return sorted(changeset.files.values_list("path", flat=True))
