"""`./manage.py add-repository`: track a repository on the hg host."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from elmo.life.models import Forest, Locale, Repository
from elmo.pushes.clones import check_repository_name
from shardworker.checks import ensure_migrated
from shardworker.errors import PermanentError


class Command(BaseCommand):
    help = (
        "Register repositories by their path on the hg host, such as l10n-central/de. "
        "Pushes to them are recorded from the next message on; the first message brings "
        "their whole pushlog history. A repository under a registered forest is linked to "
        "it, and its last path segment becomes its locale."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("names", nargs="+", help="repository paths on the hg host")
        parser.add_argument("--locale", help="locale code (default: the last path segment "
                            "for repositories in a forest, none otherwise)")
        parser.add_argument("--git", action="store_true",
                            help="a GitHub repository, named <organization>/<repository>")
        parser.add_argument("--branch", default="main",
                            help="for --git: the branch whose pushes are recorded (main)")

    def handle(self, *args, **options) -> None:
        names = []
        for raw in options["names"]:
            try:
                names.append(check_repository_name(raw))
            except PermanentError as error:
                raise CommandError(str(error)) from None
        ensure_migrated()
        for name in names:
            forest_name, _, last = name.rpartition("/")
            forest = Forest.objects.filter(name=forest_name).first() if forest_name else None
            code = options["locale"] or (last if forest else None)
            locale = Locale.objects.get_or_create(code=code)[0] if code else None
            if options["git"]:
                url, kind, branch = settings.ELMO_GITHUB_BASE_URL + name, Repository.GIT, \
                    options["branch"]
            else:
                url, kind, branch = settings.ELMO_HG_BASE_URL + name, Repository.HG, ""
            repository, created = Repository.objects.update_or_create(
                name=name,
                defaults={"url": url, "forest": forest, "locale": locale, "archived": False,
                          "kind": kind, "branch": branch},
            )
            self.stdout.write(f"{'added' if created else 'updated'} repository "
                              f"{repository.name} ({repository.url})")
