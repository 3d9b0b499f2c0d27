"""The operator artefacts, checked against the worker and the tools that read them.

- The Grafana dashboard (metrics/dashboard.py and the JSON it makes) and the Prometheus
  alerts (metrics/alerts.yml) query only metrics and labels that a running worker exports,
  parse in promtool, and pass their promtool unit tests.
- The example Prometheus and Grafana configuration agree with the compose stack.
- The container image: no Docker engine runs in CI, so the Dockerfile and
  docker-compose.yml are read statically, and the entrypoint and the healthcheck command
  are run here, outside a container, against the real commands and a real worker.
"""

import importlib.util
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import django
import pytest
import yaml
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.cog.runtime import UnknownDataquery
from grafana_foundation_sdk.models.dashboard import Dashboard

from tests.conftest import PROJECT, wait_until
from tests.test_metrics import get, publish_known_work, status_url

METRICS = PROJECT / "metrics"
DASHBOARD_JSON = METRICS / "grafana" / "dashboards" / "elmo-worker.json"
ALERTS = METRICS / "alerts.yml"
ENTRYPOINT = PROJECT / "docker" / "entrypoint.sh"
DOCKERFILE = PROJECT / "Dockerfile"
COMPOSE = PROJECT / "docker-compose.yml"

# Metric names in PromQL: a worker metric or Prometheus's own `up`, followed by a
# selector, a range, a comma, a closing parenthesis, whitespace or the end. Histograms
# are queried through their `_bucket` (`_count`, `_sum`) series, which is how they appear
# in a scrape too, so names compare as they are.
METRIC_NAME = re.compile(r"\b(elmo_worker_[a-zA-Z0-9_]*|up)(?=[\s{\[,)]|$)")
SELECTOR = re.compile(r"\b(elmo_worker_[a-zA-Z0-9_]*|up)\{([^}]*)\}")
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*"')
GROUPING = re.compile(r"\b(?:by|on|without|ignoring)\s*\(([^)]*)\)")
# Labels Prometheus attaches to every scraped series; `le` is each histogram bucket's.
TARGET_LABELS = {"job", "instance"}
# Grafana's variables in the dashboard, replaced by what Grafana would send.
GRAFANA_VARIABLES = {"$__rate_interval": "1m"}


# The artefacts, read.

def load_dashboard_module():
    spec = importlib.util.spec_from_file_location("elmo_worker_dashboard",
                                                  METRICS / "dashboard.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dashboard_json() -> dict:
    return json.loads(DASHBOARD_JSON.read_text())


def panels(dashboard: dict) -> list[dict]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def dashboard_queries(dashboard: dict) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target."""
    return [(f"panel {panel['id']} {panel['title']!r} target {target['refId']}",
             target["expr"])
            for panel in panels(dashboard) for target in panel.get("targets", [])]


def variable_queries(dashboard: dict) -> list[tuple[str, str]]:
    """(where, query) of the query variables: label_values(), not PromQL."""
    return [(f"variable {variable['name']}", variable["query"])
            for variable in dashboard["templating"]["list"] if variable["type"] == "query"]


def alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"]
            for rule in group["rules"]]


def alert_queries() -> list[tuple[str, str]]:
    return [(f"alert {rule['alert']}", rule["expr"]) for rule in alert_rules()]


def all_queries() -> list[tuple[str, str]]:
    dashboard = dashboard_json()
    return dashboard_queries(dashboard) + variable_queries(dashboard) + alert_queries()


def metric_names(expr: str) -> set[str]:
    return set(METRIC_NAME.findall(expr))


def parse_exposition(text: str) -> dict[str, set[str]]:
    """Metric name -> label names, from a Prometheus text exposition."""
    families: dict[str, set[str]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s", line)
        assert match, f"not a sample line: {line!r}"
        labels = set(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', match.group(3) or ""))
        families.setdefault(match.group(1), set()).update(labels)
    return families


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        keyword, _, arguments = (pending + line).strip().partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def dockerfile(keyword: str, final_stage: bool = False) -> list[str]:
    """The arguments of every `keyword` instruction (only the final stage's, if asked)."""
    instructions = dockerfile_instructions()
    if final_stage:
        last = max(index for index, (found, _) in enumerate(instructions) if found == "FROM")
        instructions = instructions[last:]
    return [arguments for found, arguments in instructions if found == keyword]


def image_environment() -> dict[str, str]:
    """The ENV defaults of the image."""
    return dict(re.findall(r"(\w+)=(\S+)", " ".join(dockerfile("ENV", final_stage=True))))


def copies() -> list[tuple[list[str], str]]:
    """(sources, destination) of every COPY or ADD from the build context."""
    found = []
    for keyword, arguments in dockerfile_instructions():
        if keyword not in ("COPY", "ADD"):
            continue
        words = arguments.split()
        if any(word.startswith("--from=") for word in words):
            continue
        paths = [word for word in words if not word.startswith("--")]
        found.append((paths[:-1], paths[-1]))
    return found


def dockerignore_excludes(path: str) -> bool:
    """Whether .dockerignore keeps `path` (relative to the context) out of the build."""
    def pattern_regex(pattern: str) -> re.Pattern:
        text = re.escape(pattern.strip("/"))
        text = text.replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
        text = text.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        return re.compile(text)

    parts = Path(path).parts
    prefixes = ["/".join(parts[:end]) for end in range(1, len(parts) + 1)]
    excluded = False
    for line in (PROJECT / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        regex = pattern_regex(pattern.lstrip("!"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            excluded = not negated
    return excluded


def entrypoint_branches() -> dict[str, str]:
    """The entrypoint's commands and what each runs (the `*` fallback left out)."""
    text = ENTRYPOINT.read_text()
    body = text[text.index('case "$command" in'):text.index("esac")]
    return {name: branch.strip()
            for name, branch in re.findall(r"^\s+([a-z][a-z-]*)\)\n(.*?);;", body, re.M | re.S)}


def manage_py_commands() -> set[str]:
    """The project's management commands and Django's built-in ones."""
    directories = [PROJECT / "shardworker" / "management" / "commands",
                   *PROJECT.glob("elmo/*/management/commands"),
                   Path(django.__file__).parent / "core" / "management" / "commands"]
    return {path.stem for directory in directories for path in directory.glob("*.py")
            if not path.name.startswith("_")}


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def app_services() -> dict[str, dict]:
    """The compose services built from the Dockerfile."""
    return {name: service for name, service in compose()["services"].items()
            if "build" in service}


def bind_mounts(service: dict) -> dict[str, Path]:
    """Container path -> host path of the service's bind mounts from the repository."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            mounts[target] = (PROJECT / source).resolve()
    return mounts


def run_entrypoint(*arguments: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """docker/entrypoint.sh as the image runs it: from the project directory, with the
    project's Python first on PATH."""
    environment = {
        key: value for key, value in os.environ.items()
        if not key.startswith(("PULSE_", "ELMO_", "DATABASE_URL", "PROMETHEUS_"))
    }
    environment.update(PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
                       ELMO_VAR_DIR=str(tmp_path / "var"))
    return subprocess.run(["sh", str(ENTRYPOINT), *arguments], cwd=PROJECT, env=environment,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    return path


# The dashboard.

def test_dashboard_json_is_what_the_generator_makes():
    module = load_dashboard_module()

    assert DASHBOARD_JSON == module.OUTPUT
    assert DASHBOARD_JSON.read_text() == module.render(), "run metrics/dashboard.py"
    assert module.main(["--check"]) == 0


def test_dashboard_loads_into_the_sdk_model_without_loss():
    register_default_plugins()
    text = DASHBOARD_JSON.read_text()

    model = Dashboard.from_json(json.loads(text))

    assert JSONEncoder(sort_keys=True, indent=2).encode(model) + "\n" == text
    targets = [target for panel in model.panels
               for target in (getattr(panel, "targets", None) or [])]
    assert targets and not [t for t in targets if isinstance(t, UnknownDataquery)]


def test_dashboard_panels_have_queries_unique_ids_and_fit_the_grid():
    dashboard = dashboard_json()
    found = panels(dashboard)

    ids = [panel["id"] for panel in found]
    assert len(ids) == len(set(ids))
    for panel in found:
        position = panel["gridPos"]
        assert position["x"] + position["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"] and all(target["expr"] for target in panel["targets"])
        assert panel.get("description"), f"{panel['title']} says nothing to the operator"
    titles = " ".join(panel["title"].lower() for panel in found)
    for topic in ("outcome", "percentiles", "in flight", "backlog", "dead letters",
                  "restarts", "lock wait", "clone", "broker connected", "since the last"):
        assert topic in titles


def test_every_dashboard_query_parses_in_promtool(promtool, tmp_path: Path):
    rules = []
    for index, (where, expr) in enumerate(dashboard_queries(dashboard_json())):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$__" not in expr, f"{where}: a Grafana variable promtool cannot read"
        rules.append({"record": f"elmo_dashboard:query_{index}", "expr": expr})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))

    check = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                           text=True)

    assert check.returncode == 0, check.stdout + check.stderr
    assert f"{len(rules)} rules found" in check.stdout


# The alerts.

def test_alert_rules_pass_promtool_check(promtool):
    check = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True,
                           text=True)

    assert check.returncode == 0, check.stdout + check.stderr


def test_alert_rules_pass_their_unit_tests(promtool):
    tests = subprocess.run([promtool, "test", "rules", str(METRICS / "alerts_test.yml")],
                           capture_output=True, text=True)

    assert tests.returncode == 0, tests.stdout + tests.stderr


def test_every_alert_is_unit_tested_firing_and_quiet():
    cases: dict[str, list[bool]] = {}
    for test in yaml.safe_load((METRICS / "alerts_test.yml").read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            cases.setdefault(case["alertname"], []).append(bool(case["exp_alerts"]))

    for rule in alert_rules():
        assert sorted(set(cases.get(rule["alert"], []))) == [False, True], rule["alert"]


def test_alerts_have_a_severity_and_say_what_to_do():
    operations = (PROJECT / "docs" / "operations.md").read_text()
    assert "\n## Alerts\n" in operations
    alerts_section = operations.split("\n## Alerts\n", 1)[1]

    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert len(rule["annotations"]["description"]) > 100, rule["alert"]
        assert rule["alert"] in alerts_section, f"docs/operations.md: {rule['alert']}"


def test_dashboard_threshold_lines_match_the_alerts():
    module = load_dashboard_module()
    rules = {rule["alert"]: rule["expr"] for rule in alert_rules()}

    backlog = re.search(r">\s*(\d+)\s*$", rules["ElmoWorkerBacklogNearPulseLimit"])
    restarts = re.search(r">\s*(\d+)\s*$", rules["ElmoWorkerShardRestartLoop"])
    assert int(backlog.group(1)) == module.BACKLOG_ALERT_MESSAGES
    assert int(restarts.group(1)) == module.RESTART_LOOP_RESTARTS


# The queries against a live worker.

@pytest.mark.django_db(transaction=True)
def test_every_metric_and_label_queried_is_in_a_live_scrape(hgmo, publisher, start_worker):
    worker = start_worker(shards=2)
    base = status_url(worker)
    publish_known_work(hgmo, publisher, worker)

    status, text = get(base + "metrics")
    assert status == 200
    scraped = parse_exposition(text)
    # `up` is not exported: Prometheus records it for every target it scrapes.
    scraped["up"] = set()

    queries = all_queries()
    missing = [(where, name) for where, expr in queries for name in metric_names(expr)
               if name not in scraped]
    assert not missing, f"queried but not exported: {missing}"
    for where, expr in queries:
        names = metric_names(expr)
        assert names, f"{where}: no metric found in {expr!r}"
        known = set().union(*(scraped[name] for name in names)) | TARGET_LABELS | {"le"}
        for name, matchers in SELECTOR.findall(expr):
            for label in MATCHER.findall(matchers):
                assert label in scraped[name] | TARGET_LABELS, f"{where}: {name} {label}"
        for grouping in GROUPING.findall(expr):
            for label in filter(None, (word.strip() for word in grouping.split(","))):
                assert label in known, f"{where}: no metric has label {label!r}"


@pytest.mark.django_db(transaction=True)
def test_image_healthcheck_passes_on_a_healthy_worker_and_fails_without_one(hgmo,
                                                                           start_worker):
    (healthcheck,) = dockerfile("HEALTHCHECK")
    command = healthcheck.split(" CMD ", 1)[1]
    worker = start_worker(shards=2)
    port = int(status_url(worker).rstrip("/").rsplit(":", 1)[1])
    wait_until(lambda: get(f"http://127.0.0.1:{port}/healthz")[0] == 200, 30, "healthy")
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        closed = unused.getsockname()[1]

    def run(metrics_port: int) -> subprocess.CompletedProcess:
        environment = {**os.environ, "ELMO_METRICS_PORT": str(metrics_port),
                       "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        return subprocess.run(["sh", "-c", command], env=environment, capture_output=True,
                              text=True, timeout=30)

    healthy = run(port)
    assert healthy.returncode == 0, healthy.stderr
    assert run(closed).returncode != 0


# The example Prometheus and Grafana configuration.

def test_prometheus_example_config_passes_promtool(promtool):
    check = subprocess.run([promtool, "check", "config", str(METRICS / "prometheus.yml")],
                           capture_output=True, text=True)

    assert check.returncode == 0, check.stdout + check.stderr


def test_queries_use_the_scrape_job_of_the_example_config():
    config = yaml.safe_load((METRICS / "prometheus.yml").read_text())
    (job,) = [scrape["job_name"] for scrape in config["scrape_configs"]]
    module = load_dashboard_module()

    assert job == module.JOB
    for where, expr in all_queries():
        for found in re.findall(r'\bjob\s*=\s*"([^"]*)"', expr):
            assert found == job, where
    (targets,) = [static["targets"] for static in config["scrape_configs"][0]["static_configs"]]
    host, port = targets[0].split(":")
    assert host in compose()["services"]
    assert app_services()[host]["environment"]["ELMO_METRICS_PORT"] == port


def test_compose_mounts_the_prometheus_and_grafana_files_where_they_are_read():
    services = compose()["services"]
    prometheus = bind_mounts(services["prometheus"])
    grafana = bind_mounts(services["grafana"])

    for mount in (*prometheus.values(), *grafana.values()):
        assert mount.exists(), mount
    config_path = next(path for path, host in prometheus.items()
                       if host == METRICS / "prometheus.yml")
    config = yaml.safe_load((METRICS / "prometheus.yml").read_text())
    for rule_file in config["rule_files"]:
        container_path = str(Path(config_path).parent / rule_file)
        assert prometheus.get(container_path) == METRICS / rule_file
    provisioning = next(path for path, host in grafana.items()
                        if host == METRICS / "grafana" / "provisioning")
    assert provisioning == "/etc/grafana/provisioning"
    providers = yaml.safe_load(
        (METRICS / "grafana" / "provisioning" / "dashboards" / "elmo.yml").read_text())
    for provider in providers["providers"]:
        assert grafana.get(provider["options"]["path"]) == DASHBOARD_JSON.parent
    datasources = yaml.safe_load(
        (METRICS / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (datasource,) = datasources["datasources"]
    assert datasource["type"] == "prometheus"
    assert re.fullmatch(r"http://prometheus:9090/?", datasource["url"])


# The image.

def test_dockerfile_copies_only_paths_that_exist_and_are_in_the_build_context():
    found = copies()

    assert found
    for sources, _ in found:
        for source in sources:
            assert (PROJECT / source).exists(), source
            assert not dockerignore_excludes(source), f".dockerignore excludes {source}"
    for heavy in (".git", ".venv", "var", "tests/__pycache__"):
        assert dockerignore_excludes(heavy), heavy


def test_dockerfile_builds_from_python_311_slim_in_two_stages():
    (base,) = [arguments for arguments in dockerfile("ARG")
               if arguments.startswith("PYTHON_IMAGE=")]
    stages = dockerfile("FROM")

    assert base == "PYTHON_IMAGE=python:3.11-slim-bookworm"
    assert len(stages) == 2 and all(stage.startswith("${PYTHON_IMAGE}") for stage in stages)
    assert any("requirements.txt" in run for run in dockerfile("RUN"))
    assert any("build-essential" in run for run in dockerfile("RUN"))


def test_image_runs_as_a_non_root_user():
    users = dockerfile("USER")

    assert users and users[-1].split(":")[0] not in ("root", "0")


def test_image_healthcheck_requests_healthz_with_python():
    (healthcheck,) = dockerfile("HEALTHCHECK")

    assert "python -c" in healthcheck and "urllib" in healthcheck
    assert "http://127.0.0.1:${ELMO_METRICS_PORT:-9191}/healthz" in healthcheck


def test_image_keeps_clones_and_metrics_in_volumes_its_settings_point_at():
    (volume,) = dockerfile("VOLUME")
    environment = image_environment()

    volumes = set(json.loads(volume))
    assert environment["ELMO_REPOSITORY_BASE"] in volumes
    assert environment["PROMETHEUS_MULTIPROC_DIR"] in volumes
    assert environment["ELMO_METRICS_ADDRESS"] == "0.0.0.0"


def test_image_entrypoint_is_the_copied_script():
    (entrypoint,) = dockerfile("ENTRYPOINT")
    program = json.loads(entrypoint)[0]
    destinations = {destination: sources for sources, destination in copies()}

    assert destinations[f"/usr/local/bin/{program}"] == ["docker/entrypoint.sh"]
    assert ENTRYPOINT.read_text().startswith("#!/bin/sh\n")
    assert ENTRYPOINT.stat().st_mode & stat.S_IXUSR
    assert json.loads(dockerfile("CMD")[-1]) == ["worker"]


def test_entrypoint_commands_name_real_manage_py_commands():
    branches = entrypoint_branches()
    commands = manage_py_commands()

    assert {"worker", "web", "migrate", "manage"} <= set(branches)
    assert "manage.py consume-pulse" in branches["worker"]
    assert "manage.py migrate" in branches["migrate"]
    for name, branch in branches.items():
        for command in re.findall(r"manage\.py ([a-z][a-z-]*)", branch):
            assert command in commands, f"{name}: ./manage.py {command} does not exist"
    module, attribute = re.search(r"gunicorn (\S+)", branches["web"]).group(1).split(":")
    source = (PROJECT / (module.replace(".", "/") + ".py")).read_text()
    assert re.search(rf"^{attribute} = ", source, re.M)


def test_entrypoint_starts_the_worker_migrate_and_manage_commands(tmp_path: Path):
    worker = run_entrypoint("worker", "--help", tmp_path=tmp_path)
    migrate = run_entrypoint("migrate", "--help", tmp_path=tmp_path)
    manage = run_entrypoint("manage", "help", "add-repository", tmp_path=tmp_path)

    assert worker.returncode == 0 and "consume-pulse" in worker.stdout, worker.stderr
    assert migrate.returncode == 0 and "manage.py migrate" in migrate.stdout, migrate.stderr
    assert manage.returncode == 0 and "add-repository" in manage.stdout, manage.stderr
    for option in re.findall(r"--[a-z-]+", " ".join(app_services()["worker"]["command"])):
        assert option in worker.stdout, f"consume-pulse has no {option}"


# The compose stack.

def test_compose_services_built_from_the_dockerfile_run_commands_the_entrypoint_knows():
    services = app_services()
    known = set(entrypoint_branches())

    assert {"web", "worker", "migrate"} <= set(services)
    for name, service in services.items():
        context = service["build"] if isinstance(service["build"], str) \
            else service["build"].get("context", ".")
        assert (PROJECT / context / "Dockerfile").exists(), name
        assert service["command"][0] in known, f"{name}: {service['command']}"
    assert {"rabbitmq", "postgres", "prometheus", "grafana"} <= set(compose()["services"])


def test_compose_environment_names_settings_the_code_reads():
    settings = (PROJECT / "elmo" / "settings.py").read_text()
    read_elsewhere = {"DJANGO_SETTINGS_MODULE", "PORT", "WEB_CONCURRENCY"}
    names = set(image_environment()) - {"PATH", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"}
    for service in app_services().values():
        names |= set(service.get("environment", {}))

    unknown = {name for name in names - read_elsewhere if f'"{name}"' not in settings}
    assert not unknown, f"not settings: {sorted(unknown)}"
    worker = app_services()["worker"]
    assert worker["environment"]["DATABASE_URL"].startswith("postgres://")
    assert worker["environment"]["PULSE_URL"].startswith("amqp://")
    assert worker["environment"]["ELMO_REPOSITORY_BASE"] in {
        volume.split(":")[1] for volume in worker["volumes"]}
