#!/usr/bin/env bash
# Makes sure Redis and RabbitMQ are installed and answering on 127.0.0.1, for
# the FinSight test suites. Idempotent: a service that already answers is left
# alone. Installs the Debian packages `redis-server` / `rabbitmq-server` when
# they are missing (as root, or through sudo), starts a service that is down,
# and waits a bounded time for each to answer. Says what it did.
#
#   FINSIGHT_SERVICE_TIMEOUT  seconds to wait for each service (default 120)
set -euo pipefail

timeout_s=${FINSIGHT_SERVICE_TIMEOUT:-120}
say() { printf 'services: %s\n' "$*"; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() { # name, seconds, command...
  local name=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@"; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      say "$name did not answer within ${secs}s"; return 1
    fi
    sleep 1
  done
}

apt_updated=0
install_pkg() {
  local pkg=$1
  say "$pkg is not installed: installing it with apt-get"
  if [ "$apt_updated" -eq 0 ]; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  # policy-rc.d keeps the package's own init script from starting the service;
  # this script starts it below, the same way on every machine.
  as_root sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d'
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null
  as_root rm -f /usr/sbin/policy-rc.d
}

redis_ok() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }

ensure_redis() {
  command -v redis-server >/dev/null 2>&1 || install_pkg redis-server
  if redis_ok; then say "redis: already answering on 127.0.0.1:6379"; return; fi
  say "redis: down, starting redis-server"
  local dir=/var/lib/redis log=/var/log/redis/finsight.log
  if ! as_root mkdir -p "$dir" /var/log/redis 2>/dev/null; then
    dir=${TMPDIR:-/tmp}; log=$dir/finsight-redis.log
  fi
  as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 \
    --save "" --appendonly no --dir "$dir" --logfile "$log"
  wait_for redis "$timeout_s" redis_ok
  say "redis: started"
}

ensure_rabbitmq() {
  command -v rabbitmq-server >/dev/null 2>&1 || install_pkg rabbitmq-server
  if port_open 5672; then say "rabbitmq: already answering on 127.0.0.1:5672"; return; fi
  if as_root rabbitmqctl -q ping >/dev/null 2>&1; then
    # The node runs but its application was stopped (`rabbitmqctl stop_app`).
    say "rabbitmq: node up, application stopped: start_app"
    as_root rabbitmqctl -q start_app
  else
    say "rabbitmq: down, starting rabbitmq-server"
    as_root rabbitmq-server -detached
  fi
  as_root rabbitmqctl -q await_startup --timeout "$timeout_s" >/dev/null 2>&1 || true
  wait_for rabbitmq "$timeout_s" port_open 5672
  say "rabbitmq: started"
}

# A fault test that was killed (not unwound) can leave RabbitMQ's memory
# alarm raised (`set_vm_memory_high_watermark 0`, finsight_testkit::
# RabbitBlocked), which blocks every publisher. Only that exact value is
# reset; an operator's own setting is left alone.
clear_test_alarm() {
  local wm
  wm=$(as_root rabbitmqctl -q eval 'vm_memory_monitor:get_vm_memory_high_watermark().' 2>/dev/null | head -n1)
  case "$wm" in
    0 | 0.0)
      say "rabbitmq: memory alarm left raised by a killed fault test: watermark back to 0.4"
      as_root rabbitmqctl -q set_vm_memory_high_watermark 0.4 >/dev/null
      ;;
  esac
}

ensure_redis
ensure_rabbitmq
clear_test_alarm
