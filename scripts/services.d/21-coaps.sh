# shellcheck shell=bash
# Sourced by scripts/services: defines up_coaps, down_coaps and status_coaps.

# coaps: libcoap's server serves DTLS on the port after -p; the PSK is test-only
COAPS_PLAIN_PORT=5785
COAPS_PORT=5786
COAPS_PSK=iotctl-psk
COAPS_IDENTITY=iotctl
COAPS_DIR=$DIR/coaps

# -------------------------------------------------------------------- coaps (DTLS, PSK)

coaps_answers() {
    local out
    out=$(timeout 5 coap-client-openssl -B 2 -k "$COAPS_PSK" -u "$COAPS_IDENTITY" \
        "coaps://$HOST:$COAPS_PORT/.well-known/core" 2>&1) && [[ $out == *'</'* ]]
}

coaps_bound() { [[ -n $(ss -Hlun "sport = :$COAPS_PORT" 2>/dev/null) ]]; }

coaps_running() { pid_alive "$COAPS_DIR/coap-server.pid" "coap-server-openssl"; }

up_coaps() {
    # libcoap3-bin has the DTLS server; autoconf, automake and libtool are what
    # DTLSSocket (aiocoap's DTLS module, iotctl's `dtls` extra) needs to build from source
    ensure_packages libcoap3-bin autoconf automake libtool
    mkdir -p "$COAPS_DIR"
    if ! coaps_running; then
        if coaps_bound; then
            die "udp port $COAPS_PORT is already taken by a process not started by us (no live $COAPS_DIR/coap-server.pid)"
        fi
        rotate_log "$COAPS_DIR/coap-server.log"
        spawn "$COAPS_DIR/coap-server.log" "$COAPS_DIR/coap-server.pid" \
            coap-server-openssl -A "$HOST" -p "$COAPS_PLAIN_PORT" -k "$COAPS_PSK"
    fi
    wait_until "$COAPS_DIR/coap-server.log" "coap-server-openssl on udp $HOST:$COAPS_PORT" coaps_bound
    wait_until "$COAPS_DIR/coap-server.log" "coap-server-openssl on udp $HOST:$COAPS_PORT" coaps_answers
    coaps_running || die "coap-server-openssl exited; see $COAPS_DIR/coap-server.log"
    status_coaps
}

down_coaps() {
    stop_pidfile "$COAPS_DIR/coap-server.pid" "coap-server-openssl" coaps
    status_coaps || true
}

status_coaps() {
    if coaps_running && coaps_answers; then
        echo "coaps: up   coaps://$HOST:$COAPS_PORT (DTLS PSK: identity $COAPS_IDENTITY, key $COAPS_PSK; coap-server-openssl)"
        return 0
    fi
    echo "coaps: down coaps://$HOST:$COAPS_PORT  (log $COAPS_DIR/coap-server.log)"
    return 1
}

