"""Start-up checks shared by the commands: each failure is one sentence."""

from django.conf import settings
from django.core.management.base import CommandError
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.db.utils import OperationalError


def ensure_migrated() -> None:
    """The database answers and holds every migration."""
    try:
        connection.ensure_connection()
        executor = MigrationExecutor(connection)
        unapplied = executor.migration_plan(executor.loader.graph.leaf_nodes())
    except OperationalError as error:
        config = settings.DATABASES["default"]
        where = config.get("HOST") or config["NAME"]
        text = str(error).strip()
        first = text.splitlines()[0] if text else type(error).__name__
        raise CommandError(f"cannot reach the database at {where}: {first}") from None
    if unapplied:
        raise CommandError("the database is not migrated; run ./manage.py migrate first.")
