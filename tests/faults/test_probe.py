import time
from pathlib import Path

import kombu
import pytest

from elmo.life.models import Forest, Locale, Push, Repository
from tests.conftest import PROJECT, AMQP_URL, wait_until

pytestmark = pytest.mark.django_db(transaction=True)
BUNDLE = PROJECT.parent / "shared/data/fx-private-relay-l10n.hg"


def test_probe(hgmo, publisher, start_worker, queue_suffix):
    t = time.monotonic()
    names = ["l10n-central/ab", "l10n-central/cd", "l10n-central/ef", "l10n-central/gh"]
    forest = Forest.objects.create(name="l10n-central", url=hgmo.base_url)
    for n in names:
        hgmo.import_bundle(n, BUNDLE)
        Repository.objects.create(name=n, url=hgmo.base_url + n, forest=forest,
                                  locale=Locale.objects.create(code=n[-2:]))
    print("import", time.monotonic() - t)
    t = time.monotonic()
    worker = start_worker(shards=4)
    print("start", time.monotonic() - t)
    t = time.monotonic()
    for k in range(1, 51):
        for n in names:
            publisher.publish_changegroup(hgmo, n, [k])
    print("publish", time.monotonic() - t)
    wait_until(lambda: worker.log().count(" processed in ") >= 200, 300, "all")
    print("process", time.monotonic() - t, Push.objects.count())
    print(worker.log()[-3000:])
