#!/bin/sh
# Entry point of the elmo image: the first argument picks what the container runs.
#
#   worker [OPTION...]   ./manage.py consume-pulse [OPTION...]   (the default)
#   web [OPTION...]      gunicorn serving elmo.wsgi:application on 0.0.0.0:${PORT:-8000};
#                        WEB_CONCURRENCY sets the number of processes (gunicorn's default: 1)
#   migrate [OPTION...]  ./manage.py migrate --noinput [OPTION...]
#   manage COMMAND ...   any ./manage.py command, e.g. `manage add-forest l10n-central`
#
# Anything else runs as given, e.g. `docker run --rm -it elmo bash`.
set -eu

command="${1:-worker}"
[ "$#" -eq 0 ] || shift

case "$command" in
  worker)
    exec python manage.py consume-pulse "$@"
    ;;
  web)
    exec gunicorn elmo.wsgi:application --bind "0.0.0.0:${PORT:-8000}" \
      --worker-tmp-dir /dev/shm --no-control-socket --access-logfile - "$@"
    ;;
  migrate)
    exec python manage.py migrate --noinput "$@"
    ;;
  manage)
    exec python manage.py "$@"
    ;;
  *)
    exec "$command" "$@"
    ;;
esac
