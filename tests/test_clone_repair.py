"""A damaged clone is repaired under its lock: stale hg locks from another
host, an interrupted transaction, a truncated or deleted store."""

import os
import subprocess
from pathlib import Path

import pytest

from elmo.pushes.clones import Clones, clean_environment, find_hg
from tests.helpers import clone_nodes


@pytest.fixture
def damaged_setup(hgmo, tmp_path: Path):
    """A stand-in repository with two pushes and a clone of the first."""
    hgmo.create_repository("l10n-central/de")
    first = hgmo.push("l10n-central/de", {"a.ftl": "a = A\n"})
    clones = Clones(tmp_path / "clones", timeout=60)
    url = hgmo.base_url + "l10n-central/de"
    assert clones.update("l10n-central/de", url) == "cloned"
    second = hgmo.push("l10n-central/de", {"b.ftl": "b = B\n"})
    expected = {*first.nodes, *second.nodes}
    return clones, url, clones.path_for("l10n-central/de"), expected


def verify(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([find_hg(), "-R", str(path), "verify"], env=clean_environment(),
                          capture_output=True, text=True)


def test_stale_lock_of_another_host_is_broken(damaged_setup):
    clones, url, path, expected = damaged_setup
    os.symlink("build-host-7:4242", path / ".hg" / "store" / "lock")

    assert clones.update("l10n-central/de", url) == "repaired"

    assert clone_nodes(clones.root, "l10n-central/de") == expected
    assert not (path / ".hg" / "store" / "lock").is_symlink()


def test_interrupted_transaction_is_recovered(damaged_setup):
    clones, url, path, expected = damaged_setup
    (path / ".hg" / "store" / "journal").write_bytes(b"data/b.ftl.i\x000\n")

    assert clones.update("l10n-central/de", url) == "repaired"

    assert clone_nodes(clones.root, "l10n-central/de") == expected
    assert verify(path).returncode == 0


def test_truncated_store_is_cloned_again(damaged_setup):
    clones, url, path, expected = damaged_setup
    os.truncate(path / ".hg" / "store" / "00changelog.i", 10)

    assert clones.update("l10n-central/de", url) == "repaired"

    assert clone_nodes(clones.root, "l10n-central/de") == expected
    assert verify(path).returncode == 0


def test_deleted_store_is_cloned_again(damaged_setup):
    clones, url, path, expected = damaged_setup
    subprocess.run(["rm", "-rf", str(path / ".hg" / "store")], check=True)

    assert clones.update("l10n-central/de", url) == "cloned"

    assert clone_nodes(clones.root, "l10n-central/de") == expected
    assert verify(path).returncode == 0


def test_nested_repository_paths_keep_each_other_and_a_file_in_the_way_is_replaced(
        hgmo, tmp_path: Path):
    """`x/y` is cloned inside the directory of `x`; cloning, and recloning, `x` replaces
    only its own `.hg`. A file where a clone belongs is removed."""
    hgmo.create_repository("l10n-central/de")
    pushed = hgmo.push("l10n-central/de", {"a.ftl": "a = A\n"})
    url = hgmo.base_url + "l10n-central/de"
    clones = Clones(tmp_path / "clones", timeout=60)

    assert clones.update("nest/inner", url) == "cloned"
    assert clones.update("nest", url) == "cloned"
    subprocess.run(["rm", "-rf", str(clones.path_for("nest") / ".hg" / "store")], check=True)
    assert clones.update("nest", url) == "cloned"
    clones.path_for("file").parent.mkdir(parents=True, exist_ok=True)
    clones.path_for("file").write_text("in the way\n")
    assert clones.update("file", url) == "cloned"

    for name in ("nest", "nest/inner", "file"):
        assert clone_nodes(clones.root, name) == set(pushed.nodes), name
        assert verify(clones.path_for(name)).returncode == 0, name
