"""The broker password never reaches the worker's output: not while it works, not while it
fails to connect, and not when the broker URL is wrong."""

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import PROJECT, wait_until
from tests.helpers import short_id

pytestmark = pytest.mark.django_db(transaction=True)

SECRET = "s3cretpw"


def test_working_worker_logs_the_broker_without_its_password(hgmo, publisher, start_worker):
    worker = start_worker(shards=2, PULSE_URL="amqp://guest:guest@127.0.0.1:5672//")
    publisher.publish_raw("l10n-central/de", b"not json")
    needle = f"msg={short_id(b'not json', 'l10n-central/de')} dead_lettered"
    wait_until(lambda: needle in worker.log(), 60, needle)
    assert worker.stop() == 0

    log = worker.log()
    assert re.search(r"connected to amqp://guest(:\*+)?@127\.0\.0\.1:5672/", log), log[:2000]
    assert "guest:guest" not in log
    assert ":guest@" not in log


def run_until_it_has_failed(environment: dict[str, str], log_path: Path,
                            failures: int = 2) -> str:
    """Run consume-pulse until it has reported `failures` failed connections (or exited),
    then stop it; returns everything it wrote."""
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, str(PROJECT / "manage.py"), "consume-pulse", "--shards", "1"],
            env=environment, stdout=log, stderr=subprocess.STDOUT, cwd=PROJECT,
        )
    try:
        def failed_enough() -> bool:
            text = log_path.read_text(errors="replace")
            return text.count("cannot consume from") >= failures or process.poll() is not None
        wait_until(failed_enough, 30, "failed connection attempts")
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    return log_path.read_text(errors="replace")


@pytest.mark.parametrize("settings, secrets", [
    ({"PULSE_URL": f"amqp://guest:{SECRET}@127.0.0.1:5672//"}, [SECRET]),
    ({"PULSE_URL": f"amqp://guest:{SECRET}@127.0.0.1:1//"}, [SECRET]),
    ({"PULSE_URL": f"amqps://guest:{SECRET}@127.0.0.1:5672//"}, [SECRET]),
    ({"PULSE_URL": f"amqp://guest:{SECRET}%2Fx%40y@127.0.0.1:5672//"},
     [SECRET, "%2Fx%40y", "/x@y"]),
    ({"PULSE_URL": f"amqp://guest:{SECRET}@127.0.0.1:notaport//"}, [SECRET]),
    ({"PULSE_URL": f"http://guest:{SECRET}@127.0.0.1:5672//"}, [SECRET]),
    ({"PULSE_USER": "guest", "PULSE_PASSWORD": SECRET, "PULSE_HOST": "127.0.0.1"}, [SECRET]),
    ({"PULSE_USER": "guest", "PULSE_PASSWORD": f"{SECRET}/:@", "PULSE_HOST": "127.0.0.1"},
     [SECRET, "%2F%3A%40"]),
], ids=["wrong-password", "refused-port", "tls-to-plain-port", "escaped-password",
        "bad-port", "wrong-scheme", "separate-settings", "separate-settings-escaped"])
def test_failing_connection_never_logs_the_password(worker_environment, tmp_path, settings,
                                                    secrets):
    environment = {key: value for key, value in worker_environment.items()
                   if not key.startswith("PULSE_") or key == "PULSE_QUEUE_HGMO"}
    environment.update(settings)
    started = time.monotonic()

    output = run_until_it_has_failed(environment, tmp_path / "worker.log")

    assert time.monotonic() - started < 60
    assert output.strip(), "the worker said nothing about its failure"
    assert "cannot consume from" in output or "PULSE_URL" in output or "Error" in output, output
    for secret in secrets:
        assert secret not in output, output


def test_broker_url_with_a_bad_port_stops_with_one_line_naming_the_variable(
        worker_environment, tmp_path):
    environment = {**worker_environment,
                   "PULSE_URL": f"amqp://guest:{SECRET}@127.0.0.1:notaport//"}

    output = run_until_it_has_failed(environment, tmp_path / "worker.log")

    assert "Traceback" not in output, output
    assert "PULSE_URL" in output, output


@pytest.mark.parametrize("command", ["/nonexistent/hg", "/bin/false"], ids=["missing", "not-hg"])
def test_hg_command_that_does_not_run_stops_with_one_line_naming_the_variable(
        worker_environment, tmp_path, command):
    environment = {**worker_environment, "ELMO_HG_COMMAND": command}

    output = run_until_it_has_failed(environment, tmp_path / "worker.log")

    assert "Traceback" not in output, output
    assert f"ELMO_HG_COMMAND: {command} does not run as Mercurial" in output, output
