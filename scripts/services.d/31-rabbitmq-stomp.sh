# shellcheck shell=bash
# Sourced by scripts/services: defines up_rabbitmq-stomp, down_rabbitmq-stomp and
# status_rabbitmq-stomp.
#
# RabbitMQ's STOMP plugin on 127.0.0.1:61613, enabled on the running node (the system
# RabbitMQ others use is never restarted or stopped here). By default the plugin
# listens on every interface; so before enabling it the listener is set to
# 127.0.0.1:61613 in the node's application environment (persistent, so loading the
# plugin keeps it) and in /etc/rabbitmq/rabbitmq.conf (for the next boot). A plugin
# found listening elsewhere gets only its own application restarted with that setting.
# Test accounts, created idempotently:
#   vhost iotctl-stomp: iotctl-stomp / iotctl-stomp-secret (configure, write, read all)
#                       iotctl-stomp-reader / reader-secret (read only: a send is refused)
# `down` disables nothing (other users of the node may rely on the plugin).

RABBIT_STOMP_PORT=61613
RABBIT_STOMP_VHOST=iotctl-stomp
RABBIT_STOMP_LISTENER="[{\"$HOST\", $RABBIT_STOMP_PORT}]"

rabbit_stomp_node_up() { rabbitmqctl -q status >/dev/null 2>&1; }

# the STOMP listener's local addresses, one per line (e.g. 127.0.0.1:61613)
rabbit_stomp_bound() { ss -Hltn "sport = :$RABBIT_STOMP_PORT" 2>/dev/null | awk '{print $4}'; }

rabbit_stomp_loopback_only() {
    local addrs
    addrs=$(rabbit_stomp_bound)
    [[ -n $addrs ]] && ! grep -qvE "^($HOST|\\[::ffff:$HOST\\]):" <<<"$addrs"
}

rabbit_stomp_answers() {
    # shellcheck disable=SC2016
    timeout 5 bash -c '
        exec 3<>"/dev/tcp/$0/$1" || exit 1
        printf "CONNECT\naccept-version:1.2\nhost:$2\nlogin:iotctl-stomp\npasscode:iotctl-stomp-secret\n\n\0" >&3
        IFS= read -r -t 4 line <&3 && [[ $line == CONNECTED* ]]' "$HOST" "$RABBIT_STOMP_PORT" "$RABBIT_STOMP_VHOST"
}

rabbit_stomp_conf() {
    local conf=/etc/rabbitmq/rabbitmq.conf line="stomp.listeners.tcp.1 = $HOST:$RABBIT_STOMP_PORT"
    mkdir -p /etc/rabbitmq
    touch "$conf"
    if ! grep -qxF "$line" "$conf"; then
        sed -i '/^[[:space:]]*stomp\.listeners\.tcp\./d' "$conf"
        printf '%s\n' "$line" >>"$conf"
    fi
}

rabbit_stomp_accounts() {
    local vhosts users
    vhosts=$(rabbitmqctl -q list_vhosts name 2>/dev/null)
    grep -qxF "$RABBIT_STOMP_VHOST" <<<"$vhosts" || rabbitmqctl -q add_vhost "$RABBIT_STOMP_VHOST" >/dev/null
    users=$(rabbitmqctl -q list_users 2>/dev/null | awk '{print $1}')
    local u p
    for u in iotctl-stomp:iotctl-stomp-secret iotctl-stomp-reader:reader-secret; do
        p=${u#*:}
        u=${u%%:*}
        if grep -qxF "$u" <<<"$users"; then
            rabbitmqctl -q authenticate_user "$u" "$p" >/dev/null 2>&1 ||
                rabbitmqctl -q change_password "$u" "$p" >/dev/null
        else
            rabbitmqctl -q add_user "$u" "$p" >/dev/null
        fi
    done
    rabbitmqctl -q set_permissions -p "$RABBIT_STOMP_VHOST" iotctl-stomp '.*' '.*' '.*' >/dev/null
    rabbitmqctl -q set_permissions -p "$RABBIT_STOMP_VHOST" iotctl-stomp-reader '.*' '^$' '.*' >/dev/null
}

up_rabbitmq-stomp() {
    if ! rabbit_stomp_node_up; then
        if declare -F up_rabbitmq >/dev/null; then
            up_rabbitmq
        else
            die "RabbitMQ is not running (start the node first: rabbitmq-server -detached)"
        fi
    fi
    rabbit_stomp_conf
    if ! rabbitmq-plugins -q is_enabled rabbitmq_stomp >/dev/null 2>&1; then
        rabbitmqctl -q eval "application:set_env(rabbitmq_stomp, tcp_listeners, $RABBIT_STOMP_LISTENER, [{persistent, true}])." >/dev/null
        rabbitmq-plugins -q enable rabbitmq_stomp >/dev/null
    fi
    wait_until /var/log/rabbitmq "RabbitMQ STOMP on tcp $HOST:$RABBIT_STOMP_PORT" rabbit_stomp_bound
    if ! rabbit_stomp_loopback_only; then
        log "rabbitmq-stomp: listening on $(rabbit_stomp_bound | tr '\n' ' ')- restarting only the STOMP plugin on $HOST"
        rabbitmqctl -q eval "application:stop(rabbitmq_stomp), application:set_env(rabbitmq_stomp, tcp_listeners, $RABBIT_STOMP_LISTENER, [{persistent, true}]), application:ensure_all_started(rabbitmq_stomp)." >/dev/null
        wait_until /var/log/rabbitmq "RabbitMQ STOMP on tcp $HOST:$RABBIT_STOMP_PORT" rabbit_stomp_loopback_only
    fi
    rabbit_stomp_accounts
    wait_until /var/log/rabbitmq "RabbitMQ STOMP on $HOST:$RABBIT_STOMP_PORT" rabbit_stomp_answers
    status_rabbitmq-stomp
}

down_rabbitmq-stomp() {
    log "rabbitmq-stomp: left running (the plugin lives in the shared RabbitMQ node)"
}

status_rabbitmq-stomp() {
    if rabbit_stomp_loopback_only && rabbit_stomp_answers; then
        echo "rabbitmq-stomp: up   stomp://$HOST:$RABBIT_STOMP_PORT (vhost $RABBIT_STOMP_VHOST: iotctl-stomp/iotctl-stomp-secret, iotctl-stomp-reader/reader-secret)"
        return 0
    fi
    echo "rabbitmq-stomp: down stomp://$HOST:$RABBIT_STOMP_PORT  (rabbitmq-plugins enable rabbitmq_stomp; logs in /var/log/rabbitmq)"
    return 1
}
