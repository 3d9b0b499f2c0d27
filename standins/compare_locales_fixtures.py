"""Real compare-locales results on small localization fixtures, as the Taskcluster task that
publishes them computes them."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from compare_locales.compare import compareProjects
from compare_locales.paths import TOMLParser

log = logging.getLogger(__name__)

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "l10n"
REFERENCE_DIR = FIXTURES / "en-US"
CONFIG_NAME = "l10n.toml"


def run_compare_locales(
    reference_dir: Path, l10n_dir: Path, locale: str, config_name: str = CONFIG_NAME
) -> dict[str, Any]:
    """Compare the localization in `l10n_dir` with the reference project in `reference_dir`.

    `reference_dir/config_name` is the project configuration; its paths reach the localization
    through `{l}`, which is set to `l10n_dir`. Returns what `compare-locales --json` writes for
    this one project: {"summary": {locale: counts}, "details": tree of files}, where the detail
    paths start at the parent of `l10n_dir`.
    """
    l10n_dir = Path(l10n_dir).resolve()
    environment = {"l10n_base": str(l10n_dir.parent), "l": f"{l10n_dir}/"}
    config = TOMLParser().parse(str(Path(reference_dir) / config_name), env=environment)
    observers = compareProjects([config], [locale], str(l10n_dir.parent))
    (document,) = [observer.toJSON() for observer in observers]
    # The JSON round trip drops the tuples and defaultdicts that toJSON leaves in place.
    document = json.loads(json.dumps(document, sort_keys=True))
    log.info("compared %s with %s: %s", l10n_dir, reference_dir, document["summary"].get(locale))
    return document
