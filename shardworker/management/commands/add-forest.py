"""`./manage.py add-forest`: track a forest, so its new repositories are added."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from elmo.life.models import Forest
from elmo.pushes.clones import check_repository_name
from shardworker.checks import ensure_migrated
from shardworker.errors import PermanentError


class Command(BaseCommand):
    help = (
        "Register a forest (a path on the hg host holding one repository per locale, such as "
        "l10n-central). When hg.mozilla.org announces a new repository under it, the worker "
        "tracks it and records its history."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("name", help="the forest's path on the hg host, e.g. l10n-central")

    def handle(self, *args, **options) -> None:
        name = options["name"]
        try:
            check_repository_name(name)
        except PermanentError as error:
            raise CommandError(str(error)) from None
        ensure_migrated()
        forest, created = Forest.objects.update_or_create(
            name=name,
            defaults={"url": settings.ELMO_HG_BASE_URL + name, "archived": False},
        )
        self.stdout.write(f"{'added' if created else 'updated'} forest {forest.name} "
                          f"({forest.url})")
