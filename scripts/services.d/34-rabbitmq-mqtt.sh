# shellcheck shell=bash
# Sourced by scripts/services: defines up_rabbitmq-mqtt, down_rabbitmq-mqtt and
# status_rabbitmq-mqtt.
#
# RabbitMQ's MQTT plugin on 127.0.0.1:11887 (not 1883: Mosquitto has it), enabled on the
# running node with its listener on 127.0.0.1 only (rmq_plugin_listener, 30-rabbitmq.sh). It serves `iotctl check mqtt://` against a broker
# that is not Mosquitto (MQTT 3.1 and 3.1.1 only in 3.10, no shared subscriptions).
# Logins: RabbitMQ's users (guest/guest from loopback); anonymous clients are guest.
# `down` disables nothing (other users of the node may rely on the plugin).

RABBIT_MQTT_PORT=11887

rabbit_mqtt_loopback_only() { rmq_listener_loopback_only "$RABBIT_MQTT_PORT"; }

# an MQTT 3.1.1 CONNECT as guest/guest (client id "svc") answered by CONNACK 0 (accepted)
rabbit_mqtt_answers() {
    # shellcheck disable=SC2016
    timeout 5 bash -c '
        exec 3<>"/dev/tcp/$0/$1" || exit 1
        printf "\x10\x1d\x00\x04MQTT\x04\xc2\x00\x3c\x00\x03svc\x00\x05guest\x00\x05guest" >&3
        [[ $(timeout 4 head -c 4 <&3 | od -An -tx1 | tr -d " \n") == 20020000 ]]' "$HOST" "$RABBIT_MQTT_PORT"
}

up_rabbitmq-mqtt() {
    rmq_plugin_listener rabbitmq_mqtt mqtt "$RABBIT_MQTT_PORT" MQTT
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
