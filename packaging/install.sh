#!/usr/bin/env bash
# Install (or upgrade) the edgefleet agent from this unpacked archive, with no network.
#
#   sudo ./install.sh [--config agent.toml] [--trusted-key operator.pub]... [options]
#
#   --config FILE       install FILE as /etc/edgefleet/agent.toml (root:edgefleet 0640); without it
#                       an existing config is kept as it is
#   --trusted-key FILE  copy an operator public key (*.pub) to /etc/edgefleet/trusted/ (repeatable)
#   --python PYTHON     the interpreter the venv is made from (default python3; must be the archive's
#                       MAJOR.MINOR)
#   --root DIR          install below DIR instead of / (tests, images); nothing is started then
#   --prefix DIR        where the venvs go (default /opt/edgefleet)
#   --no-start          enable the unit, do not (re)start it
#   --no-compile        do not byte-compile (emulated tests; a device should: the unit's sandbox
#                       cannot write .pyc files, so every start would compile again)
#
# What it does: checks the wheels' checksums, the CPU, the Python version and glibc; makes a venv in
# PREFIX/releases/VERSION-ID from wheels/ only (pip --no-index); points PREFIX/current at it and
# PREFIX/bin/edgefleet at its command (one rename: an upgrade switches at once, the previous release
# stays for a manual rollback); creates the system user `edgefleet`; installs the unit, the config and
# keys with their owners and modes; enables the unit and (re)starts it when systemd runs here.
# The state directory (/var/lib/edgefleet) is created when missing and never touched otherwise.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
ROOT=/
PREFIX=/opt/edgefleet
PYTHON=python3
CONFIG=""
KEYS=()
START=1
COMPILE=--compile
USER_NAME=edgefleet
UNIT=edgefleet-agent.service

# `[ -r ]` is not used: under qemu-user, bash's faccessat2 check fails on readable files.
readable() { [ -f "$1" ] && { : < "$1"; } 2>/dev/null; }
die() { echo "install.sh: error: $*" >&2; exit 1; }
say() { echo "[edgefleet] $*"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --config) [ $# -ge 2 ] || die "--config needs a file"; CONFIG=$2; shift 2 ;;
    --trusted-key) [ $# -ge 2 ] || die "--trusted-key needs a file"; KEYS+=("$2"); shift 2 ;;
    --python) [ $# -ge 2 ] || die "--python needs an interpreter"; PYTHON=$2; shift 2 ;;
    --root) [ $# -ge 2 ] || die "--root needs a directory"; ROOT=$2; shift 2 ;;
    --prefix) [ $# -ge 2 ] || die "--prefix needs a directory"; PREFIX=$2; shift 2 ;;
    --no-start) START=0; shift ;;
    --no-compile) COMPILE=--no-compile; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
[ "$(id -u)" = 0 ] || die "run as root (it creates a system user and installs a systemd unit)"
[ -z "$CONFIG" ] || readable "$CONFIG" || die "cannot read the config $CONFIG"
for key in ${KEYS[@]+"${KEYS[@]}"}; do
  readable "$key" || die "cannot read the key $key"
  case "$key" in *.pub) ;; *) die "$key: trusted keys must be *.pub files (the agent reads only those)" ;; esac
done
ROOT=${ROOT%/}
R=$ROOT   # prefix for every path below; empty for /

# 1. The archive is whole, and meant for this machine.
command -v "$PYTHON" >/dev/null || die "no $PYTHON here; install Python (with its venv module) first"
(cd "$here" && sha256sum --quiet --strict -c SHA256SUMS) || die "checksums do not match: the archive is damaged"
read -r VERSION ARCH PYVER GLIBC_MIN < <("$PYTHON" -c '
import json, sys
a = json.load(open(sys.argv[1]))
print(a["edgefleet"], a["arch"], a["python"], a["glibc_min"])' "$here/archive.json")
machine=$(uname -m)
[ "$machine" = "$ARCH" ] || die "this archive is for $ARCH, this machine is $machine: build one with edgefleet device-archive --arch $machine"
have_py=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ "$have_py" = "$PYVER" ] || die "this archive is for Python $PYVER, $PYTHON is $have_py: pass --python python$PYVER or build one with --python $have_py"
have_glibc=$("$PYTHON" -c 'import os; print(os.confstr("CS_GNU_LIBC_VERSION").split()[1])')
"$PYTHON" -c 'import sys; h, n = (tuple(map(int, v.split("."))) for v in sys.argv[1:]); sys.exit(h < n)' \
  "$have_glibc" "$GLIBC_MIN" || die "the wheels need glibc >= $GLIBC_MIN, this system has $have_glibc"
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null || die "$PYTHON lacks venv/ensurepip (Debian: apt-get install python3-venv)"

# 2. A new release venv from the archive's wheels only.
archive_id=$(sha256sum "$here/SHA256SUMS" | cut -c1-12)
release="$VERSION-$archive_id"
releases="$R$PREFIX/releases"
mkdir -p "$releases"
if [ -f "$releases/$release/.complete" ]; then
  say "release $release is already installed; reusing it"
else
  rm -rf "$releases/$release"
  say "creating the venv $PREFIX/releases/$release ($("$PYTHON" --version))"
  "$PYTHON" -m venv "$releases/$release"
  say "installing $(tr '\n' ' ' < "$here/requirements.txt")from the archive (no network)"
  PIP_CONFIG_FILE=/dev/null "$releases/$release/bin/python" -m pip install --isolated --no-index \
    --disable-pip-version-check --no-warn-script-location --quiet "$COMPILE" \
    --find-links "$here/wheels" --constraint "$here/constraints.txt" -r "$here/requirements.txt" \
    || die "pip could not install the archive's wheels (see above)"
  "$releases/$release/bin/edgefleet" --version >/dev/null || die "the installed edgefleet does not run"
  touch "$releases/$release/.complete"
fi

# 3. Switch to it: current -> releases/<this>, bin/edgefleet -> current/bin/edgefleet.
previous=$(readlink "$R$PREFIX/current" 2>/dev/null || true)
ln -sfn "releases/$release" "$R$PREFIX/current.new"
mv -Tf "$R$PREFIX/current.new" "$R$PREFIX/current"
mkdir -p "$R$PREFIX/bin" "$R$PREFIX/share/doc/edgefleet"
ln -sfn ../current/bin/edgefleet "$R$PREFIX/bin/edgefleet"
install -m 0644 "$here"/doc/*.md "$R$PREFIX/share/doc/edgefleet/"
if [ "$previous" != "releases/$release" ]; then   # keep this release and the one it replaced
  for old in "$releases"/*; do
    name=releases/$(basename "$old")
    [ "$name" = "releases/$release" ] || [ "$name" = "$previous" ] || rm -rf "$old"
  done
fi

# 4. The system user the unit runs as.
mkdir -p "$R/etc/sysusers.d"
install -m 0644 "$here/edgefleet.sysusers" "$R/etc/sysusers.d/edgefleet.conf"
if ! grep -q "^$USER_NAME:" "$R/etc/passwd" 2>/dev/null; then
  if command -v systemd-sysusers >/dev/null; then
    systemd-sysusers --root="${ROOT:-/}" "$R/etc/sysusers.d/edgefleet.conf"
  elif command -v useradd >/dev/null; then
    useradd ${ROOT:+--root "$ROOT"} --system --user-group --home-dir /var/lib/edgefleet \
      --no-create-home --shell /usr/sbin/nologin "$USER_NAME"
  else
    # A minimal image (no systemd, no passwd package): the entries systemd-sysusers would write.
    touch "$R/etc/passwd" "$R/etc/group"
    id_=999
    while cut -d: -f3 "$R/etc/passwd" "$R/etc/group" | grep -qx "$id_"; do
      id_=$((id_ - 1)); [ "$id_" -ge 100 ] || die "no free system uid/gid below 1000 for $USER_NAME"
    done
    echo "$USER_NAME:x:$id_:" >> "$R/etc/group"
    echo "$USER_NAME:x:$id_:$id_:edgefleet agent:/var/lib/edgefleet:/usr/sbin/nologin" >> "$R/etc/passwd"
  fi
  say "created the system user $USER_NAME"
fi
uid=$(grep "^$USER_NAME:" "$R/etc/passwd" 2>/dev/null | cut -d: -f3 || true)
gid=$(grep "^$USER_NAME:" "$R/etc/group" 2>/dev/null | cut -d: -f3 || true)
[ -n "$uid" ] && [ -n "$gid" ] || die "the user $USER_NAME is missing from $R/etc/passwd or $R/etc/group"

# 5. Config, keys, state: root owns what the agent only reads; the group lets it read.
install -d -m 0750 -o 0 -g "$gid" "$R/etc/edgefleet" "$R/etc/edgefleet/trusted"
if [ -n "$CONFIG" ]; then
  if [ -f "$R/etc/edgefleet/agent.toml" ] && ! cmp -s "$CONFIG" "$R/etc/edgefleet/agent.toml"; then
    cp -p "$R/etc/edgefleet/agent.toml" "$R/etc/edgefleet/agent.toml.previous"
    say "replaced /etc/edgefleet/agent.toml (the old one is agent.toml.previous)"
  fi
  install -m 0640 -o 0 -g "$gid" "$CONFIG" "$R/etc/edgefleet/agent.toml"
elif [ -f "$R/etc/edgefleet/agent.toml" ]; then
  say "keeping /etc/edgefleet/agent.toml"
fi
for key in ${KEYS[@]+"${KEYS[@]}"}; do
  install -m 0640 -o 0 -g "$gid" "$key" "$R/etc/edgefleet/trusted/$(basename "$key")"
done
if [ ! -d "$R/var/lib/edgefleet" ]; then
  install -d -m 0750 -o "$uid" -g "$gid" "$R/var/lib/edgefleet"
fi

# 6. The unit: installed, enabled, and (re)started where systemd runs.
mkdir -p "$R/etc/systemd/system"
install -m 0644 "$here/systemd/$UNIT" "$R/etc/systemd/system/$UNIT"
have_config=0; [ -f "$R/etc/edgefleet/agent.toml" ] && have_config=1
if [ -n "$ROOT" ]; then
  if command -v systemctl >/dev/null; then
    systemctl --root="$ROOT" --quiet enable "$UNIT"
    say "installed below $ROOT; $UNIT is enabled there and starts at its next boot"
  else
    say "installed below $ROOT; no systemctl here to enable $UNIT"
  fi
elif command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl --quiet enable "$UNIT"
  if [ "$START" = 1 ] && [ "$have_config" = 1 ]; then
    say "restarting $UNIT (waits for READY)"
    systemctl restart "$UNIT" || die "$UNIT did not start: journalctl -u $UNIT -n 50"
    say "$(systemctl show -p StatusText --value "$UNIT")"
  elif [ "$have_config" = 0 ]; then
    say "$UNIT is enabled; it starts once /etc/edgefleet/agent.toml exists (edgefleet device add --out)"
  fi
elif command -v systemctl >/dev/null; then
  systemctl --quiet enable "$UNIT"
  say "systemd is not running here (PID 1 is $(cat /proc/1/comm 2>/dev/null || echo unknown)): $UNIT is enabled for the next boot"
else
  say "no systemd here: run the agent as user $USER_NAME with $PREFIX/bin/edgefleet agent run --config /etc/edgefleet/agent.toml"
fi
say "edgefleet $VERSION installed in $PREFIX (release $release${previous:+, previous ${previous#releases/}})"
