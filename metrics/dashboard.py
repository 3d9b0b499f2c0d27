"""The Grafana dashboard of the Pulse worker, as code.

    .venv/bin/python metrics/dashboard.py          # rewrite grafana/dashboards/elmo-worker.json
    .venv/bin/python metrics/dashboard.py --check  # exit 1 if the JSON is not what this makes

The dashboard is built with the Grafana Foundation SDK (types generated
for Grafana 11.6) and written with sorted keys, so the same code always
makes the same bytes. Edit this file, run it, and commit both files.

Queries go to the Prometheus data source picked in `$datasource` and can
be narrowed to some workers with `$instance`. Every metric they name is
one the worker exports (tests/test_operator_artefacts.py checks that
against a live scrape) or `up`, which Prometheus adds to the
`elmo-worker` scrape job.
"""

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as builders
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model

OUTPUT = Path(__file__).resolve().parent / "grafana" / "dashboards" / "elmo-worker.json"
UID = "elmo-worker"
JOB = "elmo-worker"
# The same numbers as in alerts.yml, drawn as lines where the alerts fire.
BACKLOG_ALERT_MESSAGES = 6000
RESTART_LOOP_RESTARTS = 3

DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
WORKERS = 'instance=~"$instance"'
RATE = "$__rate_interval"


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class Chart:
    """One panel: a title, what it tells the operator, and its queries."""

    title: str
    description: str
    queries: tuple[Query, ...]
    unit: str = "short"
    width: int = 12
    kind: str = "timeseries"
    threshold: float | None = None
    mappings: dict[str, tuple[str, str]] = field(default_factory=dict)


def quantile(q: float, histogram: str, by: str = "") -> str:
    labels = f"{by}, le" if by else "le"
    return (f"histogram_quantile({q}, sum by ({labels}) "
            f"(rate({histogram}_bucket{{{WORKERS}}}[{RATE}])))")


ROWS: tuple[tuple[str, tuple[Chart, ...]], ...] = (
    ("Now", (
        Chart(
            "Workers up",
            "Workers that Prometheus scraped at the last attempt. Below the number you run: "
            "see the ElmoWorkerDown alert in docs/operations.md.",
            (Query(f'sum(up{{job="{JOB}", {WORKERS}}})', "workers up"),),
            width=8, kind="stat", threshold=1,
        ),
        Chart(
            "Broker connected",
            "Whether each worker is connected to Pulse and consuming.",
            (Query(f"min by (instance) (elmo_worker_broker_connected{{{WORKERS}}})",
                   "{{instance}}"),),
            width=8, kind="stat",
            mappings={"0": ("disconnected", "red"), "1": ("connected", "green")},
        ),
        Chart(
            "Since the last processed message",
            "Seconds since a message was last recorded, per source. Empty until the "
            "first message after the worker started.",
            (Query("time() - max by (source) "
                   f"(elmo_worker_last_success_timestamp_seconds{{{WORKERS}}})",
                   "{{source}}"),),
            unit="s", width=8, kind="stat",
        ),
    )),
    ("Messages", (
        Chart(
            "Messages settled per second, by outcome",
            "Messages acknowledged (processed, ignored, unknown_repository, dead_lettered) "
            "or returned to the queue (requeued), per second.",
            (Query("sum by (source, outcome) "
                   f"(rate(elmo_worker_messages_processed_total{{{WORKERS}}}[{RATE}]))",
                   "{{source}} {{outcome}}"),),
        ),
        Chart(
            "Processing time percentiles",
            "Time a shard spent on one message: a duplicate takes milliseconds, a first "
            "clone of a big repository can take many minutes.",
            tuple(
                Query(quantile(q, "elmo_worker_processing_seconds", "source"),
                      f"p{round(q * 100)} {{{{source}}}}")
                for q in (0.5, 0.95, 0.99)
            ),
            unit="s",
        ),
        Chart(
            "Queue backlog",
            "Messages waiting in the worker's queues, as the broker last said. The line "
            "is the ElmoWorkerBacklogNearPulseLimit threshold.",
            (Query(f"max by (queue) (elmo_worker_queue_backlog_messages{{{WORKERS}}})",
                   "{{queue}}"),),
            threshold=BACKLOG_ALERT_MESSAGES,
        ),
        Chart(
            "Messages in flight per shard",
            "Messages received and not yet settled, per shard: a shard stuck at its "
            "maximum while others idle holds a slow repository.",
            (Query(f"max by (instance, shard) (elmo_worker_messages_in_flight{{{WORKERS}}})",
                   "shard {{shard}} {{instance}}"),),
        ),
    )),
    ("Trouble", (
        Chart(
            "Dead letters in the previous hour",
            "Messages kept as dead letters; read them with ./manage.py pulse-deadletters "
            "list or in the admin.",
            (Query("sum by (source) "
                   f"(increase(elmo_worker_dead_letters_total{{{WORKERS}}}[1h]))",
                   "{{source}}"),),
        ),
        Chart(
            "Shard restarts in the previous 15 minutes, by reason",
            "Shard processes that died and were restarted: exit, signal (killed, often "
            "out of memory) or timeout (--message-timeout). The line is the "
            "ElmoWorkerShardRestartLoop threshold.",
            (Query("sum by (reason) "
                   f"(increase(elmo_worker_shard_restarts_total{{{WORKERS}}}[15m]))",
                   "{{reason}}"),),
            threshold=RESTART_LOOP_RESTARTS,
        ),
    )),
    ("Clones", (
        Chart(
            "Clone lock wait (p95)",
            "Time spent waiting for a clone's file lock; high when several workers work "
            "on the same repository.",
            (Query(quantile(0.95, "elmo_worker_lock_wait_seconds"), "p95"),),
            unit="s",
        ),
        Chart(
            "Clone and pull time (p95), by operation",
            "Time spent in hg clone (a new repository) and hg pull.",
            (Query(quantile(0.95, "elmo_worker_clone_update_seconds", "operation"),
                   "{{operation}}"),),
            unit="s",
        ),
    )),
)


def targets(chart: Chart) -> list[prometheus.Dataquery]:
    return [
        prometheus.Dataquery().expr(query.expr).legend_format(query.legend)
        .ref_id(chr(ord("A") + index)).range()
        for index, query in enumerate(chart.queries)
    ]


def thresholds(chart: Chart) -> builders.ThresholdsConfig:
    steps = [model.Threshold(value=None, color="green")]
    if chart.threshold is not None:
        base, above = ("red", "green") if chart.kind == "stat" else ("green", "red")
        steps = [model.Threshold(value=None, color=base),
                 model.Threshold(value=chart.threshold, color=above)]
    return builders.ThresholdsConfig().mode(model.ThresholdsMode.ABSOLUTE).steps(steps)


def panel(chart: Chart, panel_id: int):
    if chart.kind == "stat":
        built = (
            stat.Panel()
            .graph_mode(common.BigValueGraphMode.AREA)
            .color_mode(common.BigValueColorMode.VALUE)
            .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]))
        )
        if chart.mappings:
            built = built.mappings([model.ValueMap(options={
                value: model.ValueMappingResult(text=text, color=color)
                for value, (text, color) in chart.mappings.items()
            })])
    else:
        built = (
            timeseries.Panel()
            .line_width(1)
            .fill_opacity(10)
            .legend(common_builders.VizLegendOptions()
                    .display_mode(common.LegendDisplayMode.LIST)
                    .placement(common.LegendPlacement.BOTTOM)
                    .show_legend(True))
        )
        if chart.threshold is not None:
            built = built.thresholds_style(
                common_builders.GraphThresholdsStyleConfig()
                .mode(common.GraphThresholdsStyleMode.DASHED))
    return (
        built.id(panel_id).title(chart.title).description(chart.description)
        .datasource(DATASOURCE).unit(chart.unit).min(0).thresholds(thresholds(chart))
        .span(chart.width).height(4 if chart.kind == "stat" else 8)
        .targets(targets(chart))
    )


def build() -> model.Dashboard:
    """The dashboard as the SDK's model."""
    dashboard = (
        builders.Dashboard("elmo worker")
        .uid(UID)
        .description("The Pulse worker of elmo: messages, backlog, failures and clones. "
                     "Generated by metrics/dashboard.py.")
        .tags(["elmo", "pulse"])
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("browser")
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .with_variable(
            builders.DatasourceVariable("datasource").label("Data source").type("prometheus"))
        .with_variable(
            builders.QueryVariable("instance").label("Worker").datasource(DATASOURCE)
            .query("label_values(elmo_worker_build_info, instance)")
            .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(model.VariableSort.ALPHABETICAL_ASC)
            .multi(True).include_all(True).all_value(".+"))
    )
    panel_id = 0
    for title, charts in ROWS:
        panel_id += 1
        dashboard = dashboard.with_row(builders.Row(title).id(panel_id))
        for chart in charts:
            panel_id += 1
            dashboard = dashboard.with_panel(panel(chart, panel_id))
    return dashboard.build()


def render() -> str:
    """The dashboard JSON, byte for byte as committed."""
    return JSONEncoder(sort_keys=True, indent=2).encode(build()) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help=f"compare with {OUTPUT.name} instead of writing it")
    options = parser.parse_args(argv)
    text = render()
    if options.check:
        if not OUTPUT.exists() or OUTPUT.read_text() != text:
            sys.stderr.write(f"{OUTPUT} is out of date: run metrics/dashboard.py\n")
            return 1
        return 0
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
