#!/usr/bin/env bash
# A one-node SLURM cluster on localhost, for CI and for trying the slurm profile on one machine.
#
#   slurm_local.sh install   apt-get install slurmctld, slurmd, the client tools and munge
#   slurm_local.sh start     munge key + munged, /etc/slurm/slurm.conf, slurmctld + slurmd; waits for "idle"
#   slurm_local.sh stop      cancels jobs, stops the daemons this script started; leaves no process behind
#   slurm_local.sh status    sinfo, squeue and the daemons' pids
#
# Every command is idempotent. No systemd is needed: the daemons are started directly, which is what a
# container offers. The daemons' state, logs and pid files live under $HYBRIDLAB_SLURM_STATE
# (default /var/lib/hybridlab-slurm); slurm.conf itself must be /etc/slurm/slurm.conf, because job steps
# (srun inside sbatch, as Snakemake's jobstep executor uses) read the configuration from there.
#
# Skips (not root, no apt-get, packages not installable) print a line starting with "skip:" and exit with
# $HYBRIDLAB_SLURM_SKIP_CODE (default 0, so CI scripts under `set -e` go on; tests set 77 to tell a skip
# from a success). Real failures exit 1 and print the daemons' logs.
#
# Environment: HYBRIDLAB_SLURM_STATE (state dir), HYBRIDLAB_SLURM_SKIP_CODE, HYBRIDLAB_SLURM_TIMEOUT
# (seconds to wait for the node, default 60), HYBRIDLAB_SLURM_GPUS (GPUs the node advertises; default: the
# count of `nvidia-smi -L`, else 0), HYBRIDLAB_SLURM_FORCE=1 (overwrite a slurm.conf this script did not write).
set -euo pipefail

STATE_DIR=${HYBRIDLAB_SLURM_STATE:-/var/lib/hybridlab-slurm}
SKIP_CODE=${HYBRIDLAB_SLURM_SKIP_CODE:-0}
TIMEOUT=${HYBRIDLAB_SLURM_TIMEOUT:-60}
CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
GRES_CONF=$CONF_DIR/gres.conf
MARK="# Written by hybridlab workflow/scripts/slurm_local.sh; 'slurm_local.sh start' rewrites it."
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
mapfile -t PACKAGES < <(grep -v '^\s*\(#\|$\)' "$REPO/envs/slurm-apt.txt")
BINARIES=(slurmctld slurmd sbatch squeue sinfo scontrol munged munge)
MUNGE_KEY=/etc/munge/munge.key
MUNGE_RUN=/run/munge
MUNGE_PID=$MUNGE_RUN/munged.pid
MUNGE_OURS=$STATE_DIR/run/munged.ours    # present only when this script started munged
CTLD_PID=$STATE_DIR/run/slurmctld.pid
SLURMD_PID=$STATE_DIR/run/slurmd.pid

say() { echo "slurm_local: $*"; }
die() { echo "slurm_local: error: $*" >&2; exit 1; }
skip() { echo "skip: slurm_local: $*"; exit "$SKIP_CODE"; }

require_root() {
    [[ $(id -u) -eq 0 ]] || skip "needs root (to install packages and run slurmctld/slurmd); uid is $(id -u)"
}

missing_binaries() {
    local b missing=()
    for b in "${BINARIES[@]}"; do
        command -v "$b" >/dev/null 2>&1 || [[ -x /usr/sbin/$b ]] || missing+=("$b")
    done
    echo "${missing[*]}"
}

node_name() { hostname -s; }

pid_alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

cmd_install() {
    require_root
    if [[ -z $(missing_binaries) ]]; then
        say "slurm and munge already installed ($(/usr/sbin/slurmctld -V))"
        return 0
    fi
    command -v apt-get >/dev/null 2>&1 || skip "apt-get not found; install ${PACKAGES[*]} by other means"
    local log
    log=$(mktemp)
    say "installing ${PACKAGES[*]} with apt-get"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            --no-install-recommends "${PACKAGES[@]}"; } >"$log" 2>&1; then
        tail -n 20 "$log"
        rm -f "$log"
        skip "apt-get could not install ${PACKAGES[*]} (no network or no such packages); see above"
    fi
    rm -f "$log"
    [[ -z $(missing_binaries) ]] || die "installed, but still missing: $(missing_binaries)"
    say "installed $(/usr/sbin/slurmctld -V)"
}

ensure_hostname_resolves() {
    local host
    host=$(node_name)
    if ! getent hosts "$host" >/dev/null; then
        say "adding '$host' to /etc/hosts (slurmctld must resolve its own host name)"
        echo "127.0.0.1 $host" >>/etc/hosts
    fi
}

start_munge() {
    if [[ ! -s $MUNGE_KEY ]]; then
        say "creating munge key $MUNGE_KEY"
        install -d -o munge -g munge -m 0700 "$(dirname "$MUNGE_KEY")"
        dd if=/dev/urandom of="$MUNGE_KEY" bs=1024 count=1 status=none
    fi
    chown munge:munge "$MUNGE_KEY"
    chmod 0400 "$MUNGE_KEY"
    install -d -o munge -g munge -m 0755 "$MUNGE_RUN" /var/log/munge /var/lib/munge
    if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
        say "munged already running"
        return 0
    fi
    runuser -u munge -- /usr/sbin/munged --pid-file="$MUNGE_PID"
    touch "$MUNGE_OURS"
    local i
    for i in $(seq 50); do
        munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && { say "munged started"; return 0; }
        sleep 0.2
    done
    die "munged did not come up; log: $(tail -n 20 /var/log/munge/munged.log 2>/dev/null)"
}

gpu_count() {
    if [[ -n ${HYBRIDLAB_SLURM_GPUS:-} ]]; then
        echo "$HYBRIDLAB_SLURM_GPUS"
    elif command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true
    else
        echo 0
    fi
}

require_conf_is_ours() {
    if [[ -e $CONF ]] && ! grep -qF "$MARK" "$CONF" && [[ ${HYBRIDLAB_SLURM_FORCE:-0} != 1 ]]; then
        skip "$CONF exists and was not written by this script (a real cluster node?); leaving it alone." \
            "Set HYBRIDLAB_SLURM_FORCE=1 to replace it."
    fi
}

write_conf() {
    local host cpus mem_mb gpus gres_line="" gres_types=""
    host=$(node_name)
    cpus=$(nproc)
    # Leave 10% (at least 512 MB) for the OS and the daemons; a RealMemory above what slurmd measures
    # would mark the node invalid.
    mem_mb=$(awk '/^MemTotal:/ {m = int($2 / 1024); margin = int(m / 10); if (margin < 512) margin = 512;
                                print m - margin}' /proc/meminfo)
    gpus=$(gpu_count)
    if ((gpus > 0)); then
        gres_types="GresTypes=gpu"
        gres_line="Gres=gpu:$gpus"
        {
            echo "$MARK"
            if [[ -e /dev/nvidia0 ]]; then
                echo "Name=gpu File=/dev/nvidia[0-$((gpus - 1))]"
            else
                # Stand-in device files (slurmd drops GPUs without a File): sbatch --gpus=N is then
                # scheduled as on a GPU node, so the slurm profile's GPU requests are tested on CPU-only CI.
                install -d -m 0755 "$STATE_DIR"/fake-gpu
                local i
                for ((i = 0; i < gpus; i++)); do touch "$STATE_DIR/fake-gpu/gpu$i"; done
                echo "Name=gpu File=$STATE_DIR/fake-gpu/gpu[0-$((gpus - 1))]"
            fi
        } >"$GRES_CONF"
    else
        rm -f "$GRES_CONF"
    fi
    install -d -m 0755 "$CONF_DIR"
    cat >"$CONF" <<EOF
$MARK
# One node on localhost; no accounting database, so job status is polled with squeue (see
# profiles/slurm/config.yaml), which needs finished jobs kept for MinJobAge seconds.
ClusterName=hybridlab
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
SwitchType=switch/none
# No cgroups in containers without systemd: track processes through /proc, bind no tasks.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
# Schedule single CPUs (not whole cores) and memory, so two 1-CPU jobs share a 2-CPU runner.
SelectTypeParameters=CR_CPU_Memory
$gres_types
# Keep finished jobs visible to squeue for 10 minutes: well above Snakemake's longest poll interval (180 s).
MinJobAge=600
# A node that went down (e.g. slurmd restarted) comes back by itself once it registers again.
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=10
Waittime=0
StateSaveLocation=$STATE_DIR/slurmctld
SlurmdSpoolDir=$STATE_DIR/slurmd
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$STATE_DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb $gres_line State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    say "wrote $CONF (node $host: $cpus CPUs, $mem_mb MB, $gpus GPUs)"
}

show_logs() {
    local f
    for f in "$STATE_DIR"/log/slurmctld.log "$STATE_DIR"/log/slurmd.log; do
        echo "----- $f (last 40 lines) -----" >&2
        tail -n 40 "$f" >&2 2>/dev/null || echo "(missing)" >&2
    done
}

wait_for_idle() {
    local host state="" deadline=$((SECONDS + TIMEOUT))
    host=$(node_name)
    while ((SECONDS < deadline)); do
        state=$(sinfo -h -n "$host" -o '%T' 2>/dev/null || true)
        case $state in
            idle | mixed | allocated | completing)
                say "node $host is $state"
                return 0
                ;;
            down* | drain*)
                scontrol update NodeName="$host" State=RESUME >/dev/null 2>&1 || true
                ;;
        esac
        sleep 1
    done
    show_logs
    die "node $host not idle after ${TIMEOUT}s (state: '${state:-no answer from slurmctld}'); logs above"
}

cmd_start() {
    require_root
    [[ -z $(missing_binaries) ]] || die "missing $(missing_binaries); run '$0 install' first"
    require_conf_is_ours
    install -d -m 0755 "$STATE_DIR"/run "$STATE_DIR"/log
    if pid_alive "$CTLD_PID" && pid_alive "$SLURMD_PID"; then
        say "already running"
        wait_for_idle
        return 0
    fi
    ensure_hostname_resolves
    start_munge
    write_conf
    if ! pid_alive "$CTLD_PID"; then
        # A fresh controller state every start: jobs of an earlier session mean nothing here.
        rm -rf "$STATE_DIR"/slurmctld
        install -d -m 0755 "$STATE_DIR"/slurmctld
        /usr/sbin/slurmctld || { show_logs; die "slurmctld failed to start"; }
    fi
    if ! pid_alive "$SLURMD_PID"; then
        rm -rf "$STATE_DIR"/slurmd
        install -d -m 0755 "$STATE_DIR"/slurmd
        /usr/sbin/slurmd || { show_logs; die "slurmd failed to start"; }
    fi
    wait_for_idle
}

stop_pidfile() {
    local name=$1 file=$2 pid i
    pid_alive "$file" || { rm -f "$file"; return 0; }
    pid=$(cat "$file")
    kill -TERM "$pid"
    for i in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || { say "stopped $name ($pid)"; rm -f "$file"; return 0; }
        sleep 0.2
    done
    kill -KILL "$pid" 2>/dev/null || true
    say "killed $name ($pid) after 20 s"
    rm -f "$file"
}

cmd_stop() {
    require_root
    if pid_alive "$CTLD_PID"; then
        # Cancel what is left so no job step outlives slurmd.
        scancel --quiet --full --state=PENDING,RUNNING,SUSPENDED 2>/dev/null || true
        scancel --quiet --full 2>/dev/null || true
        local i
        for i in $(seq 30); do
            [[ -z $(squeue -h -t PENDING,RUNNING,COMPLETING,SUSPENDED 2>/dev/null) ]] && break
            sleep 1
        done
    fi
    if pid_alive "$SLURMD_PID"; then
        local pids
        pids=$(scontrol listpids 2>/dev/null | awk 'NR > 1 && $1 ~ /^[0-9]+$/ {print $1}' || true)
        if [[ -n $pids ]]; then
            say "killing leftover job processes: $pids"
            # shellcheck disable=SC2086
            kill -KILL $pids 2>/dev/null || true
        fi
    fi
    stop_pidfile slurmd "$SLURMD_PID"
    stop_pidfile slurmctld "$CTLD_PID"
    if [[ -e $MUNGE_OURS ]]; then
        stop_pidfile munged "$MUNGE_PID"
        rm -f "$MUNGE_OURS"
    fi
    say "stopped"
}

cmd_status() {
    if ! command -v sinfo >/dev/null 2>&1; then
        say "not installed"
        return 3
    fi
    local name file running=0
    for name in slurmctld slurmd; do
        file=$STATE_DIR/run/$name.pid
        if pid_alive "$file"; then
            say "$name running (pid $(cat "$file"))"
            running=$((running + 1))
        else
            say "$name not running"
        fi
    done
    ((running == 2)) || return 3
    sinfo
    squeue
}

case ${1:-} in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *)
        echo "usage: $0 {install|start|stop|status}" >&2
        exit 2
        ;;
esac
