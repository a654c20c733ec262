#!/usr/bin/env bash
# A 3-node RabbitMQ cluster beside the single broker on 127.0.0.1:5672, for tests that stop,
# kill or restart a broker node (the single broker is shared and is never touched here).
#
#   node                 AMQP 0.9.1 + 1.0   STOMP            management        distribution
#   tidings1@localhost   127.0.0.1:5682     127.0.0.1:61682  127.0.0.1:15682   25682
#   tidings2@localhost   127.0.0.1:5683     127.0.0.1:61683  127.0.0.1:15683   25683
#   tidings3@localhost   127.0.0.1:5684     127.0.0.1:61684  127.0.0.1:15684   25684
#
# and TLS listeners with a certificate of a test CA made here ($BASE/tls/ca.pem): AMQP 0.9.1 and
# 1.0 on 5692-5694, STOMP on 61692-61694.
#
# Each node has its own config, enabled-plugins and env files, data, logs and pid file under
# /var/lib/tidings-cluster/<node>, runs as the `rabbitmq` user (when it exists) and shares that
# user's Erlang cookie, so `rabbitmqctl -n tidings3@localhost …` works. Login guest/guest, from
# localhost only.
#
#   scripts/cluster.sh [start]     start what is not running, join nodes 2 and 3 to node 1, wait
#                                  until all three are up and clustered (idempotent)
#   scripts/cluster.sh status      each node's pid, ports and the cluster's members
#   scripts/cluster.sh stop NODE   stop one node (rabbitmqctl stop) and wait until it is gone
#   scripts/cluster.sh kill NODE   SIGKILL that node's Erlang VM (found by its pid file or the
#                                  marker on its command line; never the single broker's)
#   scripts/cluster.sh start NODE  start one node again and wait until it is back in the cluster
#   scripts/cluster.sh stop-all    stop the three nodes
#
# NODE is 1, 2, 3, tidings2 or tidings2@localhost.
set -euo pipefail

log() { printf 'cluster.sh: %s\n' "$*"; }
die() { log "$*"; exit 1; }

BASE=${TIDINGS_CLUSTER_BASE:-/var/lib/tidings-cluster}
HOST=localhost # the short host name epmd on 127.0.0.1 answers for (the single broker is rabbit@localhost)
NODES=(tidings1 tidings2 tidings3)
PLUGINS='[rabbitmq_amqp1_0,rabbitmq_management,rabbitmq_stomp].'
MAIN_PIDFILE=/var/lib/rabbitmq/mnesia/rabbit@localhost.pid
BOOT_SECS=${TIDINGS_CLUSTER_BOOT_SECS:-120}
SERVER=/usr/lib/rabbitmq/bin/rabbitmq-server
[ -x "$SERVER" ] || SERVER=$(command -v rabbitmq-server || true)
[ -n "$SERVER" ] || die "rabbitmq-server is not installed (run scripts/brokers.sh first)"

num() { echo "${1#tidings}"; }
amqp_port() { echo $((5681 + $(num "$1"))); }
stomp_port() { echo $((61681 + $(num "$1"))); }
amqps_port() { echo $((5691 + $(num "$1"))); }
stomps_port() { echo $((61691 + $(num "$1"))); }
mgmt_port() { echo $((15681 + $(num "$1"))); }
dist_port() { echo $((25681 + $(num "$1"))); }
full() { echo "$1@$HOST"; }
dir() { echo "$BASE/$1"; }
pidfile() { echo "$BASE/$1/$1.pid"; }

# NODE argument: 1 | tidings1 | tidings1@localhost -> tidings1
node_arg() {
    local n=${1:-}
    n=${n%@*}
    case "$n" in
        1 | 2 | 3) n=tidings$n ;;
    esac
    case "$n" in
        tidings1 | tidings2 | tidings3) echo "$n" ;;
        *) die "unknown node '${1:-}' (want 1, 2, 3, tidingsN or tidingsN@$HOST)" ;;
    esac
}

as_rabbitmq() {
    if [ "$(id -u)" = 0 ] && getent passwd rabbitmq >/dev/null; then
        runuser -u rabbitmq -- "$@"
    else
        "$@"
    fi
}

# rabbitmqctl against one node (the Debian wrapper runs it as `rabbitmq`, with its cookie).
ctl() {
    local node=$1; shift
    timeout "${CTL_SECS:-120}" rabbitmqctl -n "$(full "$node")" "$@"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

main_pid() { cat "$MAIN_PIDFILE" 2>/dev/null || true; }

# The pid of the node's Erlang VM, or nothing. A process counts only if its command line
# carries this node's marker (`-tidings_cluster_node tidingsN`), so a stale pid file can never
# point at another process, and the single broker (which has no marker) is never matched.
is_node_process() { # pid node
    local pid=$1 node=$2
    [ -n "$pid" ] && [ "$pid" != "$(main_pid)" ] && [ -r "/proc/$pid/cmdline" ] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "^[^ ]*beam[^ ]* .*-tidings_cluster_node $node "
}
beam_pid() {
    local node=$1 pid
    pid=$(cat "$(pidfile "$node")" 2>/dev/null || true)
    if is_node_process "$pid" "$node"; then echo "$pid"; return 0; fi
    for pid in $(pgrep -f -- "-tidings_cluster_node $node( |$)" || true); do
        if is_node_process "$pid" "$node"; then echo "$pid"; return 0; fi
    done
}

# Up = the node's app is running: its AMQP and STOMP listeners accept and its management API
# answers (a frozen VM's listeners still accept connections; only an answer shows it works).
is_up() {
    port_open "$(amqp_port "$1")" && port_open "$(stomp_port "$1")" && [ -n "$(api_nodes "$1")" ]
}

# The names of the cluster's nodes as node $1's management API lists them, with "running"
# or "stopped": `tidings1@localhost running` per line.
api_nodes() {
    curl -fsS --max-time 3 -u guest:guest "http://127.0.0.1:$(mgmt_port "$1")/api/nodes?columns=name,running" 2>/dev/null |
        jq -r '.[] | "\(.name) \(if .running then "running" else "stopped" end)"' 2>/dev/null
}

write_if_changed() { # file content
    if [ "$(cat "$1" 2>/dev/null)" != "$2" ]; then
        printf '%s\n' "$2" >"$1"
        return 0
    fi
    return 1
}

# A test CA and a server certificate for localhost and 127.0.0.1 signed by it, made once:
# the TLS listeners use them, and tests trust the CA with ?ca=$BASE/tls/ca.pem.
make_certificates() {
    local t=$BASE/tls
    [ -s "$t/ca.pem" ] && [ -s "$t/server.pem" ] && [ -s "$t/server.key" ] && return 0
    command -v openssl >/dev/null || die "openssl is needed for the cluster's TLS listeners"
    mkdir -p "$t"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=tidings test CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -keyout "$t/ca.key" -out "$t/ca.pem" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
        -keyout "$t/server.key" -out "$t/server.csr" 2>/dev/null
    printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "basicConstraints=CA:FALSE" \
        "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" >"$t/server.ext"
    openssl x509 -req -days 3650 -in "$t/server.csr" -CA "$t/ca.pem" -CAkey "$t/ca.key" \
        -CAcreateserial -extfile "$t/server.ext" -out "$t/server.pem" 2>/dev/null
    chmod 0644 "$t/server.key"
    log "made a test CA and a server certificate in $t"
}

# Writes the node's files; returns 0 if any of them changed.
write_files() {
    local node=$1 d changed=1
    d=$(dir "$node")
    mkdir -p "$d/mnesia" "$d/log"
    make_certificates
    write_if_changed "$d/rabbitmq.conf" "# written by scripts/cluster.sh
listeners.tcp.1 = 127.0.0.1:$(amqp_port "$node")
stomp.listeners.tcp.1 = 127.0.0.1:$(stomp_port "$node")
# TLS: AMQP 0.9.1 and 1.0, and STOMP, with the test CA's server certificate
listeners.ssl.1 = 127.0.0.1:$(amqps_port "$node")
stomp.listeners.ssl.1 = 127.0.0.1:$(stomps_port "$node")
ssl_options.cacertfile = $BASE/tls/ca.pem
ssl_options.certfile = $BASE/tls/server.pem
ssl_options.keyfile = $BASE/tls/server.key
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
management.tcp.ip = 127.0.0.1
management.tcp.port = $(mgmt_port "$node")
# a node waiting for its peers' tables gives up after 3 x 10 s instead of 10 x 30 s
mnesia_table_loading_retry_timeout = 10000
mnesia_table_loading_retry_limit = 3" && changed=0
    write_if_changed "$d/enabled_plugins" "$PLUGINS" && changed=0
    # Read instead of /etc/rabbitmq/rabbitmq-env.conf (which names the single broker).
    write_if_changed "$d/rabbitmq-env.conf" "# written by scripts/cluster.sh
NODENAME=$(full "$node")
ERL_EPMD_ADDRESS=127.0.0.1
export ERL_FLAGS=\"-kernel inet_dist_use_interface {127,0,0,1}\"" && changed=0
    if getent passwd rabbitmq >/dev/null && [ "$(id -u)" = 0 ]; then chown -R rabbitmq: "$BASE"; fi
    return $changed
}

launch() {
    local node=$1 d
    d=$(dir "$node")
    rm -f "$(pidfile "$node")"
    log "starting $(full "$node") (AMQP $(amqp_port "$node"), STOMP $(stomp_port "$node"), management $(mgmt_port "$node"); logs in $d/log)"
    (
        cd "$d"
        as_rabbitmq env HOME=/var/lib/rabbitmq \
            RABBITMQ_CONF_ENV_FILE="$d/rabbitmq-env.conf" \
            RABBITMQ_NODENAME="$(full "$node")" \
            RABBITMQ_CONFIG_FILE="$d/rabbitmq.conf" \
            RABBITMQ_ADVANCED_CONFIG_FILE="$d/advanced.config" \
            RABBITMQ_ENABLED_PLUGINS_FILE="$d/enabled_plugins" \
            RABBITMQ_MNESIA_BASE="$d/mnesia" \
            RABBITMQ_LOG_BASE="$d/log" \
            RABBITMQ_PID_FILE="$(pidfile "$node")" \
            RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
            RABBITMQ_NODE_PORT="$(amqp_port "$node")" \
            RABBITMQ_DIST_PORT="$(dist_port "$node")" \
            ERL_EPMD_ADDRESS=127.0.0.1 \
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-tidings_cluster_node $node" \
            setsid nohup "$SERVER" >"$d/log/console.log" 2>&1 </dev/null 9>&- &
    )
}

# Waits until the node is up; fails early if its VM exits.
wait_up() { # node seconds
    local node=$1 secs=$2 gone=0
    for _ in $(seq "$((secs * 4))"); do
        if is_up "$node"; then return 0; fi
        if [ -z "$(beam_pid "$node")" ]; then
            gone=$((gone + 1))
            # the VM is replaced once during boot; give up only if it stays gone
            [ "$gone" -gt 20 ] && { log "$(full "$node") exited while starting; $(dir "$node")/log/console.log ends:"; tail -15 "$(dir "$node")/log/console.log" >&2 || true; return 1; }
        else
            gone=0
        fi
        sleep 0.25
    done
    log "$(full "$node") not up after ${secs} s; $(dir "$node")/log/console.log ends:"
    tail -15 "$(dir "$node")/log/console.log" >&2 || true
    return 1
}

kill_node() {
    local node=$1 pid
    pid=$(beam_pid "$node")
    if [ -z "$pid" ]; then log "$(full "$node") is not running"; return 0; fi
    [ "$pid" != "$(main_pid)" ] || die "refusing to kill pid $pid: it is the single broker's"
    log "SIGKILL to $(full "$node") (pid $pid)"
    kill -9 "$pid"
    for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    rm -f "$(pidfile "$node")"
}

stop_node() {
    local node=$1 pid
    pid=$(beam_pid "$node")
    if [ -z "$pid" ]; then log "$(full "$node") is not running"; return 0; fi
    log "stopping $(full "$node") (pid $pid)"
    ctl "$node" -q stop >/dev/null 2>&1 || true
    for _ in $(seq 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    if kill -0 "$pid" 2>/dev/null; then kill_node "$node"; fi
    rm -f "$(pidfile "$node")"
}

# Brings a node that runs but is not up to life: start_app if its app is stopped (a test's
# stop_app, an interrupted join); a VM that does not answer and is not young is killed.
revive() {
    local node=$1 pid state age
    pid=$(beam_pid "$node")
    [ -n "$pid" ] || return 0
    is_up "$node" && return 0
    state=$(CTL_SECS=20 ctl "$node" -q eval 'rabbit_boot_state:get().' 2>/dev/null || echo unreachable)
    age=$(ps -o etimes= -p "$pid" 2>/dev/null | tr -d ' ' || echo 0)
    case "$state" in
        stopped)
            log "$(full "$node") runs with its app stopped; start_app"
            ctl "$node" -q start_app >/dev/null 2>&1 || true ;;
        booting | core_started | ready | stopping) : ;; # starting: wait below
        *)
            if [ "${age:-0}" -gt 30 ]; then
                log "$(full "$node") (pid $pid) half-started and does not answer ($state); killing it"
                kill_node "$node"
            fi ;;
    esac
}

# Starts the given nodes in parallel (those not running), waits for each; on a failed boot
# the node's data is wiped and it is started once more (it rejoins as a new member).
boot() {
    local node failed=()
    for node in "$@"; do
        if write_files "$node" && [ -n "$(beam_pid "$node")" ]; then
            log "$(full "$node")'s configuration changed; restarting it"
            stop_node "$node"
        fi
    done
    for node in "$@"; do revive "$node"; done
    for node in "$@"; do [ -n "$(beam_pid "$node")" ] || launch "$node"; done
    for node in "$@"; do wait_up "$node" "$BOOT_SECS" || failed+=("$node"); done
    [ ${#failed[@]} -eq 0 ] && return 0
    # Node 1's data is what the others joined: if it is lost, the cluster is made again.
    if [[ " ${failed[*]} " == *" tidings1 "* ]]; then failed=("${NODES[@]}"); fi
    for node in "${failed[@]}"; do
        kill_node "$node"
        log "wiping $(dir "$node")/mnesia and starting $(full "$node") afresh"
        rm -rf "$(dir "$node")/mnesia"; write_files "$node" || true
        if [ "$node" != tidings1 ] && is_up tidings1; then
            ctl tidings1 -q forget_cluster_node "$(full "$node")" >/dev/null 2>&1 || true
        fi
        launch "$node"
    done
    for node in "${failed[@]}"; do wait_up "$node" "$BOOT_SECS" || die "$(full "$node") does not start"; done
}

# Joins node 2 or 3 to node 1's cluster unless it is a member already.
join() {
    local node=$1 members
    members=$(api_nodes "$node" || true)
    if grep -q "^$(full tidings1) " <<<"$members"; then return 0; fi
    log "joining $(full "$node") to $(full tidings1)"
    ctl "$node" -q stop_app >/dev/null
    if ! ctl "$node" -q join_cluster "$(full tidings1)" >/dev/null 2>&1; then
        # node 1 may still list an earlier incarnation of this node
        ctl tidings1 -q forget_cluster_node "$(full "$node")" >/dev/null 2>&1 || true
        ctl "$node" -q join_cluster "$(full tidings1)" >/dev/null
    fi
    ctl "$node" -q start_app >/dev/null
    wait_up "$node" "$BOOT_SECS"
}

# Waits until node $1's management API shows every node in $2… running.
wait_clustered() {
    local viewer=$1 node members missing
    shift
    for _ in $(seq "$((BOOT_SECS * 2))"); do
        members=$(api_nodes "$viewer" || true)
        missing=
        for node in "$@"; do
            grep -q "^$(full "$node") running" <<<"$members" || missing="$missing $(full "$node")"
        done
        [ -z "$missing" ] && return 0
        sleep 0.5
    done
    die "not running in the cluster as $(full "$viewer") sees it:$missing"
}

status() {
    local node pid state
    for node in "${NODES[@]}"; do
        pid=$(beam_pid "$node")
        if is_up "$node"; then
            state=up
        elif [ -z "$pid" ]; then
            state=down
        elif port_open "$(amqp_port "$node")"; then
            state="VM running, listening, management API not answering"
        else
            state="VM running, app not up"
        fi
        log "$(full "$node"): $state${pid:+ (pid $pid)}; AMQP 127.0.0.1:$(amqp_port "$node"), STOMP $(stomp_port "$node"), management $(mgmt_port "$node")"
    done
    for node in "${NODES[@]}"; do
        if is_up "$node"; then
            log "cluster as $(full "$node") sees it: $(api_nodes "$node" | paste -sd, | sed 's/,/, /g')"
            return 0
        fi
    done
    log "no node is up"
    return 1
}

cmd=${1:-start}
node=
if [ $# -ge 2 ]; then node=$(node_arg "$2"); fi
mkdir -p "$BASE"
exec 9>"$BASE/cluster.sh.lock"
flock 9 # one run of this script at a time

started=$(date +%s.%N)
elapsed() { awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
case "$cmd" in
    start)
        if [ -n "$node" ]; then
            boot "$node"
            [ "$node" = tidings1 ] || join "$node"
            wait_clustered "$node" tidings1 "$node"
            log "$(full "$node") up and clustered ($(elapsed) s)"
        else
            boot "${NODES[@]}"
            join tidings2
            join tidings3
            wait_clustered tidings1 "${NODES[@]}"
            log "cluster up: $(full tidings1), $(full tidings2), $(full tidings3) on AMQP 127.0.0.1:5682-5684 ($(elapsed) s)"
        fi
        ;;
    status) status ;;
    stop) [ -n "$node" ] || die "usage: cluster.sh stop NODE"; stop_node "$node" ;;
    kill) [ -n "$node" ] || die "usage: cluster.sh kill NODE"; kill_node "$node" ;;
    stop-all)
        for n in "${NODES[@]}"; do stop_node "$n" & done
        wait
        ;;
    *) die "unknown command '$cmd' (start [NODE], status, stop NODE, kill NODE, stop-all)" ;;
esac
