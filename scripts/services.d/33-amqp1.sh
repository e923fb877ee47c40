# shellcheck shell=bash
# Sourced by scripts/services: defines up_amqp1, down_amqp1 and status_amqp1.
#
# The AMQP 1.0 peers of `iotctl amqp1`:
#
# 1. RabbitMQ's rabbitmq_amqp1_0 plugin, enabled on the running node (the shared
#    system RabbitMQ is never restarted or stopped here). The plugin has no listener
#    of its own: it answers the AMQP 1.0 protocol header on the node's AMQP port,
#    127.0.0.1:5672, next to 0-9-1. SASL PLAIN (guest/guest from loopback, iotctl /
#    iotctl-secret) and ANONYMOUS (as guest).
# 2. A second, independent broker: the Apache Qpid Proton C example broker
#    (Debian's libqpid-proton11-dev-examples, broker.c), compiled here into
#    $DIR/amqp1/broker and listening on 127.0.0.1:5691 (plain and TLS on the same
#    port, TLS with the test CA's server certificate; SASL ANONYMOUS only; every
#    address is a queue created on first use; it forwards messages pre-settled).
#    Debian's ActiveMQ 5.17 ships no AMQP transport (no activemq-amqp jar), and
#    neither Qpid Dispatch Router nor Artemis installs from Debian or PyPI here.
#
# `down` stops the Proton broker and leaves the plugin enabled (other users of the
# node may rely on it).

AMQP1_DIR=$DIR/amqp1
AMQP1_BROKER_PORT=5691
AMQP1_RABBIT_PORT=5672
AMQP1_EXAMPLES=/usr/share/proton/examples/c

# an AMQP 1.0 protocol header (SASL layer) is answered with one: the plugin is live
amqp1_header_answered() {
    # shellcheck disable=SC2016
    timeout 5 bash -c '
        exec 3<>"/dev/tcp/$0/$1" || exit 1
        printf "AMQP\x03\x01\x00\x00" >&3
        head -c 8 <&3 | od -An -tx1 | tr -d " \n" | grep -qx 414d515003010000' "$HOST" "$1"
}

amqp1_plugin_enabled() { rabbitmq-plugins -q is_enabled rabbitmq_amqp1_0 >/dev/null 2>&1; }

amqp1_broker_running() { pid_alive "$AMQP1_DIR/broker.pid" "$AMQP1_DIR/broker"; }

amqp1_broker_bound() { [[ -n $(ss -Hltn "sport = :$AMQP1_BROKER_PORT" 2>/dev/null) ]]; }

amqp1_broker_build() {
    local src=$AMQP1_DIR/src
    mkdir -p "$src" "$AMQP1_DIR/ssl-certs"
    # the example's TLS files, by the names it looks for in its working directory
    if ((CERTS_CHANGED)) || ! cmp -s "$CERTS/server.crt" "$AMQP1_DIR/ssl-certs/tserver-certificate.pem"; then
        cp "$CERTS/server.crt" "$AMQP1_DIR/ssl-certs/tserver-certificate.pem"
        cp "$CERTS/server.key" "$AMQP1_DIR/ssl-certs/tserver-private-key.pem"
        AMQP1_CHANGED=1
    fi
    if [[ -x $AMQP1_DIR/broker ]] && cmp -s "$AMQP1_EXAMPLES/broker.c" "$src/broker.c"; then
        return 0
    fi
    cp "$AMQP1_EXAMPLES/broker.c" "$AMQP1_EXAMPLES/thread.h" "$src/"
    log "amqp1: compiling the Qpid Proton example broker"
    # shellcheck disable=SC2046
    gcc -O2 -o "$AMQP1_DIR/broker.new" "$src/broker.c" \
        $(pkg-config --cflags --libs libqpid-proton) -lpthread \
        >"$AMQP1_DIR/build.log" 2>&1 || die "compiling $src/broker.c failed; see $AMQP1_DIR/build.log"
    mv -f "$AMQP1_DIR/broker.new" "$AMQP1_DIR/broker"
    AMQP1_CHANGED=1
}

up_amqp1() {
    ensure_packages libqpid-proton11-dev-examples gcc pkg-config
    rmq_node_up
    if ! amqp1_plugin_enabled; then
        log "amqp1: enabling rabbitmq_amqp1_0 on the running node"
        rabbitmq-plugins -q enable rabbitmq_amqp1_0 >/dev/null
    fi
    wait_until /var/log/rabbitmq "RabbitMQ AMQP 1.0 on $HOST:$AMQP1_RABBIT_PORT" amqp1_header_answered "$AMQP1_RABBIT_PORT"

    ensure_certs
    AMQP1_CHANGED=0
    amqp1_broker_build
    if amqp1_broker_running && ((AMQP1_CHANGED)); then
        log "amqp1: broker or certificate changed, restarting"
        stop_pidfile "$AMQP1_DIR/broker.pid" "$AMQP1_DIR/broker" amqp1-broker
    fi
    if ! amqp1_broker_running; then
        amqp1_broker_bound && die "tcp port $AMQP1_BROKER_PORT is taken by a process not started by us"
        rotate_log "$AMQP1_DIR/broker.log"
        local runas=()
        if is_root; then
            chmod 0755 "$AMQP1_DIR" "$AMQP1_DIR/ssl-certs"
            chmod 0644 "$AMQP1_DIR"/ssl-certs/*
            runas=(setpriv --reuid nobody --regid nogroup --clear-groups --)
        fi
        # it reads ssl-certs/ from its working directory
        (cd "$AMQP1_DIR" && spawn "$AMQP1_DIR/broker.log" "$AMQP1_DIR/broker.pid" \
            "${runas[@]}" "$AMQP1_DIR/broker" "$HOST" "$AMQP1_BROKER_PORT")
    fi
    wait_until "$AMQP1_DIR/broker.log" "the Proton broker on $HOST:$AMQP1_BROKER_PORT" amqp1_header_answered "$AMQP1_BROKER_PORT"
    amqp1_broker_running || die "the Proton broker exited; see $AMQP1_DIR/broker.log"
    status_amqp1
}

down_amqp1() {
    stop_pidfile "$AMQP1_DIR/broker.pid" "$AMQP1_DIR/broker" amqp1-broker
    log "amqp1: rabbitmq_amqp1_0 left enabled (the plugin lives in the shared RabbitMQ node)"
}

status_amqp1() {
    local rc=0
    if amqp1_plugin_enabled && amqp1_header_answered "$AMQP1_RABBIT_PORT"; then
        echo "amqp1: up   amqp://$HOST:$AMQP1_RABBIT_PORT (RabbitMQ rabbitmq_amqp1_0; guest/guest, iotctl/iotctl-secret, ANONYMOUS)"
    else
        echo "amqp1: down amqp://$HOST:$AMQP1_RABBIT_PORT  (rabbitmq-plugins enable rabbitmq_amqp1_0)"
        rc=1
    fi
    if amqp1_broker_running && amqp1_header_answered "$AMQP1_BROKER_PORT"; then
        echo "amqp1: up   amqp://$HOST:$AMQP1_BROKER_PORT (Qpid Proton example broker; ANONYMOUS; TLS on the same port)"
    else
        echo "amqp1: down amqp://$HOST:$AMQP1_BROKER_PORT  (log $AMQP1_DIR/broker.log)"
        rc=1
    fi
    return $rc
}
