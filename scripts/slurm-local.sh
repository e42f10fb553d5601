#!/usr/bin/env bash
# Run a genuine single-node SLURM cluster (with slurmdbd accounting) on this
# machine, for tests. Debian 12, runs as root, needs no systemd.
#
# Usage: scripts/slurm-local.sh start|stop|status|env
#
# Everything (configuration, munge key, MariaDB data, SLURM state, logs, pid
# files) lives under ${SLURM_LOCAL_DIR:-/tmp/vaecli-slurm}. Daemons are started
# directly, in order: munged -> mariadbd -> slurmdbd -> slurmctld -> slurmd, and
# stopped in reverse order by the pids in their pid files.
#
# Environment:
#   SLURM_LOCAL_DIR      state folder (default /tmp/vaecli-slurm)
#   SLURM_LOCAL_DB_PORT  TCP port of the private MariaDB on 127.0.0.1 (default 3307)
#   SLURM_LOCAL_CLUSTER  cluster name (default vaecli)
set -euo pipefail
umask 022

PROG=$(basename "$0")
STATE_DIR=${SLURM_LOCAL_DIR:-/tmp/vaecli-slurm}
DB_PORT=${SLURM_LOCAL_DB_PORT:-3307}
CLUSTER=${SLURM_LOCAL_CLUSTER:-vaecli}
START_TIMEOUT=60   # seconds to wait for the node to become idle
STOP_TIMEOUT=20    # seconds to wait for each daemon to exit before SIGKILL

DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)   # start order

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
    cat >&2 <<EOF
Usage: $PROG start|stop|status|env

Runs a single-node SLURM cluster (munged, mariadbd, slurmdbd, slurmctld, slurmd)
for tests, with all state under \${SLURM_LOCAL_DIR:-/tmp/vaecli-slurm}.

  start   install packages if missing, configure and start the daemons, wait
          until the node is idle, then print the client environment
  stop    cancel all jobs and stop the daemons this script started
  status  show which daemons run and 'sinfo'; exit 0 only if all run
  env     print the export line(s) for clients:
            eval "\$($PROG env)"
EOF
}

# ---------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------
set_paths() {
    case $STATE_DIR in
        /*) ;;
        *) STATE_DIR=$(pwd)/$STATE_DIR ;;
    esac
    STATE_DIR=${STATE_DIR%/}
    if [[ $STATE_DIR =~ [[:space:]] ]]; then
        die "SLURM_LOCAL_DIR must not contain white space: '$STATE_DIR'"
    fi
    ETC_DIR=$STATE_DIR/etc
    SLURM_CONF_FILE=$ETC_DIR/slurm.conf
    SLURMDBD_CONF_FILE=$ETC_DIR/slurmdbd.conf
    MUNGE_DIR=$STATE_DIR/munge
    MUNGE_KEY=$MUNGE_DIR/munge.key
    MUNGE_SOCKET=$MUNGE_DIR/munge.socket
    MYSQL_DIR=$STATE_DIR/mysql
    MYSQL_DATA=$MYSQL_DIR/data
    MYSQL_RUN=$MYSQL_DIR/run
    MYSQL_SOCKET=$MYSQL_RUN/mysqld.sock
    SLURM_DIR=$STATE_DIR/slurm
    LOG_DIR=$STATE_DIR/log
    RUN_DIR=$STATE_DIR/run
}

pidfile_of() {
    case $1 in
        munged) echo "$MUNGE_DIR/munged.pid" ;;
        mariadbd) echo "$MYSQL_RUN/mariadbd.pid" ;;
        *) echo "$RUN_DIR/$1.pid" ;;
    esac
}

logfile_of() {
    case $1 in
        munged) echo "$MUNGE_DIR/munged.log" ;;
        mariadbd) echo "$MYSQL_RUN/mariadbd.log" ;;
        *) echo "$LOG_DIR/$1.log" ;;
    esac
}

# Print the pid of daemon $1 if its pid file names a live process of that name.
daemon_pid() {
    local pidfile pid comm
    pidfile=$(pidfile_of "$1")
    [[ -r $pidfile ]] || return 1
    pid=$(tr -dc '0-9' <"$pidfile" 2>/dev/null || true)
    [[ -n $pid ]] || return 1
    comm=$(cat "/proc/$pid/comm" 2>/dev/null || true)
    [[ $comm == "$1" ]] || return 1
    echo "$pid"
}

is_running() { daemon_pid "$1" >/dev/null; }

all_running() {
    local d
    for d in "${DAEMONS[@]}"; do
        is_running "$d" || return 1
    done
}

print_env() {
    printf 'export SLURM_CONF=%q\n' "$SLURM_CONF_FILE"
}

log_tail() {
    local f=$1
    if [[ -r $f ]]; then
        log "last lines of $f:"
        tail -n 20 "$f" >&2 || true
    fi
}

# Wait up to $1 seconds for command "${@:2}" to succeed.
wait_for() {
    local timeout=$1; shift
    local deadline=$((SECONDS + timeout))
    while ! "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

# ---------------------------------------------------------------------------
# Packages
# ---------------------------------------------------------------------------
REQUIRED_CMDS=(munged mungekey mariadbd mariadb-install-db mariadb mariadb-admin
               slurmdbd slurmctld slurmd sinfo sbatch squeue scancel scontrol
               sacct sacctmgr runuser)

missing_cmds() {
    local c
    for c in "${REQUIRED_CMDS[@]}"; do
        command -v "$c" >/dev/null 2>&1 || [[ -x /usr/sbin/$c ]] || echo "$c"
    done
}

install_packages() {
    local missing
    missing=$(missing_cmds)
    [[ -z $missing ]] && return 0
    log "missing commands: $(echo "$missing" | tr '\n' ' ')- installing Debian packages"
    command -v apt-get >/dev/null || die "apt-get not found; install slurm-wlm munge slurmdbd mariadb-server by hand"
    local pkgs=(slurm-wlm munge slurmdbd mariadb-server)
    # Keep the packages' own services from being started by their maintainer
    # scripts (they would clash with ours); only if no policy is in place.
    local policy=/usr/sbin/policy-rc.d added_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 0755 "$policy"
        added_policy=1
    fi
    local rc=0
    export DEBIAN_FRONTEND=noninteractive
    if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
        apt-get update >&2 || rc=$?
    fi
    if ((rc == 0)); then
        if ! apt-get install -y --no-install-recommends "${pkgs[@]}" >&2; then
            log "apt-get install failed; running apt-get update and retrying"
            { apt-get update >&2 && apt-get install -y --no-install-recommends "${pkgs[@]}" >&2; } || rc=$?
        fi
    fi
    ((added_policy)) && rm -f "$policy"
    ((rc == 0)) || die "package installation failed"
    missing=$(missing_cmds)
    [[ -z $missing ]] || die "still missing after install: $(echo "$missing" | tr '\n' ' ')"
}

# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------
make_dirs() {
    mkdir -p "$STATE_DIR"
    chmod 0755 "$STATE_DIR"
    local u
    for u in munge mysql; do
        id "$u" >/dev/null 2>&1 || die "user '$u' does not exist (package not installed?)"
        runuser -u "$u" -- test -x "$STATE_DIR" ||
            die "user '$u' cannot reach $STATE_DIR: every folder above it must be traversable by others (mode 0755)"
    done
    mkdir -p "$ETC_DIR" "$LOG_DIR" "$RUN_DIR" "$SLURM_DIR/ctld" "$SLURM_DIR/d" \
             "$MUNGE_DIR" "$MYSQL_DATA" "$MYSQL_RUN"
    chmod 0755 "$ETC_DIR" "$LOG_DIR" "$RUN_DIR" "$SLURM_DIR"
    chmod 0700 "$SLURM_DIR/ctld" "$SLURM_DIR/d"
    chown munge:munge "$MUNGE_DIR"
    chmod 0755 "$MUNGE_DIR"
    chown mysql:mysql "$MYSQL_DIR" "$MYSQL_DATA" "$MYSQL_RUN"
    chmod 0755 "$MYSQL_DIR" "$MYSQL_RUN"
    chmod 0700 "$MYSQL_DATA"
}

db_password() {
    local f=$ETC_DIR/dbpass
    if [[ ! -s $f ]]; then
        (umask 077; tr -dc 'A-Za-z0-9' </dev/urandom | head -c 24 >"$f")
    fi
    cat "$f"
}

write_config() {
    local host mem cpus pass
    host=$(hostname -s)
    mem=$(free -m | awk '/^Mem:/ {printf "%d", $7 * 0.9}')
    [[ $mem =~ ^[0-9]+$ && $mem -gt 0 ]] || die "cannot read available memory from 'free -m'"
    cpus=$(nproc)
    pass=$(db_password)

    cat >"$SLURM_CONF_FILE" <<EOF
# Generated by $PROG; single-node test cluster.
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePass=$MUNGE_SOCKET
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MailProg=/bin/true
StateSaveLocation=$SLURM_DIR/ctld
SlurmdSpoolDir=$SLURM_DIR/d
SlurmctldPidFile=$(pidfile_of slurmctld)
SlurmdPidFile=$(pidfile_of slurmd)
SlurmctldLogFile=$(logfile_of slurmctld)
SlurmdLogFile=$(logfile_of slurmd)
SlurmctldDebug=info
SlurmdDebug=info
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    chmod 0644 "$SLURM_CONF_FILE"

    (umask 077; cat >"$SLURMDBD_CONF_FILE" <<EOF
# Generated by $PROG.
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdHost=$host
DbdAddr=127.0.0.1
SlurmUser=root
PidFile=$(pidfile_of slurmdbd)
LogFile=$(logfile_of slurmdbd)
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$pass
StorageLoc=slurm_acct_db
EOF
    )
    chmod 0600 "$SLURMDBD_CONF_FILE"
}

# ---------------------------------------------------------------------------
# Daemons
# ---------------------------------------------------------------------------
start_munged() {
    if [[ ! -s $MUNGE_KEY ]]; then
        mungekey --create --keyfile="$MUNGE_KEY" >/dev/null 2>&1 ||
            dd if=/dev/urandom of="$MUNGE_KEY" bs=1024 count=1 status=none
    fi
    chown munge:munge "$MUNGE_KEY"
    chmod 0600 "$MUNGE_KEY"
    runuser -u munge -- munged \
        --key-file="$MUNGE_KEY" --socket="$MUNGE_SOCKET" \
        --pid-file="$(pidfile_of munged)" --log-file="$(logfile_of munged)" \
        --seed-file="$MUNGE_DIR/munged.seed" \
        </dev/null >>"$LOG_DIR/munged.out" 2>&1 || return 1
    wait_for 10 munge_ok
}

munge_ok() { munge -n -S "$MUNGE_SOCKET" | unmunge -S "$MUNGE_SOCKET"; }

start_mariadbd() {
    if [[ ! -d $MYSQL_DATA/mysql ]]; then
        log "initialising MariaDB data folder $MYSQL_DATA"
        if ! mariadb-install-db --no-defaults --user=mysql --datadir="$MYSQL_DATA" \
                --auth-root-authentication-method=socket --skip-test-db \
                >"$LOG_DIR/mariadb-install-db.log" 2>&1; then
            log_tail "$LOG_DIR/mariadb-install-db.log"
            return 1
        fi
    fi
    rm -f "$MYSQL_SOCKET"
    setsid mariadbd --no-defaults --user=mysql --datadir="$MYSQL_DATA" \
        --socket="$MYSQL_SOCKET" --pid-file="$(pidfile_of mariadbd)" \
        --log-error="$(logfile_of mariadbd)" \
        --bind-address=127.0.0.1 --port="$DB_PORT" --skip-name-resolve \
        --innodb-lock-wait-timeout=900 \
        </dev/null >>"$LOG_DIR/mariadbd.out" 2>&1 &
    local bgpid=$!
    local deadline=$((SECONDS + 30))
    until mariadb-admin --no-defaults -S "$MYSQL_SOCKET" -u root ping >/dev/null 2>&1 &&
          is_running mariadbd; do
        kill -0 "$bgpid" 2>/dev/null || return 1
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
    local pass
    pass=$(db_password)
    mariadb --no-defaults -S "$MYSQL_SOCKET" -u root <<EOF
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
FLUSH PRIVILEGES;
EOF
}

sacctmgr_ok() { sacctmgr -n -P show cluster format=cluster; }

start_slurmdbd() {
    slurmdbd </dev/null >>"$LOG_DIR/slurmdbd.out" 2>&1 || return 1
    # First start creates the tables; this can take a few seconds.
    wait_for 60 sacctmgr_ok || return 1
    if ! sacctmgr -n -P show cluster format=cluster | grep -qx "$CLUSTER"; then
        log "registering cluster '$CLUSTER' in slurmdbd"
        sacctmgr -i add cluster "$CLUSTER" >/dev/null
    fi
}

start_slurmctld() {
    slurmctld </dev/null >>"$LOG_DIR/slurmctld.out" 2>&1 || return 1
    wait_for 30 scontrol ping
}

start_slurmd() {
    slurmd </dev/null >>"$LOG_DIR/slurmd.out" 2>&1 || return 1
    # The local slurmd answers once it is up; the node then registers.
    wait_for 20 scontrol show slurmd
}

node_idle() {
    local st
    st=$(sinfo -h -N -n "$(hostname -s)" -o %T 2>/dev/null) || return 1
    [[ $st == idle || $st == mixed || $st == allocated ]]
}

cmd_start() {
    if [[ -r $SLURM_CONF_FILE ]] && all_running; then
        log "already running (state in $STATE_DIR)"
        print_env
        return 0
    fi
    ((EUID == 0)) || die "'start' must run as root"
    local t0=$SECONDS d
    install_packages
    make_dirs
    local any=0
    for d in "${DAEMONS[@]}"; do is_running "$d" && any=1; done
    # Keep the configuration the running daemons use; otherwise write it anew.
    if ((any == 0)) || [[ ! -r $SLURM_CONF_FILE || ! -r $SLURMDBD_CONF_FILE ]]; then
        write_config
    fi
    export SLURM_CONF=$SLURM_CONF_FILE
    for d in "${DAEMONS[@]}"; do
        if is_running "$d"; then
            log "$d already running (pid $(daemon_pid "$d"))"
            continue
        fi
        log "starting $d"
        if ! "start_$d"; then
            log_tail "$(logfile_of "$d")"
            log_tail "$LOG_DIR/$d.out"
            die "$d failed to start; see $(logfile_of "$d"); run '$PROG stop' to clean up"
        fi
    done
    if ! wait_for "$START_TIMEOUT" node_idle; then
        sinfo >&2 || true
        log_tail "$(logfile_of slurmd)"
        log_tail "$(logfile_of slurmctld)"
        die "node did not become idle within ${START_TIMEOUT}s"
    fi
    log "cluster '$CLUSTER' up in $((SECONDS - t0))s; state in $STATE_DIR"
    print_env
}

# Send TERM to daemon $1, wait up to STOP_TIMEOUT s, then KILL.
stop_daemon() {
    local name=$1 pid
    pid=$(daemon_pid "$name") || { rm -f "$(pidfile_of "$name")"; return 0; }
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + STOP_TIMEOUT))
    while [[ $(cat "/proc/$pid/comm" 2>/dev/null || true) == "$name" ]]; do
        if ((SECONDS >= deadline)); then
            log "$name (pid $pid) did not exit within ${STOP_TIMEOUT}s; sending KILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.5
            break
        fi
        sleep 0.1
    done
    rm -f "$(pidfile_of "$name")"
}

# slurmstepd processes of this cluster (they outlive slurmd); recognised by the
# SLURM_CONF of this cluster in their environment.
our_stepds() {
    local p
    for p in /proc/[0-9]*; do
        [[ $(cat "$p/comm" 2>/dev/null || true) == slurmstepd ]] || continue
        if tr '\0' '\n' <"$p/environ" 2>/dev/null | grep -qxF "SLURM_CONF=$SLURM_CONF_FILE"; then
            echo "${p#/proc/}"
        fi
    done
}

cmd_stop() {
    local t0=$SECONDS
    export SLURM_CONF=$SLURM_CONF_FILE
    if is_running slurmctld && [[ -r $SLURM_CONF_FILE ]]; then
        local jobs
        jobs=$(squeue -h -a -o %A 2>/dev/null | sort -u | tr '\n' ' ' || true)
        if [[ -n ${jobs// /} ]]; then
            log "cancelling jobs: $jobs"
            # shellcheck disable=SC2086
            scancel $jobs 2>/dev/null || true
            # Let the cancellations reach accounting before slurmdbd goes away.
            wait_for 15 squeue_empty || log "some jobs still listed after 15s; stopping anyway"
        fi
    fi
    local i
    for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
        stop_daemon "${DAEMONS[i]}"
    done
    local p left
    left=$(our_stepds)
    for p in $left; do
        log "killing leftover slurmstepd (pid $p)"
        kill -KILL "$p" 2>/dev/null || true
    done
    log "stopped in $((SECONDS - t0))s"
}

squeue_empty() { [[ -z $(squeue -h -a -o %A 2>/dev/null) ]]; }

cmd_status() {
    local d pid rc=0
    for d in "${DAEMONS[@]}"; do
        if pid=$(daemon_pid "$d"); then
            printf '%-10s running (pid %s)\n' "$d" "$pid"
        else
            printf '%-10s not running\n' "$d"
            rc=1
        fi
    done
    if is_running slurmctld && [[ -r $SLURM_CONF_FILE ]]; then
        SLURM_CONF=$SLURM_CONF_FILE sinfo || rc=1
    fi
    return "$rc"
}

main() {
    if (($# != 1)); then
        usage
        exit 2
    fi
    set_paths
    case $1 in
        start) cmd_start ;;
        stop) cmd_stop ;;
        status) cmd_status ;;
        env) print_env ;;
        -h|--help|help) usage ;;
        *) usage; exit 2 ;;
    esac
}

main "$@"
