"""`make demo`: the worker end to end on local defaults.

Starts stand-ins for hg.mozilla.org (a few locale repositories) and the
Taskcluster queue, runs `consume-pulse --shards 4` against the local
RabbitMQ and a SQLite database under var/demo, streams pushes (merges
included) through the broker, then finishes a few compare-locales tasks,
waits until all is recorded, and prints what was ingested and whether it
matches the stand-ins.
"""

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
DEMO = PROJECT / "var" / "demo"
AMQP_URL = os.environ.get("PULSE_URL", "amqp://guest:guest@127.0.0.1:5672//")
FOREST = "l10n-central"
LOCALES = ["de", "fr", "ja", "pt-BR"]
NEW_LOCALE = "sat"
ROUNDS = 8
GITHUB_REPOSITORY = "mozilla-l10n/firefox-l10n"
QUEUES = ["queue/guest/demo-hgmo", "queue/guest/demo-taskcluster", "queue/guest/demo-github"]


# The demo's report: plain lines on standard output, apart from the stand-ins' logs.
REPORT = logging.getLogger("standins.demo.report")
REPORT.propagate = False
_report_handler = logging.StreamHandler(sys.stdout)
_report_handler.setFormatter(logging.Formatter("%(message)s"))
REPORT.addHandler(_report_handler)
REPORT.setLevel(logging.INFO)


def say(text: str = "") -> None:
    """One line (or block) of the report."""
    REPORT.info(text)


def main() -> int:
    if DEMO.exists():
        shutil.rmtree(DEMO)
    DEMO.mkdir(parents=True)
    os.environ.update(
        DJANGO_SETTINGS_MODULE="elmo.settings",
        DATABASE_URL=f"sqlite:///{DEMO / 'elmo.sqlite3'}",
        ELMO_REPOSITORY_BASE=str(DEMO / "clones"),
        PULSE_URL=AMQP_URL,
        PULSE_QUEUE_HGMO="demo-hgmo",
    )
    from standins.github import GitHubPublisher, GitHubStandIn
    from standins.hgmo import HgmoPublisher, HgmoStandIn
    from standins.taskcluster import TaskclusterPublisher, TaskclusterStandIn

    with HgmoStandIn(DEMO / "hgmo") as hgmo, HgmoPublisher(AMQP_URL) as publisher, \
            TaskclusterStandIn(DEMO / "taskcluster") as taskcluster, \
            TaskclusterPublisher(AMQP_URL) as task_publisher, \
            GitHubStandIn(DEMO / "github") as github, GitHubPublisher(AMQP_URL) as gh_publisher:
        os.environ["ELMO_HG_BASE_URL"] = hgmo.base_url
        os.environ["TASKCLUSTER_ROOT_URL"] = taskcluster.root_url
        os.environ["PULSE_QUEUE_TASKCLUSTER"] = "demo-taskcluster"
        os.environ["ELMO_GITHUB"] = "true"
        os.environ["ELMO_GITHUB_BASE_URL"] = github.base_url
        os.environ["PULSE_QUEUE_GITHUB"] = "demo-github"
        say(f"hg.mozilla.org stand-in at {hgmo.base_url}")
        say(f"Taskcluster queue stand-in at {taskcluster.root_url}")
        say(f"GitHub stand-in at {github.base_url}")
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        for locale in [*LOCALES, NEW_LOCALE]:
            hgmo.create_repository(f"{FOREST}/{locale}")
        call_command("add-forest", FOREST)
        call_command("add-repository", *[f"{FOREST}/{locale}" for locale in LOCALES])
        github.create_repository(GITHUB_REPOSITORY)
        call_command("add-repository", "--git", "--branch", "main", GITHUB_REPOSITORY)
        for queue in QUEUES:
            purge_queue(queue)

        log_path = DEMO / "worker.log"
        say(f"starting consume-pulse --shards 4 (log: {log_path.relative_to(PROJECT)})")
        worker = start_worker(log_path)
        try:
            sent = stream_pushes(hgmo, publisher)
            sent += stream_github_pushes(github, gh_publisher)
            say(f"published {sent} push messages; waiting for the worker")
            matched = wait_for_ingest(hgmo, timeout=180)
            matched &= wait_for_github(github, timeout=60)
            tasks = finish_tasks(hgmo, taskcluster, task_publisher)
            say(f"published {len(tasks)} compare-locales task results")
            compared = wait_for_comparisons(len(tasks), timeout=120)
            show_metrics(log_path)
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(90)
            for queue in QUEUES:
                delete_queue(queue)
        status = report(hgmo, github, matched)
        return report_comparisons(compared) or status


def start_worker(log_path: Path) -> subprocess.Popen:
    log = open(log_path, "wb")
    worker = subprocess.Popen(
        [sys.executable, str(PROJECT / "manage.py"), "consume-pulse", "--shards", "4",
         "--metrics-port", os.environ.get("ELMO_METRICS_PORT", "0")],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=PROJECT,
    )
    deadline = time.monotonic() + 60
    while "consuming" not in log_path.read_text(errors="replace"):
        if worker.poll() is not None or time.monotonic() > deadline:
            say(log_path.read_text(errors="replace"))
            raise SystemExit("the worker did not start")
        time.sleep(0.2)
    return worker


def purge_queue(name: str) -> None:
    """Leftovers of an earlier demo would name repositories of another stand-in."""
    import kombu

    with kombu.Connection(AMQP_URL) as connection:
        try:
            connection.channel().queue_purge(name)
        except Exception:
            pass  # the worker creates it


def delete_queue(name: str) -> None:
    """A durable queue left bound would collect every later message."""
    import kombu

    with kombu.Connection(AMQP_URL) as connection:
        connection.channel().queue_delete(name)


def stream_pushes(hgmo, publisher) -> int:
    """Pushes in rounds over the locales: single changesets, several
    changesets in one push, and merges; then a new repository."""
    from standins.hgmo import Commit

    sent = 0
    for round_number in range(ROUNDS):
        for index, locale in enumerate(LOCALES):
            name = f"{FOREST}/{locale}"
            user = f"localizer{index}@example.org"
            path = f"browser/round{round_number}.ftl"
            if round_number % 4 == 3:
                pushed = hgmo.push_merge(
                    name,
                    left={path: "left = Links\n"},
                    right={f"toolkit/round{round_number}.ftl": "r = R\n"},
                    user=user,
                    message=f"Merge round {round_number}",
                )
            elif round_number % 4 == 1:
                pushed = hgmo.push_commits(
                    name,
                    [
                        Commit({path: f"one = {round_number}\n"}, f"Round {round_number}, part 1"),
                        Commit(
                            {path: f"one = {round_number}\ntwo = 2\n"},
                            f"Round {round_number}, part 2",
                        ),
                    ],
                    user=user,
                )
            else:
                pushed = hgmo.push(
                    name,
                    {path: f"string = Round {round_number}\n"},
                    user=user,
                    message=f"Translate round {round_number}",
                    author=f"Localizer {index} <{user}>",
                )
            publisher.publish_changegroup(hgmo, name, [pushed.push_id])
            sent += 1
    new_repository = f"{FOREST}/{NEW_LOCALE}"
    for number in range(3):
        hgmo.push(new_repository, {"browser/new.ftl": f"n = {number}\n"})
    publisher.publish_newrepo(hgmo, new_repository)
    return sent + 1


def show_metrics(log_path: Path) -> None:
    """What the worker's /metrics says about the run, as Prometheus would see it."""
    import re
    import urllib.request

    match = re.search(r"/readyz on (http://\S+/)", log_path.read_text(errors="replace"))
    if not match:
        return
    with urllib.request.urlopen(match.group(1) + "metrics", timeout=10) as response:
        text = response.read().decode()
    wanted = ("elmo_worker_messages_processed_total", "elmo_worker_messages_received_total",
              "elmo_worker_clone_update_seconds_count", "elmo_worker_broker_connected",
              "elmo_worker_queue_backlog_messages", "elmo_worker_shard_restarts_total")
    say(f"\nfrom {match.group(1)}metrics (non-zero series):")
    for line in text.splitlines():
        if line.startswith(wanted) and not line.endswith(" 0.0"):
            say("  " + line)


def stream_github_pushes(github, gh_publisher) -> int:
    """Three pushes to the GitHub repository, the last one a merge."""
    name = GITHUB_REPOSITORY
    before = "0" * 40
    first = github.commit(name, {"de/browser.ftl": "a = A\n"}, "Add German")
    gh_publisher.publish_push(github.push_event(name, "main", before, first, created=True))
    second = github.commit(name, {"fr/browser.ftl": "a = A\n"}, "Add French")
    gh_publisher.publish_push(github.push_event(name, "main", first, second))
    side = github.commit(name, {"ja/browser.ftl": "a = A\n"}, "Add Japanese",
                         branch="ja", parents=[second])
    github.commit(name, {"de/browser.ftl": "a = B\n"}, "Update German")
    merge = github.merge(name, "main", side, "Merge Japanese")
    gh_publisher.publish_webhook(github.push_event(name, "main", second, merge))
    return 3


def wait_for_github(github, timeout: float) -> bool:
    from elmo.life.models import Repository

    want = set(github.log(GITHUB_REPOSITORY, "main"))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        repository = Repository.objects.get(name=GITHUB_REPOSITORY)
        if set(repository.changesets.values_list("revision", flat=True)) == want:
            return True
        time.sleep(0.5)
    return False


def finish_tasks(hgmo, taskcluster, task_publisher) -> list[str]:
    """One compare-locales task per locale, comparing its latest revision,
    with real compare-locales details; and one task that failed."""
    from standins.compare_locales_fixtures import FIXTURES, REFERENCE_DIR, run_compare_locales
    from standins.taskcluster import comparison, elmo_json

    details = run_compare_locales(REFERENCE_DIR, FIXTURES / "de", "de")
    tasks = []
    for locale in LOCALES:
        name = f"{FOREST}/{locale}"
        tip = hgmo.pushlog(name)[-1]["nodes"][-1]
        artifact = f"public/compare-locales/{locale}.json"
        document = elmo_json([comparison(locale, "browser/locales/l10n.toml", artifact,
                                         {name: tip}, details["summary"]["de"])],
                             repository=name)
        task_id = taskcluster.create_task(artifacts={"public/elmo.json": document,
                                                     artifact: details})
        task_publisher.publish_completed(taskcluster, task_id)
        tasks.append(task_id)
    failed = taskcluster.create_task(state="failed")
    task_publisher.publish_failed(taskcluster, failed)
    return tasks


def wait_for_comparisons(count: int, timeout: float) -> bool:
    from elmo.l10nstats.models import Run, TaskRun

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if Run.objects.count() == count and TaskRun.objects.filter(state="failed").exists():
            return True
        time.sleep(0.5)
    return False


def report_comparisons(compared: bool) -> int:
    from elmo.l10nstats.models import Run, TaskRun

    say()
    say(f"{'locale':<8} {'completion':>10} {'missing':>8} {'errors':>7}  revision")
    for run in Run.objects.select_related("locale").order_by("locale__code"):
        revisions = ", ".join(c.shortrev for c in run.revisions.all())
        say(f"{run.locale.code:<8} {run.completion:>9}% {run.missing:>8} {run.errors:>7}  "
              f"{revisions}")
    failed = TaskRun.objects.filter(state="failed").count()
    say(f"comparisons: {Run.objects.count()}, failed task runs: {failed}; to see them at "
          f"/comparisons/: DATABASE_URL=sqlite:///{DEMO / 'elmo.sqlite3'} "
          ".venv/bin/python manage.py runserver (the details need the Taskcluster stand-in, "
          "which stops with the demo)")
    say("comparisons recorded: " + ("yes" if compared else "NO"))
    return 0 if compared else 1


def expected(hgmo) -> dict[str, tuple[int, int]]:
    names = [f"{FOREST}/{locale}" for locale in [*LOCALES, NEW_LOCALE]]
    return {
        name: (len(log := hgmo.pushlog(name)), sum(len(push["nodes"]) for push in log))
        for name in names
    }


def ingested() -> dict[str, tuple[int, int]]:
    from elmo.life.models import Push, Repository

    result = {}
    for repository in Repository.objects.filter(kind=Repository.HG).order_by("name"):
        pushes = Push.objects.filter(repository=repository)
        changesets = repository.changesets.count()
        result[repository.name] = (pushes.count(), changesets)
    return result


def wait_for_ingest(hgmo, timeout: float) -> bool:
    want = expected(hgmo)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ingested() == want:
            return True
        time.sleep(0.5)
    return False


def clone_changesets(name: str) -> int:
    from elmo.pushes.clones import clean_environment, find_hg

    output = subprocess.run(
        [find_hg(), "-R", str(DEMO / "clones" / name), "log", "-T", "{node}\n"],
        env=clean_environment(),
        capture_output=True,
        text=True,
    ).stdout
    return len(output.split())


def report(hgmo, github, matched: bool) -> int:
    from elmo.life.models import Changeset, Push, Repository
    from shardworker.models import DeadLetter

    want = expected(hgmo)
    have = ingested()
    say()
    say(f"{'repository':<22} {'pushes':>13} {'changesets':>13} {'in clone':>9}")
    all_match = matched
    for name, (pushes, changesets) in sorted(want.items()):
        got_pushes, got_changesets = have.get(name, (0, 0))
        in_clone = clone_changesets(name)
        ok = (got_pushes, got_changesets, in_clone) == (pushes, changesets, changesets)
        all_match &= ok
        say(
            f"{name:<22} {got_pushes:>6} of {pushes:<4} {got_changesets:>6} of {changesets:<4}"
            f" {in_clone:>9}  {'ok' if ok else 'MISMATCH'}"
        )
    repository = Repository.objects.get(name=GITHUB_REPOSITORY)
    commits = len(github.log(GITHUB_REPOSITORY, "main"))
    got = repository.changesets.count()
    ok = got == commits
    all_match &= ok
    say(f"{GITHUB_REPOSITORY + ' (git)':<22} {repository.push_set.count():>6} {'':<7}"
          f"{got:>6} of {commits:<4} {'':>9}  {'ok' if ok else 'MISMATCH'}")
    merges = sum(1 for c in Changeset.objects.all() if c.parents.count() == 2)
    say()
    ours = sum(1 for body in DeadLetter.objects.values_list("body", flat=True)
               if any(url.encode() in bytes(body) for url in (hgmo.base_url, github.base_url)))
    others = DeadLetter.objects.count() - ours
    say(f"database: {Repository.objects.count()} repositories, {Push.objects.count()} pushes, "
          f"{Changeset.objects.exclude(revision='0' * 40).count()} changesets "
          f"({merges} merges), {ours} dead letters")
    if others:
        say(f"({others} more dead letters are messages that other publishers on this broker "
              "sent for hosts the demo does not know)")
    say(f"worker log: {(DEMO / 'worker.log').relative_to(PROJECT)}")
    say("matches the stand-in: " + ("yes" if all_match else "NO"))
    return 0 if all_match else 1


if __name__ == "__main__":
    sys.exit(main())
