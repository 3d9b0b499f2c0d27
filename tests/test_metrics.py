"""Metrics as Prometheus sees them: a live scrape of the running worker that
promtool accepts, and a real Prometheus server whose counts match."""

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import wait_until
from tests.test_hgmo_ingest import track, wait_for_outcome

pytestmark = pytest.mark.django_db(transaction=True)

METRIC_NAMES = {
    "elmo_worker_messages_received_total",
    "elmo_worker_messages_processed_total",
    "elmo_worker_processing_seconds_bucket",
    "elmo_worker_messages_in_flight",
    "elmo_worker_redeliveries_total",
    "elmo_worker_dead_letters_total",
    "elmo_worker_shard_restarts_total",
    "elmo_worker_lock_wait_seconds_bucket",
    "elmo_worker_clone_update_seconds_bucket",
    "elmo_worker_broker_connected",
    "elmo_worker_queue_backlog_messages",
    "elmo_worker_last_success_timestamp_seconds",
    "elmo_worker_build_info",
}


def status_url(worker) -> str:
    match = wait_until(lambda: re.search(r"/readyz on (http://\S+/)", worker.log()), 30,
                       "the status server")
    return match.group(1)


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one series in a text exposition (0 when absent)."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{key}="{value}"' in line for key, value in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def publish_known_work(hgmo, publisher, worker) -> int:
    """Three pushes over two repositories and one bad message."""
    track(hgmo, "l10n-central/de")
    track(hgmo, "l10n-central/fr")
    bodies = []
    for name in ("l10n-central/de", "l10n-central/fr", "l10n-central/de"):
        pushed = hgmo.push(name, {"a.ftl": f"a = {time.time()}\n"})
        bodies.append((publisher.publish_changegroup(hgmo, name, [pushed.push_id]), name))
    for body, name in bodies:
        wait_for_outcome(worker, body, name)
    publisher.publish_raw("l10n-central/de", b"{broken")
    wait_for_outcome(worker, b"{broken", "l10n-central/de", "dead_lettered")
    return len(bodies)


def test_live_scrape_has_every_metric_and_passes_promtool(hgmo, publisher, start_worker):
    worker = start_worker(shards=2)
    base = status_url(worker)
    processed = publish_known_work(hgmo, publisher, worker)

    status, text = get(base + "metrics")
    assert status == 200
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines()
             if line and not line.startswith("#")}
    assert METRIC_NAMES <= names
    assert sample(text, "elmo_worker_messages_processed_total", source="hgmo",
                  outcome="processed") == processed
    assert sample(text, "elmo_worker_dead_letters_total", source="hgmo") == 1
    assert sample(text, "elmo_worker_broker_connected") == 1
    assert sample(text, "elmo_worker_clone_update_seconds_count", operation="cloned") == 2
    assert sample(text, "elmo_worker_lock_wait_seconds_count") == processed
    assert sample(text, "elmo_worker_build_info", version="0.1.0") == 1

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    check = subprocess.run([promtool, "check", "metrics"], input=text, text=True,
                           capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_health_and_readiness(hgmo, start_worker):
    worker = start_worker(shards=2)
    base = status_url(worker)

    assert get(base + "readyz") == (200, "consuming\n")
    wait_until(lambda: get(base + "healthz")[0] == 200, 30, "healthy")
    assert get(base + "nothing")[0] == 404


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_prometheus_server_counts_what_was_sent(hgmo, publisher, start_worker, tmp_path: Path):
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.skip("prometheus is not installed (Debian package prometheus)")
    worker = start_worker(shards=2)
    target = urllib.parse.urlsplit(status_url(worker)).netloc
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n  - job_name: elmo-worker\n"
        f"    static_configs:\n      - targets: ['{target}']\n"
    )
    port = free_port()
    server = subprocess.Popen(
        [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        processed = publish_known_work(hgmo, publisher, worker)
        query = ('sum(elmo_worker_messages_processed_total'
                 '{job="elmo-worker",outcome="processed"})')

        def prometheus_says() -> float | None:
            url = (f"http://127.0.0.1:{port}/api/v1/query?"
                   + urllib.parse.urlencode({"query": query}))
            try:
                status, body = get(url)
            except OSError:
                return None
            result = json.loads(body)["data"]["result"] if status == 200 else []
            return float(result[0]["value"][1]) if result else None

        wait_until(lambda: prometheus_says() == processed, 60,
                   f"Prometheus to see {processed} processed messages")
    finally:
        server.terminate()
        server.wait(30)
