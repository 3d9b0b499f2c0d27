"""Pages of comparisons: the list, and one comparison with its details."""

from django.shortcuts import get_object_or_404, render

from elmo.l10nstats.details import DetailsUnavailable, ensure_details, files_of
from elmo.l10nstats.models import Run

KIND_LABELS = {
    "missingEntity": "missing",
    "obsoleteEntity": "obsolete",
    "missingFile": "missing file",
    "obsoleteFile": "obsolete file",
    "error": "error",
    "warning": "warning",
}


def comparisons(request):
    runs = (Run.objects.select_related("locale", "task_run")
            .order_by("-created")[:200])
    return render(request, "l10nstats/comparisons.html", {"runs": runs})


def comparison(request, run_id: int):
    run = get_object_or_404(Run.objects.select_related("locale", "task_run"), id=run_id)
    unavailable = ""
    try:
        run = ensure_details(run)
    except DetailsUnavailable as error:
        unavailable = str(error)
    files = []
    if run.details_state == Run.FETCHED:
        files = [(path, [(KIND_LABELS.get(kind, kind), text) for kind, text in rows])
                 for path, rows in files_of(run.details)]
    revisions = run.revisions.prefetch_related("repositories")
    return render(request, "l10nstats/comparison.html", {
        "run": run, "files": files, "unavailable": unavailable, "revisions": revisions,
    })
