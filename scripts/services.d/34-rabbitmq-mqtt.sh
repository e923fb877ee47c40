# shellcheck shell=bash
# Sourced by scripts/services: defines up_rabbitmq-mqtt, down_rabbitmq-mqtt and
# status_rabbitmq-mqtt.
#
# RabbitMQ's MQTT plugin on 127.0.0.1:11887 (not 1883: Mosquitto has it), enabled on the
# running node like the STOMP plugin (31-rabbitmq-stomp.sh): the listener is set in the
# node's application environment before the plugin starts (persistent) and in
# /etc/rabbitmq/rabbitmq.conf for the next boot; a plugin found listening elsewhere gets
# only its own application restarted. It serves `iotctl check mqtt://` against a broker
# that is not Mosquitto (MQTT 3.1 and 3.1.1 only in 3.10, no shared subscriptions).
# Logins: RabbitMQ's users (guest/guest from loopback); anonymous clients are guest.
# `down` disables nothing (other users of the node may rely on the plugin).

RABBIT_MQTT_PORT=11887
RABBIT_MQTT_LISTENER="[{\"$HOST\", $RABBIT_MQTT_PORT}]"

rabbit_mqtt_node_up() { rabbitmqctl -q status >/dev/null 2>&1; }

# the MQTT listener's local addresses, one per line (e.g. 127.0.0.1:11887)
rabbit_mqtt_bound() { ss -Hltn "sport = :$RABBIT_MQTT_PORT" 2>/dev/null | awk '{print $4}'; }

rabbit_mqtt_loopback_only() {
    local addrs
    addrs=$(rabbit_mqtt_bound)
    [[ -n $addrs ]] && ! grep -qvE "^($HOST|\\[::ffff:$HOST\\]):" <<<"$addrs"
}

# an MQTT 3.1.1 CONNECT as guest/guest (client id "svc") answered by CONNACK 0 (accepted)
rabbit_mqtt_answers() {
    # shellcheck disable=SC2016
    timeout 5 bash -c '
        exec 3<>"/dev/tcp/$0/$1" || exit 1
        printf "\x10\x1d\x00\x04MQTT\x04\xc2\x00\x3c\x00\x03svc\x00\x05guest\x00\x05guest" >&3
        [[ $(timeout 4 head -c 4 <&3 | od -An -tx1 | tr -d " \n") == 20020000 ]]' "$HOST" "$RABBIT_MQTT_PORT"
}

rabbit_mqtt_conf() {
    local conf=/etc/rabbitmq/rabbitmq.conf line="mqtt.listeners.tcp.1 = $HOST:$RABBIT_MQTT_PORT"
    mkdir -p /etc/rabbitmq
    touch "$conf"
    if ! grep -qxF "$line" "$conf"; then
        sed -i '/^[[:space:]]*mqtt\.listeners\.tcp\./d' "$conf"
        printf '%s\n' "$line" >>"$conf"
    fi
}

up_rabbitmq-mqtt() {
    if ! rabbit_mqtt_node_up; then
        if declare -F up_rabbitmq >/dev/null; then
            up_rabbitmq
        else
            die "RabbitMQ is not running (start the node first: rabbitmq-server -detached)"
        fi
    fi
    rabbit_mqtt_conf
    if ! rabbitmq-plugins -q is_enabled rabbitmq_mqtt >/dev/null 2>&1; then
        rabbitmqctl -q eval "application:set_env(rabbitmq_mqtt, tcp_listeners, $RABBIT_MQTT_LISTENER, [{persistent, true}])." >/dev/null
        rabbitmq-plugins -q enable rabbitmq_mqtt >/dev/null
    fi
    wait_until /var/log/rabbitmq "RabbitMQ MQTT on tcp $HOST:$RABBIT_MQTT_PORT" rabbit_mqtt_bound
    if ! rabbit_mqtt_loopback_only; then
        log "rabbitmq-mqtt: listening on $(rabbit_mqtt_bound | tr '\n' ' ')- restarting only the MQTT plugin on $HOST"
        rabbitmqctl -q eval "application:stop(rabbitmq_mqtt), application:set_env(rabbitmq_mqtt, tcp_listeners, $RABBIT_MQTT_LISTENER, [{persistent, true}]), application:ensure_all_started(rabbitmq_mqtt)." >/dev/null
        wait_until /var/log/rabbitmq "RabbitMQ MQTT on tcp $HOST:$RABBIT_MQTT_PORT" rabbit_mqtt_loopback_only
    fi
    wait_until /var/log/rabbitmq "RabbitMQ MQTT on $HOST:$RABBIT_MQTT_PORT" rabbit_mqtt_answers
    status_rabbitmq-mqtt
}

down_rabbitmq-mqtt() {
    log "rabbitmq-mqtt: left running (the plugin lives in the shared RabbitMQ node)"
}

status_rabbitmq-mqtt() {
    if rabbit_mqtt_loopback_only && rabbit_mqtt_answers; then
        echo "rabbitmq-mqtt: up   mqtt://$HOST:$RABBIT_MQTT_PORT (RabbitMQ's MQTT plugin; guest/guest)"
        return 0
    fi
    echo "rabbitmq-mqtt: down mqtt://$HOST:$RABBIT_MQTT_PORT  (rabbitmq-plugins enable rabbitmq_mqtt; logs in /var/log/rabbitmq)"
    return 1
}
