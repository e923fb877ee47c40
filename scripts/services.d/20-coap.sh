# shellcheck shell=bash
# Sourced by scripts/services: defines up_coap, down_coap and status_coap.

# coap
COAP_PORT=5783
COAP_DIR=$DIR/coap

# -------------------------------------------------------------------- coap

# coap-client-notls exits 0 even when nothing listens (ICMP refused) and prints its log
# lines on stdout, so look for link-format content ("</time>;...") instead.
coap_answers() {
    local out
    out=$(timeout 5 coap-client-notls -B 2 "coap://$HOST:$COAP_PORT/.well-known/core" 2>&1) &&
        [[ $out == *'</'* ]]
}

coap_bound() { [[ -n $(ss -Hlun "sport = :$COAP_PORT" 2>/dev/null) ]]; }

coap_running() { pid_alive "$COAP_DIR/coap-server.pid" "coap-server-notls"; }

up_coap() {
    ensure_packages libcoap3-bin
    mkdir -p "$COAP_DIR"
    if ! coap_running; then
        if coap_bound; then
            die "udp port $COAP_PORT is already taken by a process not started by us (no live $COAP_DIR/coap-server.pid)"
        fi
        rotate_log "$COAP_DIR/coap-server.log"
        spawn "$COAP_DIR/coap-server.log" "$COAP_DIR/coap-server.pid" \
            coap-server-notls -A "$HOST" -p "$COAP_PORT" -d 10
    fi
    # Probing before the socket is bound costs a whole -B timeout, so wait for it first.
    wait_until "$COAP_DIR/coap-server.log" "coap-server-notls on udp $HOST:$COAP_PORT" coap_bound
    wait_until "$COAP_DIR/coap-server.log" "coap-server-notls on udp $HOST:$COAP_PORT" coap_answers
    coap_running || die "coap-server-notls exited; see $COAP_DIR/coap-server.log"
    status_coap
}

down_coap() {
    stop_pidfile "$COAP_DIR/coap-server.pid" "coap-server-notls" coap
    status_coap || true
}

status_coap() {
    if coap_running && coap_answers; then
        echo "coap: up   coap://$HOST:$COAP_PORT (udp; coap-server-notls, PUT creates up to 10 resources)"
        return 0
    fi
    echo "coap: down coap://$HOST:$COAP_PORT  (log $COAP_DIR/coap-server.log)"
    return 1
}

