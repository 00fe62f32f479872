#!/usr/bin/env bash
# Start this machine's Postgres (5432) and Redis (6379) if they do not answer; the tests use
# both. Does nothing where they already run; says so loudly where it cannot start them.
set -uo pipefail

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if ! answers 5432; then
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    echo "starting Postgres" >&2
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  fi
  answers 5432 || echo "WARNING: Postgres is not listening on 127.0.0.1:5432: its tests will fail in CI, skip locally" >&2
fi

if ! answers 6379; then
  if command -v redis-server >/dev/null; then
    echo "starting Redis" >&2
    mkdir -p /var/lib/redis /var/log/redis 2>/dev/null
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
    sleep 1
  fi
  answers 6379 || echo "WARNING: Redis is not listening on 127.0.0.1:6379: its tests will fail in CI, skip locally" >&2
fi
exit 0
