"""The life of localization repositories: locales, forests, repositories,
pushes and changesets, with the names the elmo dashboard reads."""

from django.db import models

NULL_REVISION = "0" * 40


class Locale(models.Model):
    """A language and region we localize for, such as `de` or `pt-BR`.

    Fields: code (unique), name.
    """

    code = models.CharField(max_length=30, unique=True)
    name = models.CharField(max_length=100, blank=True, default="")

    def __str__(self) -> str:
        return self.code


class Forest(models.Model):
    """A set of repositories, one per locale, under one path on the hg host.

    Fields: name (the path, e.g. `l10n-central`), url, archived. A new
    repository under a known forest is tracked when hg.mozilla.org
    announces it.
    """

    name = models.CharField(max_length=100, unique=True)
    url = models.URLField(max_length=500)
    archived = models.BooleanField(default=False)

    def __str__(self) -> str:
        return self.name


class Repository(models.Model):
    """A tracked repository.

    Fields: name (the path on its host: `l10n-central/de` on hg.mozilla.org,
    `mozilla-l10n/firefox-l10n` on GitHub), url, kind (hg or git), branch
    (for git, the one branch whose pushes are recorded), forest and locale
    (both optional), archived.
    """

    HG = "hg"
    GIT = "git"
    KINDS = [(HG, "Mercurial"), (GIT, "git")]

    name = models.CharField(max_length=100, unique=True)
    kind = models.CharField(max_length=3, choices=KINDS, default=HG)
    branch = models.CharField(max_length=100, blank=True, default="",
                              help_text="for git: the branch whose pushes are recorded")
    url = models.URLField(max_length=500)
    forest = models.ForeignKey(
        Forest, null=True, blank=True, on_delete=models.SET_NULL, related_name="repositories"
    )
    locale = models.ForeignKey(Locale, null=True, blank=True, on_delete=models.SET_NULL)
    archived = models.BooleanField(default=False)

    class Meta:
        verbose_name_plural = "repositories"

    def __str__(self) -> str:
        return self.name

    def last_known_push(self) -> int:
        """The highest recorded push id, 0 when nothing is recorded yet."""
        last = self.push_set.aggregate(models.Max("push_id"))["push_id__max"]
        return last or 0


class Tree(models.Model):
    """A product's view of localization: which forest holds its locales.

    Fields: code (e.g. `fx`), l10n (the forest), repositories, locales.
    """

    code = models.CharField(max_length=50, unique=True)
    l10n = models.ForeignKey(Forest, null=True, blank=True, on_delete=models.SET_NULL)
    repositories = models.ManyToManyField(Repository, blank=True)
    locales = models.ManyToManyField(Locale, blank=True, related_name="trees")

    def __str__(self) -> str:
        return self.code


class Branch(models.Model):
    """A named Mercurial branch; `default` is row 1."""

    name = models.TextField(unique=True)

    class Meta:
        verbose_name_plural = "branches"

    def __str__(self) -> str:
        return self.name


class File(models.Model):
    """A path touched by a changeset."""

    path = models.CharField(max_length=1024, unique=True)

    def __str__(self) -> str:
        return self.path


class Changeset(models.Model):
    """One commit, known by its 40-hex revision.

    Fields: revision (unique), user, description, branch, parents, files,
    repositories. A changeset that a comparison names before its push
    arrives is a placeholder: revision only, no pushes, user unset. The
    push that brings it completes the same row.
    """

    revision = models.CharField(max_length=40, unique=True)
    user = models.CharField(max_length=200, null=True, blank=True)
    description = models.TextField(null=True, blank=True, default="")
    branch = models.ForeignKey(
        Branch, default=1, on_delete=models.PROTECT, related_name="changesets"
    )
    parents = models.ManyToManyField("self", symmetrical=False, related_name="_children")
    files = models.ManyToManyField(File, blank=True)
    repositories = models.ManyToManyField(Repository, related_name="changesets", blank=True)

    def __str__(self) -> str:
        return self.revision[:12]

    @property
    def shortrev(self) -> str:
        return self.revision[:12]


class Push(models.Model):
    """One push to a repository, as the pushlog of the hg host recorded it,
    or as the worker numbered a GitHub push.

    Fields: repository, push_id (unique per repository), user (who pushed),
    push_date, changesets, delivery_id (GitHub's delivery id, empty for hg).
    """

    repository = models.ForeignKey(Repository, on_delete=models.CASCADE)
    changesets = models.ManyToManyField(Changeset, related_name="pushes")
    user = models.CharField("person who pushed", max_length=200)
    push_date = models.DateTimeField("date of push", db_index=True)
    push_id = models.PositiveIntegerField(default=0)
    delivery_id = models.CharField(max_length=64, blank=True, default="")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["repository", "push_id"], name="unique_push_id"),
            models.UniqueConstraint(fields=["repository", "delivery_id"],
                                    condition=~models.Q(delivery_id=""),
                                    name="unique_delivery_id"),
        ]

    def __str__(self) -> str:
        return f"{self.repository.name} push {self.push_id}"
