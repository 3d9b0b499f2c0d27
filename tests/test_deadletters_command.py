"""`pulse-deadletters`: an operator lists, shows, replays and purges."""

from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

from elmo.life.models import Push
from shardworker.models import DeadLetter
from tests.conftest import AMQP_URL
from tests.test_hgmo_ingest import track, wait_for_outcome

pytestmark = pytest.mark.django_db(transaction=True)


def run(*arguments: str) -> str:
    output = StringIO()
    call_command("pulse-deadletters", *arguments, stdout=output)
    return output.getvalue()


def test_replayed_dead_letter_takes_the_normal_path(hgmo, publisher, start_worker,
                                                    queue_suffix):
    track(hgmo, "l10n-central/de")
    pushed = hgmo.push("l10n-central/de", {"a.ftl": "a = A\n"})
    worker = start_worker(shards=2)
    hgmo.fail_next(1000, 500)
    body = publisher.publish_changegroup(hgmo, "l10n-central/de", [pushed.push_id])
    wait_for_outcome(worker, body, "l10n-central/de", "dead_lettered")
    letter = DeadLetter.objects.get(repository="l10n-central/de")
    assert "gave up after 3 attempts" in letter.reason
    assert "500" in letter.reason
    assert letter.attempts == 3

    listing = run("list", "--source", "hgmo")
    assert f"{letter.id:>6}" in listing and "1 dead letter(s)" in listing
    assert "gave up after 3 attempts" in run("show", str(letter.id))

    hgmo.fail_next(0)
    with override_settings(PULSE_URL=AMQP_URL, PULSE_QUEUE_HGMO=queue_suffix):
        assert "replayed 1 dead letter(s)" in run("replay", "--repository", "l10n-central/de")
    wait_for_outcome(worker, body, "l10n-central/de", "processed")

    assert Push.objects.filter(repository__name="l10n-central/de").count() == 1
    assert not DeadLetter.objects.filter(repository="l10n-central/de").exists()


def test_purge_needs_a_filter_and_keeps_the_rest(db_rows):
    from shardworker.deadletters import keep
    from shardworker.deliveries import HGMO_EXCHANGE, Delivery

    keep(Delivery(HGMO_EXCHANGE, "l10n-central/de", b"one"), "bad", 1, "l10n-central/de")
    keep(Delivery(HGMO_EXCHANGE, "l10n-central/fr", b"two"), "bad", 1, "l10n-central/fr")

    with pytest.raises(CommandError):
        run("purge")
    assert "purged 1 dead letter(s)" in run("purge", "--repository", "l10n-central/de")
    assert list(DeadLetter.objects.values_list("repository", flat=True)) == ["l10n-central/fr"]
    assert "0 dead letter(s)" in run("list", "--older-than", "1d")
    with pytest.raises(CommandError):
        run("list", "--older-than", "soon")


def test_replay_into_a_queue_that_does_not_exist_keeps_the_letter(db_rows, queue_suffix):
    """The broker drops what is published to a missing queue; the letter must stay."""
    from shardworker.deadletters import keep
    from shardworker.deliveries import HGMO_EXCHANGE, Delivery

    letter = keep(Delivery(HGMO_EXCHANGE, "l10n-central/de", b"kept"), "bad", 1,
                  "l10n-central/de")
    errors = StringIO()
    with override_settings(PULSE_URL=AMQP_URL, PULSE_QUEUE_HGMO=f"{queue_suffix}-gone"):
        output = StringIO()
        call_command("pulse-deadletters", "replay", str(letter.id), stdout=output,
                     stderr=errors)

    assert "replayed 0 dead letter(s)" in output.getvalue()
    assert f"queue/guest/{queue_suffix}-gone does not exist" in errors.getvalue()
    assert DeadLetter.objects.filter(id=letter.id).exists()
