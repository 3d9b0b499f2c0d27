"""`./manage.py consume-pulse`: run the Pulse worker in the foreground."""

import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from amqp.exceptions import AccessRefused
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connections

from elmo.pushes.clones import clean_environment, find_hg
from shardworker import broker, metrics
from shardworker.checks import ensure_migrated

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = (
        "Consume hg.mozilla.org push messages (and, with TASKCLUSTER_ROOT_URL set, "
        "Taskcluster compare-locales results; with ELMO_GITHUB=true, GitHub pushes) from "
        "Pulse and record them in the database, "
        "with one supervisor and N shard processes. SIGTERM or Ctrl-C drains: in-flight "
        "messages finish and are acknowledged, the others go back to the queue. Settings "
        "come from the environment (PULSE_*, DATABASE_URL, ELMO_*); see docs/operations.md."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--shards", type=int, default=settings.ELMO_SHARDS,
            help="number of shard processes; one repository always goes to the same shard "
                 "(default: ELMO_SHARDS or 4)",
        )
        parser.add_argument(
            "--prefetch", type=int, default=None,
            help="messages the broker may hand over unacknowledged (default: 4 per shard)",
        )
        parser.add_argument(
            "--drain-seconds", type=float, default=settings.ELMO_DRAIN_SECONDS,
            help="on SIGTERM, how long in-flight messages may take to finish (default: "
                 "ELMO_DRAIN_SECONDS or 60)",
        )
        parser.add_argument(
            "--max-crashes", type=int, default=3,
            help="times a message may kill its shard before it becomes a dead letter "
                 "(default: 3)",
        )
        parser.add_argument(
            "--metrics-address", default=settings.ELMO_METRICS_ADDRESS,
            help="address for /metrics, /healthz and /readyz (default: ELMO_METRICS_ADDRESS "
                 "or 127.0.0.1)",
        )
        parser.add_argument(
            "--metrics-port", type=int, default=settings.ELMO_METRICS_PORT,
            help="port for /metrics, /healthz and /readyz; 0 picks a free one and logs it "
                 "(default: ELMO_METRICS_PORT or 9191)",
        )
        parser.add_argument(
            "--message-timeout", type=float, default=3600.0,
            help="seconds a shard may spend on one message before it is killed and the "
                 "message counts as a crash (default: 3600)",
        )

    def handle(self, *args, **options) -> None:
        shards = options["shards"]
        if not 1 <= shards <= 64:
            raise CommandError(f"--shards must be between 1 and 64, not {shards}.")
        prefetch = options["prefetch"] or 4 * shards
        if not shards <= prefetch <= 10_000:
            raise CommandError(f"--prefetch must be between {shards} and 10000.")
        if options["max_crashes"] < 1:
            raise CommandError("--max-crashes must be at least 1.")
        if not 0 <= options["metrics_port"] <= 65535:
            raise CommandError("--metrics-port (ELMO_METRICS_PORT) must be between 0 and 65535.")
        check_environment()
        connections.close_all()
        with metrics_directory() as directory:
            metrics.use_directory(directory, "supervisor", empty=True)
            from shardworker.supervisor import Supervisor

            address = (options["metrics_address"], options["metrics_port"])
            try:
                supervisor = Supervisor(
                    shards, prefetch,
                    drain_seconds=options["drain_seconds"],
                    max_crashes=options["max_crashes"],
                    message_timeout=options["message_timeout"],
                    status_address=address,
                )
            except OSError as error:
                raise CommandError(f"cannot serve metrics on {address[0]}:{address[1]}: "
                                   f"{error.strerror or error}") from None
            supervisor.run()


@contextmanager
def metrics_directory() -> Iterator[Path]:
    """PROMETHEUS_MULTIPROC_DIR, emptied; or a private one removed at exit."""
    if settings.PROMETHEUS_MULTIPROC_DIR:
        yield Path(settings.PROMETHEUS_MULTIPROC_DIR)
        return
    directory = Path(tempfile.mkdtemp(prefix="elmo-metrics-"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def check_broker_credentials() -> None:
    """Wrong credentials are the operator's to fix: stop. A broker that is
    down may come back: the supervisor keeps trying."""
    connection = broker.connect()
    try:
        connection.connect()
    except AccessRefused:
        raise CommandError(
            f"the broker at {broker.safe_url(connection)} refused the credentials; "
            "check PULSE_USER and PULSE_PASSWORD (or PULSE_URL)."
        ) from None
    except Exception as error:
        logger.warning("broker at %s not reachable yet (%s); will keep trying",
                       broker.safe_url(connection), str(error).strip() or type(error).__name__)
    finally:
        connection.release()


def check_environment() -> None:
    """Fail at start, in one sentence, on what would otherwise fail in a shard."""
    broker.pulse_url()
    ensure_migrated()
    check_broker_credentials()
    try:
        hg = find_hg(settings.ELMO_HG_COMMAND)
    except FileNotFoundError as error:
        raise CommandError(str(error)) from None
    try:
        subprocess.run([hg, "version", "--quiet"], env=clean_environment(), check=True,
                       capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    except subprocess.CalledProcessError as error:
        raise CommandError(f"ELMO_HG_COMMAND: {hg} does not run as Mercurial (`{hg} version` "
                           f"exited with status {error.returncode}).") from None
    except (OSError, subprocess.SubprocessError) as error:
        raise CommandError(f"ELMO_HG_COMMAND: {hg} does not run as Mercurial "
                           f"({getattr(error, 'strerror', None) or error}).") from None
    root = settings.ELMO_REPOSITORY_BASE
    if not os.path.isdir(root):
        # A typo here would start an empty clone root and clone everything again.
        logger.warning("ELMO_REPOSITORY_BASE %s does not exist; creating it", root)
    try:
        os.makedirs(root, exist_ok=True)
    except OSError as error:
        raise CommandError(f"ELMO_REPOSITORY_BASE {root} cannot be created: "
                           f"{error.strerror}") from None
    if not os.access(root, os.W_OK):
        raise CommandError(f"ELMO_REPOSITORY_BASE {root} is not writable.")
    if urlsplit(settings.ELMO_HG_BASE_URL).scheme != "https":
        # Plain http is for a local stand-in; say so once.
        logger.warning("ELMO_HG_BASE_URL %s is not https", settings.ELMO_HG_BASE_URL)
