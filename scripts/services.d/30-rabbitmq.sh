# shellcheck shell=bash
# Sourced by scripts/services: defines up_rabbitmq, down_rabbitmq and status_rabbitmq.
#
# RabbitMQ is the system node (Debian's rabbitmq-server), shared with every clone and
# with the STOMP plugin (31-rabbitmq-stomp.sh): this file only makes sure AMQP answers
# on 127.0.0.1:5672 and that the test users and vhost exist. It never restarts a
# running node, and writes /etc/rabbitmq's files only when there are none.

RMQ_PORT=5672
RMQ_DIR=$DIR/rabbitmq
RMQ_VHOST=iotctl-test                       # a second vhost (URL /iotctl-test)
RMQ_USER=iotctl RMQ_PASS=iotctl-secret      # full rights on / and iotctl-test
RMQ_READER=iotctl-reader RMQ_READER_PASS=reader-secret   # on /: may read, not configure or write

rmq_answers() { tcp_open "$RMQ_PORT"; }

rmq_ctl() { timeout 60 rabbitmqctl -q "$@"; }

rmq_write_config() {
    # Loopback only (PEERS.md). Existing files are someone's configuration: keep them.
    mkdir -p /etc/rabbitmq
    if [[ ! -e /etc/rabbitmq/rabbitmq.conf ]]; then
        cat >/etc/rabbitmq/rabbitmq.conf <<CONF
# Written by iotctl's scripts/services (30-rabbitmq.sh): loopback only.
listeners.tcp.default = $HOST:$RMQ_PORT
distribution.listener.interface = $HOST
CONF
    fi
    if [[ ! -e /etc/rabbitmq/rabbitmq-env.conf ]]; then
        cat >/etc/rabbitmq/rabbitmq-env.conf <<CONF
# Written by iotctl's scripts/services (30-rabbitmq.sh): loopback only.
export NODENAME=rabbit@localhost
export NODE_IP_ADDRESS=$HOST
export ERL_EPMD_ADDRESS=$HOST
CONF
    fi
}

rmq_started() { rmq_ctl await_startup; }

# rmq_user NAME PASSWORD: create the user, or reset its password when it differs.
rmq_user() {
    if ! rmq_ctl list_users | awk '{print $1}' | grep -qx -- "$1"; then
        rmq_ctl add_user "$1" "$2" >/dev/null
    elif ! rmq_ctl authenticate_user "$1" "$2" >/dev/null 2>&1; then
        rmq_ctl change_password "$1" "$2" >/dev/null
    fi
}

# Fast path (each rabbitmqctl call starts an Erlang VM, about a second): two listings
# show whether the vhost, the users and their permissions are already in place.
rmq_accounts_ok() {
    local root test
    test=$(rmq_ctl list_permissions -p "$RMQ_VHOST" 2>/dev/null) || return 1
    root=$(rmq_ctl list_permissions -p / 2>/dev/null) || return 1
    grep -qxF "$(printf '%s\t.*\t.*\t.*' "$RMQ_USER")" <<<"$test" &&
        grep -qxF "$(printf 'guest\t.*\t.*\t.*')" <<<"$test" &&
        grep -qxF "$(printf '%s\t.*\t.*\t.*' "$RMQ_USER")" <<<"$root" &&
        grep -qxF "$(printf '%s\t^$\t^$\t.*' "$RMQ_READER")" <<<"$root"
}

rmq_accounts() {
    rmq_accounts_ok && return 0
    if ! rmq_ctl list_vhosts | grep -qx -- "$RMQ_VHOST"; then
        rmq_ctl add_vhost "$RMQ_VHOST" >/dev/null
    fi
    rmq_user "$RMQ_USER" "$RMQ_PASS"
    rmq_ctl set_permissions -p / "$RMQ_USER" '.*' '.*' '.*' >/dev/null
    rmq_ctl set_permissions -p "$RMQ_VHOST" "$RMQ_USER" '.*' '.*' '.*' >/dev/null
    rmq_ctl set_permissions -p "$RMQ_VHOST" guest '.*' '.*' '.*' >/dev/null
    rmq_user "$RMQ_READER" "$RMQ_READER_PASS"
    rmq_ctl set_permissions -p / "$RMQ_READER" '^$' '^$' '.*' >/dev/null
}

up_rabbitmq() {
    ensure_packages rabbitmq-server amqp-tools
    ensure_certs   # the AMQP TLS tests terminate TLS in front of the broker with the test CA's certificate
    mkdir -p "$RMQ_DIR"
    if ! rmq_answers; then
        is_root || die "RabbitMQ is not answering on $HOST:$RMQ_PORT and starting it needs root"
        rmq_write_config
        log "rabbitmq: starting the node (rabbitmq-server -detached)"
        rabbitmq-server -detached >>"$RMQ_DIR/start.log" 2>&1 || true
    fi
    # await_startup exits at once (69) until the node has registered: retry it
    wait_until /var/log/rabbitmq "rabbitmq (rabbitmqctl await_startup)" rmq_started
    wait_until /var/log/rabbitmq "rabbitmq on tcp $HOST:$RMQ_PORT" rmq_answers
    rmq_accounts
    status_rabbitmq
}

down_rabbitmq() {
    # The node is the system's, shared with other clones and the STOMP plugin: leave it.
    log "rabbitmq: left running (shared); stop it yourself with: rabbitmqctl stop"
}

status_rabbitmq() {
    if rmq_answers; then
        echo "rabbitmq: up   amqp://$HOST:$RMQ_PORT (guest/guest; $RMQ_USER/$RMQ_PASS; vhosts / and $RMQ_VHOST)"
        return 0
    fi
    echo "rabbitmq: down amqp://$HOST:$RMQ_PORT  (logs in /var/log/rabbitmq)"
    return 1
}

# --------------------------------------------------------------------------- plugins
# What the plugin files (31-rabbitmq-stomp.sh, 33-amqp1.sh, 34-rabbitmq-mqtt.sh) share:
# the running node (started here when it is not), and a plugin's TCP listener kept on
# 127.0.0.1 only.

rmq_node_up() {
    rabbitmqctl -q status >/dev/null 2>&1 && return 0
    if declare -F up_rabbitmq >/dev/null; then
        up_rabbitmq
    else
        die "RabbitMQ is not running (start the node first: rabbitmq-server -detached)"
    fi
}

# rmq_listener_bound PORT: the local addresses listening on PORT, one per line
rmq_listener_bound() { ss -Hltn "sport = :$1" 2>/dev/null | awk '{print $4}'; }

# rmq_listener_loopback_only PORT: something listens on PORT, on $HOST only
rmq_listener_loopback_only() {
    local addrs
    addrs=$(rmq_listener_bound "$1")
    [[ -n $addrs ]] && ! grep -qvE "^($HOST|\\[::ffff:$HOST\\]):" <<<"$addrs"
}

# rmq_plugin_listener APP KEY PORT NAME: plugin APP (e.g. rabbitmq_stomp) enabled with
# its TCP listener on $HOST:PORT only. KEY is its rabbitmq.conf prefix (stomp, mqtt),
# NAME what its log line calls it (STOMP, MQTT). The listener is set in the node's
# application environment before the plugin starts (persistent) and in
# /etc/rabbitmq/rabbitmq.conf for the next boot; a plugin found listening elsewhere
# gets only its own application restarted (the node others use is never restarted).
rmq_plugin_listener() {
    local app=$1 key=$2 port=$3 name=$4
    local conf=/etc/rabbitmq/rabbitmq.conf line="$key.listeners.tcp.1 = $HOST:$port"
    local listener="[{\"$HOST\", $port}]"
    rmq_node_up
    mkdir -p /etc/rabbitmq
    touch "$conf"
    if ! grep -qxF "$line" "$conf"; then
        sed -i "/^[[:space:]]*$key\\.listeners\\.tcp\\./d" "$conf"
        printf '%s\n' "$line" >>"$conf"
    fi
    if ! rabbitmq-plugins -q is_enabled "$app" >/dev/null 2>&1; then
        rabbitmqctl -q eval "application:set_env($app, tcp_listeners, $listener, [{persistent, true}])." >/dev/null
        rabbitmq-plugins -q enable "$app" >/dev/null
    fi
    wait_until /var/log/rabbitmq "RabbitMQ $name on tcp $HOST:$port" rmq_listener_bound "$port"
    if ! rmq_listener_loopback_only "$port"; then
        log "$app: listening on $(rmq_listener_bound "$port" | tr '\n' ' ')- restarting only the $name plugin on $HOST"
        rabbitmqctl -q eval "application:stop($app), application:set_env($app, tcp_listeners, $listener, [{persistent, true}]), application:ensure_all_started($app)." >/dev/null
        wait_until /var/log/rabbitmq "RabbitMQ $name on tcp $HOST:$port" rmq_listener_loopback_only "$port"
    fi
}
