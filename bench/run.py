"""`make bench`: the worker against baselines, side by side in one script.

Each figure is a ratio of two timings taken in the same run on the same
machine, printed as `ratio: <name> <value>` with both absolute times beside.
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"
QUEUE_SUFFIX = "bench-hgmo"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundle", type=Path, required=True,
                        help="a Mercurial bundle of a real localization history")
    parser.add_argument("--repeat", type=int, default=5, help="runs per timing of (a)")
    arguments = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="elmo-bench-"))
    os.environ.update(
        DJANGO_SETTINGS_MODULE="elmo.settings",
        DATABASE_URL=os.environ.get("DATABASE_URL", f"sqlite:///{workdir / 'bench.sqlite3'}"),
        ELMO_REPOSITORY_BASE=str(workdir / "clones"),
        PULSE_URL=AMQP_URL,
        PULSE_QUEUE_HGMO=QUEUE_SUFFIX,
        ELMO_LOG_LEVEL="WARNING",
    )
    from standins.hgmo import HgmoPublisher, HgmoStandIn

    try:
        with HgmoStandIn(workdir / "hgmo") as hgmo, HgmoPublisher(AMQP_URL) as publisher:
            os.environ["ELMO_HG_BASE_URL"] = hgmo.base_url
            import django

            django.setup()
            from django.core.management import call_command

            call_command("migrate", verbosity=0)
            one_push_versus_pull(hgmo, workdir, arguments.repeat)
            bounded_pushlog_versus_plain_read(hgmo)
            pull_with_extension_versus_plain(hgmo, workdir)
            api_pull_versus_command(hgmo, workdir, arguments.repeat)
            newrepo_versus_clone(hgmo, workdir, arguments.bundle)
            noop_dispatch_versus_bare_consumer(publisher, workdir, hgmo)
            burst_four_shards_versus_one(hgmo, publisher, workdir)
    finally:
        delete_queue(f"queue/guest/{QUEUE_SUFFIX}")
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def report(name: str, value: float, subject: float, baseline: float, what: str) -> None:
    print(f"ratio: {name} {value:.2f}  ({what}: {subject:.3f} s vs {baseline:.3f} s)",
          flush=True)


def reset_database() -> None:
    from django.core.management import call_command

    from elmo.life.models import NULL_REVISION, Branch, Changeset

    call_command("flush", interactive=False, verbosity=0)
    Branch.objects.get_or_create(id=1, defaults={"name": "default"})
    Changeset.objects.get_or_create(revision=NULL_REVISION, defaults={"user": ""})


def handler_for(clone_root: Path, base_url: str):
    from elmo.pushes.clones import Clones
    from elmo.pushes.hgmo import HgmoHandler

    return HgmoHandler(Clones(clone_root), base_url, http_timeout=60, pushlog_page=500,
                       pushlog_max_bytes=256 * 1024 * 1024)


def hg(*arguments: str) -> None:
    from elmo.pushes.clones import clean_environment, find_hg

    subprocess.run([find_hg(), *arguments], env=clean_environment(), check=True,
                   capture_output=True)


def one_push_versus_pull(hgmo, workdir: Path, repeat: int) -> None:
    """(a) Recording one small push, against a bare `hg pull` of it."""
    from elmo.life.models import Repository

    name = "bench/small"
    hgmo.create_repository(name)
    for number in range(20):
        hgmo.push(name, {f"locale/file{number}.ftl": f"key = value {number}\n"})
    reset_database()
    repository = Repository.objects.create(name=name, url=hgmo.base_url + name)
    handler = handler_for(workdir / "clones-a", hgmo.base_url)
    handler.sync(repository, None)
    bare = workdir / "bare-a"
    hg("clone", "--noupdate", hgmo.base_url + name, str(bare))

    worker_times, pull_times = [], []
    for number in range(repeat):
        pushed = hgmo.push(name, {"locale/new.ftl": f"new = {number}\n"})
        started = time.perf_counter()
        hg("-R", str(bare), "pull", hgmo.base_url + name)
        pull_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        handler.sync(repository, pushed.push_id)
        worker_times.append(time.perf_counter() - started)
    worker, pull = statistics.median(worker_times), statistics.median(pull_times)
    report("record-one-push-vs-hg-pull", worker / pull, worker, pull,
           "median sync of one push vs bare hg pull")


def bounded_pushlog_versus_plain_read(hgmo, repeat: int = 60) -> None:
    """The pushlog read as the worker does it (total-time watchdog, same-host
    redirects, size bound, field checks), against urllib reading and parsing
    the same page with nothing else. Run after (a), whose repository it reads."""
    import json
    import urllib.request

    from elmo.pushes.pushlog import fetch_page, pushlog_url

    base = hgmo.base_url + "bench/small"
    url = pushlog_url(base, 0, 20)
    worker_times, plain_times = [], []
    for _ in range(repeat):
        started = time.perf_counter()
        with urllib.request.urlopen(url, timeout=60) as response:
            json.loads(response.read())
        plain_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        fetch_page(base, 0, 20, timeout=60, max_bytes=256 * 1024 * 1024)
        worker_times.append(time.perf_counter() - started)
    worker, plain = statistics.median(worker_times), statistics.median(plain_times)
    report("bounded-pushlog-read-vs-plain-urllib", worker / plain, worker, plain,
           "median read of 20 pushes, checked and bounded vs plain")


def pull_with_extension_versus_plain(hgmo, workdir: Path, repeat: int = 20) -> None:
    """A no-op `hg pull` with the extension that keeps redirects on the host,
    against the same pull without it. Run after (a), whose repository it pulls."""
    from elmo.pushes.clones import SAME_HOST_EXTENSION

    url = hgmo.base_url + "bench/small"
    clone = workdir / "bare-extension"
    hg("clone", "--noupdate", url, str(clone))
    loaded = ["--config", f"extensions.elmo_same_host={SAME_HOST_EXTENSION}"]
    with_times, plain_times = [], []
    for _ in range(repeat):
        started = time.perf_counter()
        hg("-R", str(clone), "pull", url)
        plain_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        hg(*loaded, "-R", str(clone), "pull", url)
        with_times.append(time.perf_counter() - started)
    subject, plain = statistics.median(with_times), statistics.median(plain_times)
    report("hg-pull-same-host-extension-vs-plain", subject / plain, subject, plain,
           "median no-op pull with the redirect extension vs without")


def api_pull_versus_command(hgmo, workdir: Path, repeat: int) -> None:
    """How to drive Mercurial: its Python API in-process against the command."""
    from mercurial import exchange
    from mercurial import hg as hglib
    from mercurial import ui as uimod

    name = "bench/small"
    via_command = workdir / "command-pull"
    via_api = workdir / "api-pull"
    hg("clone", "--noupdate", hgmo.base_url + name, str(via_command))
    hg("clone", "--noupdate", hgmo.base_url + name, str(via_api))
    command_times, api_times = [], []
    for number in range(repeat):
        hgmo.push(name, {"locale/api.ftl": f"api = {number}\n"})
        started = time.perf_counter()
        hg("-R", str(via_command), "pull", hgmo.base_url + name)
        command_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        ui = uimod.ui.load()
        ui.setconfig(b"ui", b"quiet", b"true")
        repo = hglib.repository(ui, str(via_api).encode())
        peer = hglib.peer(ui, {}, (hgmo.base_url + name).encode())
        exchange.pull(repo, peer)
        peer.close()
        repo.close()
        api_times.append(time.perf_counter() - started)
    api, command = statistics.median(api_times), statistics.median(command_times)
    report("hg-python-api-pull-vs-hg-command", api / command, api, command,
           "median in-process pull vs hg pull subprocess")


def newrepo_versus_clone(hgmo, workdir: Path, bundle: Path) -> None:
    """(d) newrepo.1 of a real history, against a bare `hg clone` of it."""
    from elmo.life.models import Changeset, Forest

    name = "bench-forest/relay"
    hgmo.import_bundle(name, bundle.resolve())
    started = time.perf_counter()
    hg("clone", "--noupdate", hgmo.base_url + name, str(workdir / "bare-d"))
    clone = time.perf_counter() - started

    reset_database()
    Forest.objects.create(name="bench-forest", url=hgmo.base_url + "bench-forest")
    handler = handler_for(workdir / "clones-d", hgmo.base_url)
    from shardworker.deliveries import Delivery
    from standins.hgmo import HGPUSHES_EXCHANGE

    body = {"payload": {"type": "newrepo.1", "data": {"repo_url": hgmo.base_url + name}}}
    delivery = Delivery(HGPUSHES_EXCHANGE, name, json.dumps(body).encode())
    started = time.perf_counter()
    result = handler(delivery)
    newrepo = time.perf_counter() - started
    changesets = Changeset.objects.count() - 1
    report("newrepo-real-history-vs-hg-clone", newrepo / clone, newrepo, clone,
           f"newrepo.1 recording {changesets} changesets ({result.summary.split(',')[1]}) "
           "vs bare hg clone")


def start_worker(shards: int, log_path: Path, clone_root: Path) -> subprocess.Popen:
    environment = {**os.environ, "ELMO_REPOSITORY_BASE": str(clone_root),
                   "ELMO_LOG_LEVEL": "INFO"}
    log = open(log_path, "wb")
    process = subprocess.Popen(
        [sys.executable, str(PROJECT / "manage.py"), "consume-pulse", "--shards", str(shards),
         "--metrics-port", "0"],
        env=environment, stdout=log, stderr=subprocess.STDOUT, cwd=PROJECT,
    )
    # Timings start once every shard has imported Django and said so.
    while log_path.read_text(errors="replace").count(" ready") < shards:
        if process.poll() is not None:
            raise SystemExit(log_path.read_text())
        time.sleep(0.05)
    return process


def stop_worker(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(120)


def declare_queue() -> None:
    """Create and bind the worker's queue, so messages wait for it."""
    import kombu

    from shardworker import broker

    with kombu.Connection(AMQP_URL) as connection:
        for queue in broker.queues():
            queue(connection.channel()).declare()
            connection.channel().queue_purge(queue.name)


def delete_queue(name: str) -> None:
    import kombu

    with kombu.Connection(AMQP_URL) as connection:
        try:
            connection.channel().queue_delete(name)
        except Exception:
            pass


def wait_for_log(log_path: Path, needle: str, count: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while log_path.read_text(errors="replace").count(needle) < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {count} x {needle!r} in {log_path}")
        time.sleep(0.02)


def noop_dispatch_versus_bare_consumer(publisher, workdir: Path, hgmo) -> None:
    """(c) Messages that need no work, through the supervisor and shards,
    against a bare kombu consumer that only acknowledges."""
    import kombu

    from shardworker import broker

    count = 2000
    repositories = [f"l10n-central/locale{n}" for n in range(20)]

    def publish_all() -> None:
        declare_queue()
        for number in range(count):
            name = repositories[number % len(repositories)]
            publisher.publish_obsolete(hgmo, name, [])

    publish_all()
    received = 0

    def on_message(message) -> None:
        nonlocal received
        message.ack()
        received += 1

    started = time.perf_counter()
    with kombu.Connection(AMQP_URL) as connection:
        consumer = kombu.Consumer(connection.channel(), broker.queues(), on_message=on_message)
        consumer.qos(prefetch_count=16)
        with consumer:
            while received < count:
                connection.drain_events(timeout=10)
    bare = time.perf_counter() - started

    publish_all()
    log_path = workdir / "worker-noop.log"
    process = start_worker(4, log_path, workdir / "clones-c")
    started = time.perf_counter()
    wait_for_log(log_path, " ignored in ", count)
    supervised = time.perf_counter() - started
    stop_worker(process)
    report("noop-dispatch-supervisor-vs-bare-consumer", supervised / bare, supervised, bare,
           f"{count} messages, {count / supervised:.0f}/s vs {count / bare:.0f}/s")


def burst_four_shards_versus_one(hgmo, publisher, workdir: Path) -> None:
    """(b) A burst of 200 pushes over 20 repositories: 4 shards against 1."""
    from elmo.life.models import Push, Repository

    names = [f"burst/locale{n}" for n in range(20)]
    pushes = {}
    for name in names:
        hgmo.create_repository(name)
        pushes[name] = [hgmo.push(name, {"a.ftl": f"a = {n}\n"}).push_id for n in range(10)]

    timings = {}
    for shards in (1, 4):
        reset_database()
        for name in names:
            Repository.objects.create(name=name, url=hgmo.base_url + name)
        declare_queue()
        for number in range(10):
            for name in names:
                publisher.publish_changegroup(hgmo, name, [pushes[name][number]])
        log_path = workdir / f"worker-burst-{shards}.log"
        process = start_worker(shards, log_path, workdir / f"clones-b{shards}")
        started = time.perf_counter()
        wait_for_log(log_path, " processed in ", 200)
        timings[shards] = time.perf_counter() - started
        stop_worker(process)
        assert Push.objects.count() == 200, Push.objects.count()
    report("burst-200-pushes-4-shards-vs-1", timings[4] / timings[1], timings[4], timings[1],
           "drain with --shards 4 vs --shards 1")


if __name__ == "__main__":
    sys.exit(main())
