"""The worker's Prometheus metrics, in multiprocess mode.

Import this module only after `use_directory` ran in the process: the
client picks its storage when the metrics are created. The supervisor and
each shard write files named after their role (`supervisor`, `shard0`, ...),
not their pid, so a restarted shard continues its own files and the
directory does not grow with restarts.
"""

import os
import shutil
from pathlib import Path

PREFIX = "elmo_worker"
VERSION = "0.1.0"
# From 5 ms (a duplicate message) to an hour (a first clone of a big history).
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300,
                   600, 1800, 3600)


def use_directory(directory: Path, role: str, empty: bool = False) -> None:
    """Point the Prometheus client of this process at `directory`."""
    directory = Path(directory)
    if empty and directory.exists():
        for entry in directory.iterdir():
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    directory.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    from prometheus_client import values

    values.ValueClass = values.MultiProcessValue(process_identifier=lambda: role)


def _define():
    from prometheus_client import Counter, Gauge, Histogram

    def name(text: str) -> str:
        return f"{PREFIX}_{text}"

    return {
        "received": Counter(name("messages_received"), "Messages received from the broker",
                            ["source"]),
        "processed": Counter(name("messages_processed"),
                             "Messages settled, by outcome (acknowledged or returned)",
                             ["source", "outcome"]),
        "processing": Histogram(name("processing_seconds"),
                                "Seconds a shard spent on one message", ["source"],
                                buckets=SECONDS_BUCKETS),
        "in_flight": Gauge(name("messages_in_flight"),
                           "Messages received and not yet settled, per shard", ["shard"],
                           multiprocess_mode="mostrecent"),
        "redeliveries": Counter(name("redeliveries"),
                                "Messages the broker delivered again", ["source"]),
        "dead_letters": Counter(name("dead_letters"), "Messages kept as dead letters",
                                ["source"]),
        "restarts": Counter(name("shard_restarts"), "Shard processes restarted, by reason",
                            ["reason"]),
        "lock_wait": Histogram(name("lock_wait_seconds"),
                               "Seconds spent waiting for a clone's file lock",
                               buckets=SECONDS_BUCKETS),
        "clone_update": Histogram(name("clone_update_seconds"),
                                  "Seconds spent cloning or pulling a repository",
                                  ["operation"], buckets=SECONDS_BUCKETS),
        "clone_repairs": Counter(name("clone_repairs"),
                                 "Damaged clones repaired, by repair",
                                 ["repair"]),
        "connected": Gauge(name("broker_connected"),
                           "1 while the worker is connected to the broker and consuming",
                           multiprocess_mode="mostrecent"),
        "backlog": Gauge(name("queue_backlog_messages"),
                         "Messages waiting in the worker's queue, as the broker last said",
                         ["queue"], multiprocess_mode="mostrecent"),
        "last_success": Gauge(name("last_success_timestamp_seconds"),
                              "Unix time of the last message processed successfully",
                              ["source"], multiprocess_mode="max"),
        "build": Gauge(name("build_info"), "The worker's version; always 1", ["version"],
                       multiprocess_mode="max"),
    }


_metrics: dict | None = None


def get() -> dict:
    """The metric objects, created on first use."""
    global _metrics
    if _metrics is None:
        _metrics = _define()
    return _metrics


def scrape() -> bytes:
    """The text exposition of every process's metrics."""
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry)
