# shellcheck shell=bash
# Sourced by scripts/services: defines up_rabbitmq-stomp, down_rabbitmq-stomp and
# status_rabbitmq-stomp.
#
# RabbitMQ's STOMP plugin on 127.0.0.1:61613, enabled on the running node (the system
# RabbitMQ others use is never restarted or stopped here). By default the plugin
# listens on every interface: rmq_plugin_listener (30-rabbitmq.sh) keeps it on
# 127.0.0.1.
# Test accounts, created idempotently:
#   vhost iotctl-stomp: iotctl-stomp / iotctl-stomp-secret (configure, write, read all)
#                       iotctl-stomp-reader / reader-secret (read only: a send is refused)
# `down` disables nothing (other users of the node may rely on the plugin).

RABBIT_STOMP_PORT=61613
RABBIT_STOMP_VHOST=iotctl-stomp

rabbit_stomp_loopback_only() { rmq_listener_loopback_only "$RABBIT_STOMP_PORT"; }

rabbit_stomp_answers() {
    # shellcheck disable=SC2016
    timeout 5 bash -c '
        exec 3<>"/dev/tcp/$0/$1" || exit 1
        printf "CONNECT\naccept-version:1.2\nhost:$2\nlogin:iotctl-stomp\npasscode:iotctl-stomp-secret\n\n\0" >&3
        IFS= read -r -t 4 line <&3 && [[ $line == CONNECTED* ]]' "$HOST" "$RABBIT_STOMP_PORT" "$RABBIT_STOMP_VHOST"
}

rabbit_stomp_accounts() {
    local vhosts
    vhosts=$(rabbitmqctl -q list_vhosts name 2>/dev/null)
    grep -qxF "$RABBIT_STOMP_VHOST" <<<"$vhosts" || rabbitmqctl -q add_vhost "$RABBIT_STOMP_VHOST" >/dev/null
    rmq_user iotctl-stomp iotctl-stomp-secret
    rmq_user iotctl-stomp-reader reader-secret
    rabbitmqctl -q set_permissions -p "$RABBIT_STOMP_VHOST" iotctl-stomp '.*' '.*' '.*' >/dev/null
    rabbitmqctl -q set_permissions -p "$RABBIT_STOMP_VHOST" iotctl-stomp-reader '.*' '^$' '.*' >/dev/null
}

up_rabbitmq-stomp() {
    rmq_plugin_listener rabbitmq_stomp stomp "$RABBIT_STOMP_PORT" STOMP
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
