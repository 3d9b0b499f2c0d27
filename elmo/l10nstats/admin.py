"""Admin pages for comparisons and task runs."""

from django.contrib import admin

from elmo.l10nstats.models import Run, TaskRun


@admin.register(TaskRun)
class TaskRunAdmin(admin.ModelAdmin):
    list_display = ("task_id", "run_id", "state", "reason", "resolved")
    list_filter = ("state",)
    search_fields = ("task_id",)


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    list_display = ("locale", "config", "completion", "errors", "details_state", "created")
    list_filter = ("details_state",)
    raw_id_fields = ("revisions", "task_run")
