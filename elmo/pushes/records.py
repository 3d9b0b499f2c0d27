"""Writing pushes and their changesets into the life models.

Every write is idempotent: rows are inserted when missing and completed
when they exist, so a repeated or concurrent sync leaves the same rows.
"""

from collections.abc import Iterable
from datetime import UTC, datetime

from django.db import transaction

from elmo.life.models import Branch, Changeset, File, Push, Repository
from elmo.pushes.pushlog import PushedChangeset, PushlogPush

USER_LENGTH = Changeset._meta.get_field("user").max_length
PATH_LENGTH = File._meta.get_field("path").max_length


BATCH = 500


def _ids_by(model, field: str, values: set[str]) -> dict[str, int]:
    """Map `field` values to row ids, querying in batches that every database takes."""
    ordered = sorted(values)
    found = {}
    for start in range(0, len(ordered), BATCH):
        batch = ordered[start:start + BATCH]
        found.update(model.objects.filter(**{f"{field}__in": batch}).values_list(field, "id"))
    return found


def changeset_ids(revisions: Iterable[str]) -> dict[str, int]:
    """Row ids for these revisions, creating placeholders for unknown ones."""
    wanted = set(revisions)
    known = _ids_by(Changeset, "revision", wanted)
    missing = wanted - known.keys()
    if missing:
        Changeset.objects.bulk_create(
            [Changeset(revision=revision) for revision in sorted(missing)],
            ignore_conflicts=True,
            batch_size=BATCH,
        )
        known.update(_ids_by(Changeset, "revision", missing))
    return known


def record_pushes(repository: Repository, pushes: Iterable[PushlogPush],
                  delivery_id: str = "") -> tuple[int, int]:
    """Record pushes and their changesets in one transaction.

    `delivery_id` names the GitHub delivery that brought a git push.
    Returns (pushes, changesets) counted from the pushlog answer.
    """
    pushes = list(pushes)
    changesets = [changeset for push in pushes for changeset in push.changesets]
    with transaction.atomic():
        ids = changeset_ids(
            {c.node for c in changesets} | {p for c in changesets for p in c.parents}
        )
        _complete_changesets(changesets, ids)
        _link_parents(changesets, ids)
        _link_files(changesets, ids)
        _link_repository(repository, changesets, ids)
        _record_push_rows(repository, pushes, ids, delivery_id)
    return len(pushes), len(changesets)


def _branch_ids(names: set[str]) -> dict[str, int]:
    known = _ids_by(Branch, "name", names)
    missing = names - known.keys()
    if missing:
        Branch.objects.bulk_create([Branch(name=n) for n in sorted(missing)],
                                   ignore_conflicts=True)
        known.update(_ids_by(Branch, "name", missing))
    return known


def _complete_changesets(changesets: list[PushedChangeset], ids: dict[str, int]) -> None:
    """Fill in user, description and branch; placeholders become full rows."""
    branches = _branch_ids({c.branch for c in changesets})
    row_ids = sorted({ids[c.node] for c in changesets})
    current = {}
    for start in range(0, len(row_ids), BATCH):
        rows = Changeset.objects.filter(id__in=row_ids[start:start + BATCH])
        for row in rows.values_list("id", "user", "description", "branch_id"):
            current[row[0]] = row[1:]
    stale = []
    for changeset in changesets:
        row_id = ids[changeset.node]
        wanted = (changeset.author[:USER_LENGTH], changeset.desc, branches[changeset.branch])
        if current.get(row_id) != wanted:
            stale.append(Changeset(id=row_id, user=wanted[0], description=wanted[1],
                                   branch_id=wanted[2]))
    if stale:
        Changeset.objects.bulk_update(stale, ["user", "description", "branch_id"],
                                      batch_size=500)


def _link_parents(changesets: list[PushedChangeset], ids: dict[str, int]) -> None:
    through = Changeset.parents.through
    through.objects.bulk_create(
        [
            through(from_changeset_id=ids[c.node], to_changeset_id=ids[parent])
            for c in changesets
            for parent in c.parents
        ],
        ignore_conflicts=True,
        batch_size=1000,
    )


def _link_files(changesets: list[PushedChangeset], ids: dict[str, int]) -> None:
    paths = {path[:PATH_LENGTH] for c in changesets for path in c.files}
    if not paths:
        return
    file_ids = _ids_by(File, "path", paths)
    missing = paths - file_ids.keys()
    if missing:
        File.objects.bulk_create([File(path=p) for p in sorted(missing)],
                                 ignore_conflicts=True, batch_size=BATCH)
        file_ids.update(_ids_by(File, "path", missing))
    through = Changeset.files.through
    through.objects.bulk_create(
        [
            through(changeset_id=ids[c.node], file_id=file_ids[path[:PATH_LENGTH]])
            for c in changesets
            for path in c.files
        ],
        ignore_conflicts=True,
        batch_size=1000,
    )


def _link_repository(repository: Repository, changesets: list[PushedChangeset],
                     ids: dict[str, int]) -> None:
    through = Changeset.repositories.through
    through.objects.bulk_create(
        [through(changeset_id=ids[c.node], repository_id=repository.id) for c in changesets],
        ignore_conflicts=True,
        batch_size=1000,
    )


def _record_push_rows(repository: Repository, pushes: list[PushlogPush],
                      ids: dict[str, int], delivery_id: str) -> None:
    Push.objects.bulk_create(
        [
            Push(
                repository=repository,
                push_id=push.push_id,
                user=push.user[:USER_LENGTH],
                push_date=datetime.fromtimestamp(push.date, tz=UTC),
                delivery_id=delivery_id,
            )
            for push in pushes
        ],
        ignore_conflicts=True,
        batch_size=500,
    )
    push_rows = {}
    push_ids = sorted(p.push_id for p in pushes)
    for start in range(0, len(push_ids), BATCH):
        rows = Push.objects.filter(repository=repository,
                                   push_id__in=push_ids[start:start + BATCH])
        push_rows.update(rows.values_list("push_id", "id"))
    through = Push.changesets.through
    through.objects.bulk_create(
        [
            through(push_id=push_rows[push.push_id], changeset_id=ids[c.node])
            for push in pushes
            for c in push.changesets
        ],
        ignore_conflicts=True,
        batch_size=1000,
    )
