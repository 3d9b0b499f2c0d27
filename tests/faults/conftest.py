"""Fixtures of the fault-injection suite, on top of tests/conftest.py."""

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix) -> None:
    """A test database of this session's own.

    Other engineers run the suite on this machine at the same time; with the
    default test database names (var/test-elmo.sqlite3, test_elmo) one run
    drops or recreates the database under the other's workers.
    """
    from django.conf import settings

    suffix = f"faults_{os.getpid()}"
    for config in settings.DATABASES.values():
        test = config.setdefault("TEST", {})
        if config["ENGINE"].endswith("sqlite3"):
            path = Path(test.get("NAME") or config["NAME"])
            test["NAME"] = str(path.with_name(f"{path.stem}-{suffix}{path.suffix}"))
        else:
            test["NAME"] = f"{test.get('NAME') or 'test_' + config['NAME']}_{suffix}"
