#!/usr/bin/env bash
# Makes sure every broker the test suite needs is installed and running. Idempotent: safe to run
# twice; prints what it did. Called by the README test command (and so by CI).
#
#   RabbitMQ  127.0.0.1:5672 (AMQP 0.9.1 and, with its plugin, AMQP 1.0), guest/guest
#   RabbitMQ cluster of 3 nodes on 127.0.0.1:5682-5684 (scripts/cluster.sh), for the tests that
#             stop or kill a broker node
set -euo pipefail

log() { printf 'brokers.sh: %s\n' "$*"; }

apt_install() {
    if [ "$(id -u)" != 0 ]; then
        log "need root to apt-get install $*"; return 1
    fi
    if [ -z "${APT_UPDATED:-}" ]; then
        apt-get update -qq >/dev/null; APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

wait_port() { # host port seconds
    local host=$1 port=$2 secs=$3
    for _ in $(seq "$((secs * 4))"); do
        if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then return 0; fi
        sleep 0.25
    done
    return 1
}

# --- RabbitMQ -------------------------------------------------------------------------------
if ! command -v rabbitmq-server >/dev/null; then
    log "installing rabbitmq-server"; apt_install rabbitmq-server
fi
if ! rabbitmqctl -q status >/dev/null 2>&1; then
    log "starting RabbitMQ"; rabbitmq-server -detached
fi
# Wait for the node to finish booting (plugins are enabled below, which needs a running node).
if ! rabbitmqctl -q await_startup --timeout 90 >/dev/null 2>&1; then
    log "RabbitMQ did not finish starting within 90 s"; exit 1
fi
if ! wait_port 127.0.0.1 5672 60; then
    log "RabbitMQ did not open 127.0.0.1:5672"; exit 1
fi
log "RabbitMQ is up on 127.0.0.1:5672"

# Plugins: STOMP on 61613 (stomp driver), AMQP 1.0 on 5672 (amqp10 driver), and the management
# HTTP API on 15672 (the amqp10 driver declares durable group queues through it).
for plugin in rabbitmq_stomp rabbitmq_amqp1_0 rabbitmq_management; do
    if ! rabbitmq-plugins -q is_enabled "$plugin" >/dev/null 2>&1; then
        log "enabling $plugin"; rabbitmq-plugins -q enable "$plugin" >/dev/null
    fi
done
wait_port 127.0.0.1 61613 60 || { log "RabbitMQ STOMP did not open 127.0.0.1:61613"; exit 1; }
wait_port 127.0.0.1 15672 60 || { log "RabbitMQ management did not open 127.0.0.1:15672"; exit 1; }
log "RabbitMQ STOMP on 127.0.0.1:61613, management on 127.0.0.1:15672"

# --- RabbitMQ cluster (fault tests) -------------------------------------------------------------
# Started in the background while ActiveMQ starts; waited for at the end.
CLUSTER_LOG=$(mktemp)
bash "$(dirname "$0")/cluster.sh" start >"$CLUSTER_LOG" 2>&1 &
CLUSTER_PID=$!

# --- ActiveMQ (stomp driver) -----------------------------------------------------------------
#   ActiveMQ 5.17 (Debian's `activemq` package), instance `tidings`, STOMP on 127.0.0.1:61623
#   (61613 is RabbitMQ's), OpenWire on 127.0.0.1:61616; no authentication plugin, so any
#   login (the tests use admin/admin) is accepted. Data in /var/lib/activemq/tidings.
#   Debian ships no systemd unit that works here, so the activemq script is run directly.
AMQ_INSTANCE=/etc/activemq/instances-available/tidings
AMQ_BASE=/var/lib/activemq/tidings
AMQ_PIDFILE=/var/lib/activemq/tidings/activemq.pid
if [ ! -x /usr/bin/activemq ]; then
    log "installing activemq"; apt_install activemq
fi
# tcpNoDelay: without it the broker holds small frames back (Nagle) until the client's delayed
# ACK, and every request/reply round trip takes ~44 ms instead of ~1 ms.
AMQ_XML=$(cat <<'XML'
<beans xmlns="http://www.springframework.org/schema/beans"
       xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
       xsi:schemaLocation="http://www.springframework.org/schema/beans http://www.springframework.org/schema/beans/spring-beans-2.0.xsd
       http://activemq.apache.org/schema/core http://activemq.apache.org/schema/core/activemq-core.xsd">
  <bean class="org.springframework.beans.factory.config.PropertyPlaceholderConfigurer"/>
  <broker xmlns="http://activemq.apache.org/schema/core" useJmx="false" brokerName="tidings"
          dataDirectory="${activemq.base}/data" schedulePeriodForDestinationPurge="10000">
    <destinationPolicy>
      <policyMap>
        <policyEntries>
          <!-- tidings RPC inboxes and private broadcast queues: removed once unused. -->
          <policyEntry queue="tidings-private.>" gcInactiveDestinations="true"
                       inactiveTimoutBeforeGC="30000"/>
        </policyEntries>
      </policyMap>
    </destinationPolicy>
    <persistenceAdapter>
      <kahaDB directory="${activemq.base}/data/kahadb"/>
    </persistenceAdapter>
    <transportConnectors>
      <transportConnector name="openwire" uri="tcp://127.0.0.1:61616"/>
      <transportConnector name="stomp" uri="stomp://127.0.0.1:61623?transport.hbGracePeriodMultiplier=2&amp;transport.tcpNoDelay=true"/>
    </transportConnectors>
  </broker>
</beans>
XML
)
if [ "$(cat "$AMQ_INSTANCE/activemq.xml" 2>/dev/null)" != "$AMQ_XML" ]; then
    log "writing $AMQ_INSTANCE/activemq.xml"
    mkdir -p "$AMQ_INSTANCE"
    cp /etc/activemq/instances-available/main/log4j2.properties "$AMQ_INSTANCE/" 2>/dev/null || true
    printf '%s\n' "$AMQ_XML" >"$AMQ_INSTANCE/activemq.xml"
    # A running broker reads its configuration only at start.
    if [ -f "$AMQ_PIDFILE" ] && kill -0 "$(cat "$AMQ_PIDFILE")" 2>/dev/null; then
        log "restarting ActiveMQ (pid $(cat "$AMQ_PIDFILE")) for the new configuration"
        kill "$(cat "$AMQ_PIDFILE")"
        for _ in $(seq 60); do kill -0 "$(cat "$AMQ_PIDFILE")" 2>/dev/null || break; sleep 1; done
    fi
fi
if ! (exec 3<>/dev/tcp/127.0.0.1/61623) 2>/dev/null; then
    # Debian's /usr/bin/activemq wrapper re-reads /usr/share/activemq/activemq-options, which
    # overrides ACTIVEMQ_BASE and sends output to /dev/null, so java is started directly.
    if [ -f "$AMQ_PIDFILE" ] && kill -0 "$(cat "$AMQ_PIDFILE")" 2>/dev/null; then
        log "ActiveMQ (pid $(cat "$AMQ_PIDFILE")) is starting; waiting for it"
    else
        log "starting ActiveMQ (instance tidings)"
        mkdir -p "$AMQ_BASE/data" "$AMQ_BASE/tmp"
        if getent passwd activemq >/dev/null; then chown -R activemq: "$AMQ_BASE"; fi
        amq_cmd="exec java -Xms256M -Xmx512M -Djava.io.tmpdir=$AMQ_BASE/tmp \
            -Dactivemq.classpath=$AMQ_INSTANCE -Dactivemq.home=/usr/share/activemq \
            -Dactivemq.base=$AMQ_BASE -Dactivemq.conf=$AMQ_INSTANCE -Dactivemq.data=$AMQ_BASE/data \
            -jar /usr/share/activemq/bin/activemq.jar start xbean:file:$AMQ_INSTANCE/activemq.xml"
        if [ "$(id -u)" = 0 ] && getent passwd activemq >/dev/null; then
            setsid nohup runuser -u activemq -- sh -c "$amq_cmd" >"$AMQ_BASE/console.log" 2>&1 &
        else
            setsid nohup sh -c "$amq_cmd" >"$AMQ_BASE/console.log" 2>&1 &
        fi
        echo $! >"$AMQ_PIDFILE"
    fi
fi
if ! wait_port 127.0.0.1 61623 90; then
    log "ActiveMQ did not open STOMP on 127.0.0.1:61623; see $AMQ_BASE/console.log"; tail -20 "$AMQ_BASE/console.log" || true
    exit 1
fi
log "ActiveMQ STOMP on 127.0.0.1:61623"

wait_cluster_status=0
wait "$CLUSTER_PID" || wait_cluster_status=$?
cat "$CLUSTER_LOG"; rm -f "$CLUSTER_LOG"
if [ "$wait_cluster_status" != 0 ]; then log "the RabbitMQ cluster did not start (scripts/cluster.sh)"; exit 1; fi
