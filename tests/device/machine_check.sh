#!/usr/bin/env bash
# Runs INSIDE the Debian machine that scripts/systemd-test boots with systemd-nspawn (real systemd
# as PID 1, no network but loopback), as the oneshot unit edgefleet-check.service. It installs the
# x86_64 device archive offline and checks the agent's unit under that systemd. One line per check
# ("ok NAME: detail" / "FAIL NAME: detail" / "info NAME: detail") goes to /srv/out/results, then
# "done"; the machine powers off. Inputs (read-only): /srv/archive/*.tar.gz, /srv/files (from
# python -m tests.device.machine_files).
set -uo pipefail
OUT=/srv/out/results
FILES=/srv/files
UNIT=edgefleet-agent.service
: > "$OUT"
trap 'echo done >> "$OUT"; systemctl poweroff --no-block' EXIT

ok() { echo "ok $1: ${*:2}" | tee -a "$OUT"; }
fail() { echo "FAIL $1: ${*:2}" | tee -a "$OUT"; }
info() { echo "info $1: ${*:2}" | tee -a "$OUT"; }
check() { local name=$1; shift; if "$@"; then ok "$name" "$*"; else fail "$name" "$*"; fi; }
prop() { systemctl show -p "$1" --value "$UNIT"; }
http() {  # http METHOD PATH [BODY_FILE] -> prints the JSON body; fails on no answer or non-2xx
  python3 - "$@" <<'PY'
import sys, urllib.request
method, path = sys.argv[1], sys.argv[2]
data = open(sys.argv[3], "rb").read() if len(sys.argv) > 3 else None
req = urllib.request.Request("http://127.0.0.1:8500" + path, data=data, method=method,
                             headers={"Content-Type": "application/json"})
print(urllib.request.urlopen(req, timeout=10).read().decode())
PY
}
wait_for() {  # wait_for SECONDS COMMAND...: true once COMMAND succeeds
  local until=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do [ $SECONDS -lt "$until" ] || return 1; sleep 0.5; done
}
model_served() { http GET /v1/health | grep -q "\"name\": \"$(cut -d' ' -f1 "$FILES/model.txt")\""; }
pid_changed() { local pid; pid=$(prop MainPID); [ "$pid" != 0 ] && [ "$pid" != "$1" ] && [ "$(prop ActiveState)" = active ]; }
journal_has() { journalctl -u "$UNIT" --no-pager -o cat | grep -q "$1"; }
export -f http prop model_served
export UNIT FILES

# The fleet: two static answers on loopback (desired state and the bundle).
python3 -m http.server 8080 --bind 127.0.0.1 --directory "$FILES/fleet" >/dev/null 2>&1 &
check network-is-loopback-only test -z "$(ls /sys/class/net | grep -vx lo)"

# 1. Unpack and install offline; install.sh restarts the unit, which returns once READY=1 arrives.
started=$(date +%s.%N)
work=$(mktemp -d)
tar xzf /srv/archive/*.tar.gz -C "$work"
archive_dir=$(echo "$work"/edgefleet-agent-*)
if "$archive_dir/install.sh" --config "$FILES/agent.toml" --trusted-key "$FILES/operator.pub" > /srv/out/install.log 2>&1
then ok install "install.sh from the archive, no network"; else fail install "$(tail -5 /srv/out/install.log)"; fi
ready=$(date +%s.%N)
info unpack-to-ready "$(python3 -c "print(f'{$ready - $started:.1f} s')")"
check active test "$(prop ActiveState)" = active
check enabled systemctl -q is-enabled "$UNIT"
check verify systemd-analyze verify "/etc/systemd/system/$UNIT"
check documentation-exists bash -c "for u in \$(systemctl show -p Documentation --value $UNIT); do test -f \${u#file://} || exit 1; done"
pid=$(prop MainPID)
check runs-as-edgefleet test "$(ps -o user= -p "$pid")" = edgefleet
check config-owner test "$(stat -c '%U:%G %a' /etc/edgefleet/agent.toml)" = "root:edgefleet 640"
check seccomp-on grep -q '^Seccomp:[[:space:]]*2' "/proc/$pid/status"
check status-text test -n "$(prop StatusText)"
info status "$(prop StatusText)"

# 2. The agent installs the model from the fleet (worker processes, the runtime, all sandboxed),
# serves predictions, and STATUS follows.
check model-installed wait_for 180 model_served
check predict bash -c "http POST /v1/predict $FILES/predict.json | grep -q predictions"
status_names_model() { prop StatusText | grep -q "$(cut -d' ' -f1 "$FILES/model.txt")"; }
check status-follows-model wait_for 30 status_names_model
info status "$(prop StatusText)"
check no-sigsys bash -c "! journalctl --no-pager -o cat | grep -qi 'SIGSYS\|Bad system call'"

# 3. SIGHUP: systemctl reload re-reads the config.
sed -i 's/^poll_interval_s = 30/poll_interval_s = 20/' /etc/edgefleet/agent.toml
systemctl reload "$UNIT"
check reload wait_for 20 journal_has "SIGHUP: config reloaded"
check reload-same-pid test "$(prop MainPID)" = "$pid"

# 4. A crash (SIGSEGV) is restarted after RestartSec, serving the stored model again.
restarts=$(prop NRestarts)
kill -SEGV "$pid"
check crash-restarted wait_for 60 pid_changed "$pid"
check crash-counted test "$(prop NRestarts)" -gt "$restarts"
check crash-model-kept wait_for 60 model_served
pid=$(prop MainPID)

# 5. The watchdog: with WatchdogSec=4 the pings keep it alive; a stopped (wedged) process is killed
# and restarted.
mkdir -p "/etc/systemd/system/$UNIT.d"
printf '[Service]\nWatchdogSec=4\n' > "/etc/systemd/system/$UNIT.d/watchdog.conf"
systemctl daemon-reload && systemctl restart "$UNIT"
pid=$(prop MainPID)
sleep 10
check watchdog-pinged test "$(prop MainPID)" = "$pid"
kill -STOP "$pid"
check watchdog-restarts wait_for 40 pid_changed "$pid"
check watchdog-journal journal_has "Watchdog timeout"
rm -r "/etc/systemd/system/$UNIT.d"
systemctl daemon-reload && systemctl restart "$UNIT"

# 6. The old syscall filter (before the fix) against the fixed one, on this CPU count.
mkdir -p "/etc/systemd/system/$UNIT.d"
printf '[Service]\nSystemCallFilter=\nSystemCallErrorNumber=\nSystemCallFilter=@system-service\nSystemCallFilter=~@privileged @resources\nRestart=no\n' \
  > "/etc/systemd/system/$UNIT.d/old-filter.conf"
systemctl daemon-reload
if systemctl restart "$UNIT" 2>/dev/null && sleep 3 && [ "$(prop ActiveState)" = active ]; then
  info old-filter "the pre-fix filter (~@privileged @resources) did not kill the agent on $(nproc) CPU(s)"
else
  info old-filter "the pre-fix filter kills the agent on $(nproc) CPU(s): $(prop Result), $(journalctl -u "$UNIT" --no-pager -o cat -n 5 | grep 'code=' | tail -1)"
fi
journalctl -u "$UNIT" --no-pager -n 60 > /srv/out/old-filter.log
rm -r "/etc/systemd/system/$UNIT.d"
systemctl daemon-reload && systemctl reset-failed "$UNIT"
check restart-fixed bash -c "systemctl restart $UNIT && test \$(systemctl show -p ActiveState --value $UNIT) = active"

# 7. Upgrade: a new release of the agent keeps the state (the model) and the config.
release=$(readlink /opt/edgefleet/current)
cp -r "$archive_dir" "$work/next"
sed -i 's/"built_at": "/"built_at": "upgrade-/' "$work/next/archive.json"
(cd "$work/next" && sha256sum archive.json > /dev/null && sed -i "s|^.*  archive.json\$|$(sha256sum archive.json)|" SHA256SUMS)
cp /etc/edgefleet/agent.toml "$work/config-before"
if "$work/next/install.sh" > /srv/out/upgrade.log 2>&1; then ok upgrade "install.sh of a newer archive"
else fail upgrade "$(tail -5 /srv/out/upgrade.log)"; fi
check upgrade-switched test "$(readlink /opt/edgefleet/current)" != "$release"
check upgrade-previous-kept test -d "/opt/edgefleet/$release"
check upgrade-config-kept cmp -s /etc/edgefleet/agent.toml "$work/config-before"
check upgrade-model-kept wait_for 30 model_served

# 8. Stop: a clean exit (SIGTERM handled), and the sandbox's exposure as systemd rates it.
systemctl stop "$UNIT"
check stop-clean test "$(prop Result)" = success
info security "$(systemd-analyze security "$UNIT" 2>/dev/null | tail -1)"
