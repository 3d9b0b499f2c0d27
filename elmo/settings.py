"""Settings of elmo and its Pulse worker, read from the environment.

Every value has a working local default: SQLite under var/, clones under
var/repos, the local RabbitMQ. Production sets DATABASE_URL, PULSE_* and
ELMO_REPOSITORY_BASE.
"""

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from elmo import environment as env

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env.text("ELMO_VAR_DIR", str(BASE_DIR / "var")))

SECRET_KEY = env.text("SECRET_KEY", "local-development-only-not-secret")
DEBUG = env.flag("DEBUG", False)
ALLOWED_HOSTS = [h for h in env.text("ALLOWED_HOSTS", "127.0.0.1,localhost").split(",") if h]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "elmo.life",
    "elmo.pushes",
    "elmo.l10nstats",
    "shardworker",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "elmo.urls"
WSGI_APPLICATION = "elmo.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]


def _database(url: str) -> dict:
    try:
        config = dj_database_url.parse(url, conn_max_age=0)
    except (ValueError, dj_database_url.UnknownSchemeError) as error:
        raise ImproperlyConfigured(f"DATABASE_URL is not a database URL: {error}") from None
    if config["ENGINE"] == "django.db.backends.sqlite3":
        # Shards write from several processes: wait for the lock instead of
        # failing, and take the write lock at BEGIN to avoid upgrade deadlocks.
        config["OPTIONS"] = {
            "timeout": 30,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
        # One test database per test run, so that runs side by side do not meet.
        config["TEST"] = {"NAME": str(VAR_DIR / f"test-elmo-{os.getpid()}.sqlite3")}
    elif config["ENGINE"] == "django.db.backends.postgresql":
        config.setdefault("OPTIONS", {})["connect_timeout"] = 10
        config["TEST"] = {"NAME": f"test_{config['NAME']}_{os.getpid()}"}
    return config


DATABASES = {
    "default": _database(
        env.text("DATABASE_URL", f"sqlite:///{VAR_DIR / 'elmo.sqlite3'}"),
    )
}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"

# Pulse (RabbitMQ). PULSE_URL wins over the separate parts.
PULSE_URL = env.text("PULSE_URL", "")
PULSE_HOST = env.text("PULSE_HOST", "127.0.0.1")
PULSE_SSL = env.flag("PULSE_SSL", False)
PULSE_PORT = env.whole_number("PULSE_PORT", 5671 if PULSE_SSL else 5672, minimum=1)
PULSE_VHOST = env.text("PULSE_VHOST", "/")
PULSE_USER = env.text("PULSE_USER", "guest")
PULSE_PASSWORD = env.text("PULSE_PASSWORD", "guest")
PULSE_HEARTBEAT = env.whole_number("PULSE_HEARTBEAT", 60, minimum=0)
PULSE_QUEUE_HGMO = env.text("PULSE_QUEUE_HGMO", "hgmo")

# Mercurial and the clones.
ELMO_REPOSITORY_BASE = Path(env.text("ELMO_REPOSITORY_BASE", str(VAR_DIR / "repos")))
ELMO_HG_BASE_URL = env.base_url("ELMO_HG_BASE_URL", "https://hg.mozilla.org/")
ELMO_HG_COMMAND = env.text("ELMO_HG_COMMAND", "")
ELMO_HG_TIMEOUT = env.seconds("ELMO_HG_TIMEOUT", 900.0)
ELMO_HTTP_TIMEOUT = env.seconds("ELMO_HTTP_TIMEOUT", 60.0)
ELMO_PUSHLOG_PAGE = env.whole_number("ELMO_PUSHLOG_PAGE", 500, minimum=1)
ELMO_PUSHLOG_MAX_BYTES = env.whole_number("ELMO_PUSHLOG_MAX_BYTES", 256 * 1024 * 1024, 1024)
ELMO_LOCK_TIMEOUT = env.seconds("ELMO_LOCK_TIMEOUT", 1800.0)

# Retries of a message inside its shard, and crashes before dead-lettering.
ELMO_MAX_ATTEMPTS = env.whole_number("ELMO_MAX_ATTEMPTS", 5, minimum=1)
ELMO_RETRY_SECONDS = env.seconds("ELMO_RETRY_SECONDS", 2.0)
ELMO_RETRY_MAX_SECONDS = env.seconds("ELMO_RETRY_MAX_SECONDS", 60.0)
ELMO_SHARDS = env.whole_number("ELMO_SHARDS", 4, minimum=1)
ELMO_DRAIN_SECONDS = env.seconds("ELMO_DRAIN_SECONDS", 60.0)

# GitHub: pushes are consumed only when ELMO_GITHUB is on.
ELMO_GITHUB = env.flag("ELMO_GITHUB", False)
ELMO_GITHUB_BASE_URL = env.base_url("ELMO_GITHUB_BASE_URL", "https://github.com/")
PULSE_QUEUE_GITHUB = env.text("PULSE_QUEUE_GITHUB", "github")

# Taskcluster: comparisons are consumed only when TASKCLUSTER_ROOT_URL is set.
TASKCLUSTER_ROOT_URL = env.text("TASKCLUSTER_ROOT_URL", "")
if TASKCLUSTER_ROOT_URL:
    TASKCLUSTER_ROOT_URL = env.base_url("TASKCLUSTER_ROOT_URL", "").rstrip("/")
ELMO_TASKCLUSTER_ROUTE = env.text("ELMO_TASKCLUSTER_ROUTE", "project.l10n.elmo.v1")
PULSE_QUEUE_TASKCLUSTER = env.text("PULSE_QUEUE_TASKCLUSTER", "taskcluster")
ELMO_DETAILS_MAX_BYTES = env.whole_number("ELMO_DETAILS_MAX_BYTES", 16 * 1024 * 1024, 1024)
PROMETHEUS_MULTIPROC_DIR = env.text("PROMETHEUS_MULTIPROC_DIR", "")
ELMO_METRICS_ADDRESS = env.text("ELMO_METRICS_ADDRESS", "127.0.0.1")
ELMO_METRICS_PORT = env.whole_number("ELMO_METRICS_PORT", 9191)

LOG_LEVEL = env.text("ELMO_LOG_LEVEL", "INFO").upper()
if LOG_LEVEL not in ("DEBUG", "INFO", "WARNING", "ERROR"):
    raise ImproperlyConfigured(
        f"ELMO_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, not {LOG_LEVEL!r}."
    )

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "operator": {
            "format": "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s",
        },
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "operator"},
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "amqp": {"level": "WARNING"},
        "kombu": {"level": "WARNING"},
    },
}

os.makedirs(VAR_DIR, exist_ok=True)
