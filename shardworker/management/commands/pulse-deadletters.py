"""`./manage.py pulse-deadletters`: list, show, replay and purge dead letters."""

import re
from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.db.models import QuerySet
from django.utils import timezone

from shardworker import broker, checks
from shardworker.models import DeadLetter

AGE = re.compile(r"(\d+)([smhdw])")
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_age(text: str) -> timedelta:
    match = AGE.fullmatch(text.strip())
    if not match:
        raise CommandError(f"an age is a number and a unit (s, m, h, d, w), like 3d; not {text!r}")
    return timedelta(**{UNITS[match.group(2)]: int(match.group(1))})


class Command(BaseCommand):
    help = (
        "Inspect dead letters: messages the worker could not process, kept with their reason. "
        "`replay` publishes them back to the worker's queue, where they take the normal path "
        "(a replayed message that fails again becomes a dead letter again)."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("action", choices=["list", "show", "replay", "purge"])
        parser.add_argument("ids", nargs="*", type=int, help="dead letter ids (default: all "
                            "that match the filters)")
        parser.add_argument("--source", help="only this source (hgmo, taskcluster, github)")
        parser.add_argument("--repository", help="only this repository path")
        parser.add_argument("--older-than", type=parse_age, help="only letters older than "
                            "this age, e.g. 7d")
        parser.add_argument("--newer-than", type=parse_age, help="only letters newer than "
                            "this age, e.g. 12h")
        parser.add_argument("--yes", action="store_true", help="purge without asking")

    def handle(self, *args, **options) -> None:
        checks.ensure_migrated()
        letters = self.select(options)
        action = options["action"]
        if action == "list":
            self.list(letters)
        elif action == "show":
            if not options["ids"]:
                raise CommandError("show needs at least one dead letter id.")
            for letter in letters:
                self.show(letter)
        elif action == "replay":
            self.replay(letters)
        elif action == "purge":
            if not (options["ids"] or options["source"] or options["repository"]
                    or options["older_than"] or options["newer_than"] or options["yes"]):
                raise CommandError("purge needs ids, a filter, or --yes to purge everything.")
            count, _ = letters.delete()
            self.stdout.write(f"purged {count} dead letter(s)")

    def select(self, options: dict) -> QuerySet:
        letters = DeadLetter.objects.order_by("id")
        if options["ids"]:
            letters = letters.filter(id__in=options["ids"])
            missing = set(options["ids"]) - set(letters.values_list("id", flat=True))
            if missing:
                raise CommandError(f"no dead letter with id {', '.join(map(str, missing))}.")
        if options["source"]:
            letters = letters.filter(source=options["source"])
        if options["repository"]:
            letters = letters.filter(repository=options["repository"])
        now = timezone.now()
        if options["older_than"]:
            letters = letters.filter(created__lt=now - options["older_than"])
        if options["newer_than"]:
            letters = letters.filter(created__gte=now - options["newer_than"])
        return letters

    def list(self, letters: QuerySet) -> None:
        count = 0
        for letter in letters:
            count += 1
            self.stdout.write(
                f"{letter.id:>6}  {letter.created:%Y-%m-%d %H:%M}  {letter.source:<8} "
                f"{letter.routing_key[:40]:<40} x{letter.attempts}  {letter.reason[:100]}"
            )
        self.stdout.write(f"{count} dead letter(s)")

    def show(self, letter: DeadLetter) -> None:
        body = bytes(letter.body)
        self.stdout.write(f"id:          {letter.id}")
        self.stdout.write(f"message id:  {letter.message_id}")
        self.stdout.write(f"created:     {letter.created.isoformat()}")
        self.stdout.write(f"source:      {letter.source}")
        self.stdout.write(f"exchange:    {letter.exchange}")
        self.stdout.write(f"routing key: {letter.routing_key}")
        self.stdout.write(f"repository:  {letter.repository}")
        self.stdout.write(f"attempts:    {letter.attempts}")
        self.stdout.write(f"reason:      {letter.reason}")
        self.stdout.write(f"body ({len(body)} bytes):")
        self.stdout.write(body[:4000].decode("utf-8", "replace"))

    def replay(self, letters: QuerySet) -> None:
        """Publish each letter to its source's queue through the default
        exchange; the original exchange and routing key travel in headers."""
        queues = {exchange: broker.queue_name(bound) for bound in broker.bindings()
                  for exchange in bound.exchanges}
        replayed = 0
        with broker.connect() as connection:
            producer = connection.Producer()
            exists: dict[str, bool] = {}
            for letter in letters:
                queue = queues.get(letter.exchange)
                if queue is None:
                    self.stderr.write(f"{letter.id}: no queue consumes {letter.exchange}; kept")
                    continue
                if queue not in exists:
                    exists[queue] = queue_exists(connection, queue)
                if not exists[queue]:
                    # Published there, the message would be dropped by the broker.
                    self.stderr.write(f"{letter.id}: queue {queue} does not exist (consume-pulse "
                                      "declares it when it starts); kept")
                    continue
                headers = {**letter.headers, broker.REPLAY_EXCHANGE: letter.exchange,
                           broker.REPLAY_ROUTING_KEY: letter.routing_key}
                producer.publish(
                    bytes(letter.body), exchange="", routing_key=queue, headers=headers,
                    content_type=letter.content_type or None,
                    content_encoding=letter.content_encoding or None,
                    delivery_mode=2, retry=True, serializer=None,
                )
                letter.delete()
                replayed += 1
        self.stdout.write(f"replayed {replayed} dead letter(s)")


def queue_exists(connection, queue: str) -> bool:
    """Ask the broker on a channel of its own: a missing queue closes the channel."""
    channel = connection.channel()
    try:
        channel.queue_declare(queue=queue, passive=True)
        return True
    except connection.channel_errors:
        return False
    finally:
        try:
            channel.close()
        except connection.channel_errors + connection.connection_errors:
            pass
