#!/usr/bin/env bash
# A real single-node SLURM on this machine, for tests and for trying the recipes.
#
#   deploy/slurm/local-slurm.sh up       install (Debian slurm-wlm + munge) if needed, write
#                                         /etc/slurm/slurm.conf, start munged, slurmctld, slurmd
#   deploy/slurm/local-slurm.sh status   daemons, partition, queue
#   deploy/slurm/local-slurm.sh down     cancel jobs, stop the daemons (the config stays)
#
# No systemd: the daemons are started directly and tracked by their pid files. Loopback only
# (controller and node both on 127.0.0.1), one partition that is the default, and a
# cgroup-free configuration that works inside a container (proctrack/linuxproc, task/none,
# no accounting). CPUs and memory come from `slurmd -C`, less some memory headroom.
#
# `up` is idempotent. It only writes a slurm.conf that it wrote before (first line is the
# marker below) and refuses to touch one it did not write.
#
# Environment (all optional):
#   NTKSCALE_SLURM_PARTITION   partition name                        [local]
#   NTKSCALE_SLURM_HEADROOM_MB memory kept back from SLURM (MiB)     [max(1024, 10% of RAM)]
#   NTKSCALE_SLURM_GPUS        GPUs to declare as gres gpu (needs /dev/nvidia0..N-1) [0]
#   NTKSCALE_SLURM_NO_INSTALL  1: never run apt-get (fail if SLURM is missing)
set -euo pipefail

MARKER="# ntkscale-local-slurm: written by deploy/slurm/local-slurm.sh (safe for it to rewrite)"
ETC=/etc/slurm
CONF=$ETC/slurm.conf
GRES_CONF=$ETC/gres.conf
STATE=/var/lib/ntkscale-slurm
LOGS=/var/log/ntkscale-slurm
RUN=/run/ntkscale-slurm
MUNGE_RUN=/run/munge
MUNGE_PID=$MUNGE_RUN/munged.pid
PARTITION=${NTKSCALE_SLURM_PARTITION:-local}
GPUS=${NTKSCALE_SLURM_GPUS:-0}

say() { printf 'local-slurm: %s\n' "$*"; }
die() { printf 'local-slurm: error: %s\n' "$*" >&2; exit 1; }

need_root() {
  if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then exec sudo -E "$0" "$@"; fi
    die "must run as root (it installs packages and starts daemons); sudo is not available"
  fi
}

pid_alive() {  # pid_alive FILE: the pid in FILE names a running process
  [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

wait_until() {  # wait_until SECONDS CMD...: poll CMD every 0.5 s
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.5
  done
}

# ----------------------------------------------------------------------------- install

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sinfo >/dev/null \
     && command -v munged >/dev/null; then
    return 0
  fi
  [[ ${NTKSCALE_SLURM_NO_INSTALL:-0} == 1 ]] && die "SLURM/munge are not installed and NTKSCALE_SLURM_NO_INSTALL=1"
  command -v apt-get >/dev/null || die "SLURM is not installed and apt-get is missing; install slurm-wlm and munge by hand"
  say "installing slurm-wlm and munge (apt-get)"
  # Keep the packages' init scripts from trying to start anything (no systemd here): a
  # policy-rc.d that denies starts, removed again afterwards if we created it.
  local policy=/usr/sbin/policy-rc.d created_policy=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && created_policy=1
  fi
  local rc=0
  {
    if ! apt-cache show slurm-wlm >/dev/null 2>&1 || [[ -z $(ls -A /var/lib/apt/lists 2>/dev/null | grep -v lock) ]]; then
      apt-get update -q
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends slurm-wlm munge
  } || rc=$?
  ((created_policy)) && rm -f "$policy"
  ((rc == 0)) || die "apt-get install slurm-wlm munge failed (exit $rc)"
}

# ----------------------------------------------------------------------------- config

probe_node() {  # sets NODE_NAME NODE_CPUS NODE_MEM NODE_LINE (no subshell: globals)
  # `slurmd -C` prints the node's real layout: NodeName=... CPUs=.. Boards=.. SocketsPerBoard=..
  # CoresPerSocket=.. ThreadsPerCore=.. RealMemory=..
  local probe name layout mem headroom
  probe=$(slurmd -C | head -n 1)
  name=$(sed -n 's/^NodeName=\([^ ]*\).*/\1/p' <<<"$probe")
  [[ -n $name ]] || die "cannot read the node layout from 'slurmd -C': $probe"
  layout=$(grep -o 'CPUs=[0-9]* Boards=[0-9]* SocketsPerBoard=[0-9]* CoresPerSocket=[0-9]* ThreadsPerCore=[0-9]*' <<<"$probe")
  mem=$(grep -o 'RealMemory=[0-9]*' <<<"$probe" | cut -d= -f2)
  headroom=${NTKSCALE_SLURM_HEADROOM_MB:-$(( mem / 10 > 1024 ? mem / 10 : 1024 ))}
  mem=$(( mem - headroom > 256 ? mem - headroom : 256 ))
  NODE_NAME=$name NODE_MEM=$mem
  NODE_CPUS=$(grep -o 'CPUs=[0-9]*' <<<"$layout" | cut -d= -f2)
  local gres=""
  if ((GPUS > 0)); then gres=" Gres=gpu:$GPUS"; fi
  NODE_LINE="NodeName=$name NodeAddr=127.0.0.1 $layout RealMemory=$mem$gres State=UNKNOWN"
}

render_conf() {  # needs probe_node first
  cat <<EOF
$MARKER
# Single-node, loopback-only, cgroup-free SLURM for tests (no accounting database).
ClusterName=ntkscale-local
SlurmctldHost=$NODE_NAME(127.0.0.1)
SlurmUser=slurm
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
# Loopback only: the daemons bind to the SlurmctldHost/NodeAddr address (127.0.0.1), not to any.
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
# Jobs without --mem get a per-CPU share, so several small jobs share the node.
DefMemPerCPU=$(( NODE_MEM / NODE_CPUS ))
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=30
$( ((GPUS > 0)) && echo "GresTypes=gpu" || echo "# (no GPUs declared: NTKSCALE_SLURM_GPUS=N adds gres gpu)")
$NODE_LINE
PartitionName=$PARTITION Nodes=$NODE_NAME Default=YES MaxTime=INFINITE State=UP
EOF
}

write_conf() {  # sets CONF_CHANGED=1 when the file changed
  CONF_CHANGED=0
  mkdir -p "$ETC"
  if [[ -e $CONF ]] && [[ $(head -n 1 "$CONF") != "$MARKER" ]]; then
    die "$CONF exists and was not written by this script (no marker line); refusing to overwrite it. Move it away or use that SLURM instead."
  fi
  local new
  probe_node
  new=$(render_conf)
  if [[ ! -e $CONF ]] || [[ $new != "$(cat "$CONF")" ]]; then
    printf '%s\n' "$new" >"$CONF.tmp.$$" && mv "$CONF.tmp.$$" "$CONF"
    CONF_CHANGED=1
    say "wrote $CONF (node $NODE_NAME: $NODE_CPUS CPUs, ${NODE_MEM} MiB, partition $PARTITION)"
  fi
  if ((GPUS > 0)); then
    if [[ -e $GRES_CONF ]] && [[ $(head -n 1 "$GRES_CONF") != "$MARKER" ]]; then
      die "$GRES_CONF exists and was not written by this script; refusing to overwrite it"
    fi
    local last=$((GPUS - 1))
    printf '%s\nName=gpu File=/dev/nvidia[0-%d]\n' "$MARKER" "$last" >"$GRES_CONF"
  fi
}

# ----------------------------------------------------------------------------- daemons

start_munge() {
  if pid_alive "$MUNGE_PID"; then return 0; fi
  [[ -s /etc/munge/munge.key ]] || { mungekey --create --keyfile=/etc/munge/munge.key; }
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  mkdir -p "$MUNGE_RUN" /var/log/munge /var/lib/munge
  chown munge:munge "$MUNGE_RUN" /var/log/munge /var/lib/munge
  chmod 755 "$MUNGE_RUN"
  runuser -u munge -- /usr/sbin/munged --pid-file="$MUNGE_PID"
  wait_until 10 bash -c 'munge -n | unmunge' || die "munged did not come up (see /var/log/munge/munged.log)"
  say "munged running (pid $(cat "$MUNGE_PID"))"
}

start_slurm() {
  mkdir -p "$STATE/slurmctld" "$STATE/slurmd" "$LOGS" "$RUN"
  chown slurm:slurm "$STATE/slurmctld" "$LOGS"
  # slurmctld writes its pid file after dropping to SlurmUser.
  chown slurm:slurm "$RUN"
  if ! pid_alive "$RUN/slurmctld.pid"; then
    slurmctld || die "slurmctld failed to start (see $LOGS/slurmctld.log)"
  fi
  wait_until 30 bash -c "scontrol ping | grep -q 'is UP'" \
    || die "slurmctld is not answering (see $LOGS/slurmctld.log)"
  if ! pid_alive "$RUN/slurmd.pid"; then
    slurmd || die "slurmd failed to start (see $LOGS/slurmd.log)"
  fi
  # A node left DOWN/DRAIN by an earlier unclean stop is resumed.
  local state
  wait_until 30 bash -c "sinfo -h -n '$NODE_NAME' -o %T | grep -Eq '^(idle|mixed|allocated|down|drained|draining)'" || true
  state=$(sinfo -h -n "$NODE_NAME" -o %T | head -n 1)
  if [[ $state == down* || $state == drain* ]]; then
    scontrol update NodeName="$NODE_NAME" State=RESUME || true
  fi
  wait_until 30 bash -c "sinfo -h -p '$PARTITION' -o '%a %T' | grep -Eq '^up (idle|mixed|allocated)'" \
    || die "partition $PARTITION did not come up: $(sinfo 2>&1) (see $LOGS/slurmd.log)"
  say "slurmctld (pid $(cat "$RUN/slurmctld.pid")) and slurmd (pid $(cat "$RUN/slurmd.pid")) running; partition $PARTITION is up"
}

stop_pidfile() {  # stop_pidfile FILE NAME: SIGTERM the pid, wait, then SIGKILL
  local file=$1 name=$2 pid
  pid_alive "$file" || { rm -f "$file"; return 0; }
  pid=$(cat "$file")
  kill -TERM "$pid" 2>/dev/null || true
  if ! wait_until 20 bash -c "! kill -0 $pid"; then
    say "$name (pid $pid) ignored SIGTERM; killing it"
    kill -KILL "$pid" 2>/dev/null || true
    wait_until 5 bash -c "! kill -0 $pid" || die "$name (pid $pid) is still running"
  fi
  rm -f "$file"
}

# ----------------------------------------------------------------------------- commands

cmd_up() {
  install_packages
  local running=0
  pid_alive "$RUN/slurmctld.pid" && running=1
  write_conf
  if ((running && CONF_CHANGED)); then
    say "configuration changed: restarting the daemons"
    stop_slurm
  fi
  start_munge
  start_slurm
}

stop_slurm() {
  if pid_alive "$RUN/slurmctld.pid"; then
    local jobs
    jobs=$(squeue -h -o %A 2>/dev/null || true)
    if [[ -n $jobs ]]; then
      say "cancelling jobs: $(echo $jobs)"
      # shellcheck disable=SC2086
      scancel $jobs || true
      wait_until 30 bash -c '[[ -z $(squeue -h -o %A) ]]' || say "jobs still listed: $(squeue -h 2>&1 | tr '\n' ';')"
    fi
    scontrol shutdown >/dev/null 2>&1 || true
  fi
  stop_pidfile "$RUN/slurmd.pid" slurmd
  stop_pidfile "$RUN/slurmctld.pid" slurmctld
}

cmd_down() {
  if [[ -e $CONF ]] && [[ $(head -n 1 "$CONF") != "$MARKER" ]]; then
    die "$CONF was not written by this script; not stopping a SLURM it did not start"
  fi
  stop_slurm
  stop_pidfile "$MUNGE_PID" munged
  say "stopped (config kept in $CONF; logs in $LOGS)"
}

cmd_status() {
  local rc=0 f
  for f in "$MUNGE_PID:munged" "$RUN/slurmctld.pid:slurmctld" "$RUN/slurmd.pid:slurmd"; do
    if pid_alive "${f%%:*}"; then
      say "${f##*:} running (pid $(cat "${f%%:*}"))"
    else
      say "${f##*:} not running"; rc=3
    fi
  done
  if ((rc == 0)); then
    sinfo
    squeue
  fi
  return $rc
}

case ${1:-} in
  up) need_root "$@"; cmd_up ;;
  down) need_root "$@"; cmd_down ;;
  status) cmd_status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
