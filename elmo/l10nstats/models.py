"""Compare-locales results, as Taskcluster's l10n automation reports them:
one Run per comparison of a locale, with its counts and the revisions it
compared, and the task runs that produced them."""

from django.db import models

from elmo.life.models import Changeset, Locale, Tree


class TaskRun(models.Model):
    """One run of a Taskcluster task that reported (or failed to report)
    comparisons.

    Fields: task_id, run_id, state (completed, failed or exception), reason
    (why the run resolved so), task_group_id, worker (group/id), resolved
    (when the queue resolved it), recorded (when the worker saw it).
    """

    task_id = models.CharField(max_length=22)
    run_id = models.PositiveIntegerField()
    state = models.CharField(max_length=20)
    reason = models.CharField(max_length=100, blank=True, default="")
    task_group_id = models.CharField(max_length=22, blank=True, default="")
    worker = models.CharField(max_length=200, blank=True, default="")
    resolved = models.DateTimeField(null=True, blank=True)
    recorded = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["task_id", "run_id"], name="unique_task_run"),
        ]

    def __str__(self) -> str:
        return f"{self.task_id}/{self.run_id} {self.state}"


class Run(models.Model):
    """One compare-locales comparison of a locale against its reference.

    Fields, with elmo's names: locale, tree (when one matches), config (the
    project configuration compared), revisions (the changesets compared),
    the counts errors, warnings, missing, missing_w, report, obsolete,
    changed, changed_w, unchanged, unchanged_w, keys, total and completion
    (percent of strings translated). From Taskcluster: task_run, artifact
    (the name of the detail file) and the details once the web side fetched
    them: details, details_state, details_fetched, details_error.
    """

    PENDING = "pending"
    FETCHED = "fetched"
    EXPIRED = "expired"
    FAILED = "failed"
    DETAILS_STATES = [(PENDING, "not fetched yet"), (FETCHED, "fetched"),
                      (EXPIRED, "expired"), (FAILED, "failed")]

    locale = models.ForeignKey(Locale, on_delete=models.PROTECT)
    tree = models.ForeignKey(Tree, null=True, blank=True, on_delete=models.SET_NULL)
    config = models.CharField(max_length=400)
    compare_locales_version = models.CharField(max_length=40, blank=True, default="")
    revisions = models.ManyToManyField(Changeset, blank=True)
    task_run = models.ForeignKey(TaskRun, on_delete=models.CASCADE, related_name="comparisons")

    errors = models.IntegerField(default=0)
    warnings = models.IntegerField(default=0)
    missing = models.IntegerField(default=0)
    missing_w = models.IntegerField(default=0)
    report = models.IntegerField(default=0)
    obsolete = models.IntegerField(default=0)
    changed = models.IntegerField(default=0)
    changed_w = models.IntegerField(default=0)
    unchanged = models.IntegerField(default=0)
    unchanged_w = models.IntegerField(default=0)
    keys = models.IntegerField(default=0)
    total = models.IntegerField(default=0)
    completion = models.SmallIntegerField(default=0)

    artifact = models.CharField(max_length=400)
    details = models.JSONField(null=True, blank=True)
    details_state = models.CharField(max_length=10, choices=DETAILS_STATES, default=PENDING)
    details_fetched = models.DateTimeField(null=True, blank=True)
    details_error = models.TextField(blank=True, default="")
    created = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["task_run", "locale", "config"],
                                    name="one_comparison_per_task_run_locale_config"),
        ]

    def __str__(self) -> str:
        return f"{self.locale.code} {self.config} ({self.completion}%)"
