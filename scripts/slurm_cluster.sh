#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the launcher's tests (issue #50): munge,
# slurmctld and slurmd with a generated slurm.conf whose one node has this machine's CPUs.
# Everything lives under $SLURM_ROOT (default /tmp/dfkd-slurm); nothing in /etc is touched.
#   scripts/slurm_cluster.sh start    # then: export SLURM_CONF=$SLURM_ROOT/slurm.conf
#   scripts/slurm_cluster.sh status
#   scripts/slurm_cluster.sh stop
# Needs Debian's slurm-wlm and munge (apt-get install slurm-wlm munge), and root (slurmd
# starts jobs as their user).
set -euo pipefail
ROOT=${SLURM_ROOT:-/tmp/dfkd-slurm}
CONF=$ROOT/slurm.conf
cmd=${1:-status}

need() { command -v "$1" >/dev/null || { echo "slurm_cluster: $1 is not installed (apt-get install slurm-wlm munge)" >&2; exit 2; }; }

start() {
    need slurmctld; need slurmd; need munged
    mkdir -p "$ROOT"/{state,spool,log,munge}
    chmod 700 "$ROOT/munge"
    [ -f "$ROOT/munge/munge.key" ] || { dd if=/dev/urandom bs=1 count=1024 of="$ROOT/munge/munge.key" 2>/dev/null; chmod 400 "$ROOT/munge/munge.key"; }
    if ! pgrep -f "munged.*$ROOT" >/dev/null; then
        munged --key-file="$ROOT/munge/munge.key" --socket="$ROOT/munge/munge.socket" \
            --pid-file="$ROOT/munge/munged.pid" --log-file="$ROOT/log/munged.log" \
            --seed-file="$ROOT/munge/munge.seed" --force
    fi
    local cpus mem host
    cpus=$(nproc); host=$(hostname -s)
    mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
    cat > "$CONF" <<CONF
ClusterName=dfkd
SlurmctldHost=$host
AuthType=auth/munge
AuthInfo=socket=$ROOT/munge/munge.socket
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$ROOT/state
SlurmdSpoolDir=$ROOT/spool
SlurmctldPidFile=$ROOT/slurmctld.pid
SlurmdPidFile=$ROOT/slurmd.pid
SlurmctldLogFile=$ROOT/log/slurmctld.log
SlurmdLogFile=$ROOT/log/slurmd.log
SlurmctldPort=$(( 16817 ))
SlurmdPort=$(( 16818 ))
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
ReturnToService=2
MpiDefault=none
JobRequeue=1
KillWait=30
MinJobAge=300
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
    export SLURM_CONF=$CONF
    pgrep -f "slurmctld -f $CONF" >/dev/null || slurmctld -f "$CONF"
    pgrep -f "slurmd -f $CONF" >/dev/null || slurmd -f "$CONF"
    for _ in $(seq 30); do
        sinfo -h -o %T 2>/dev/null | grep -q idle && { echo "slurm_cluster: up (export SLURM_CONF=$CONF)"; return; }
        sleep 1
    done
    echo "slurm_cluster: the node did not come up; see $ROOT/log/" >&2; exit 1
}

stop() {
    for pidfile in "$ROOT/slurmd.pid" "$ROOT/slurmctld.pid" "$ROOT/munge/munged.pid"; do
        [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
    done
    echo "slurm_cluster: stopped"
}

case $cmd in
    start) start ;;
    stop) stop ;;
    status) SLURM_CONF=$CONF sinfo 2>&1 || true ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
