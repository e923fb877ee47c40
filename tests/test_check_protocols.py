"""`iotctl check URL` for every protocol but MQTT and AMQP 1.0 (tests/test_check.py and
the amqp1 tests have those), against the real peers: RabbitMQ (AMQP, its STOMP and MQTT
plugins), ActiveMQ (STOMP), Prosody (XMPP), `iotctl coap serve` and libcoap's
coap-server, the MQTT-SN gateway (both started here on free ports) and nginx (HTTP).
Each asserts the rows a user sees (what the server is, its limits as configured, TLS
verified or not) and the exit statuses when the server does not answer (3 refused,
4 login refused, 5 no answer, 7 TLS)."""

from __future__ import annotations

import json
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid

import pytest

from tests.conftest import CERTS
from tests.helpers import clean_env, free_port, mqttsn_gateway, stop, wait_until


def _check(*args: str, timeout: float = 120):
    """(exit status, {(section, name): (value, status)}, stderr) of `iotctl check ... -o json`."""
    r = subprocess.run([sys.executable, "-m", "iotctl", "check", *map(str, args), "-o", "json"],
                       capture_output=True, env=clean_env(), timeout=timeout)
    data = json.loads(r.stdout) if r.stdout.strip() else {"checks": []}
    rows = {(c["section"], c["name"]): (c["value"], c["status"]) for c in data["checks"]}
    return r.returncode, rows, r.stderr.decode()


def _value(rows, section: str, name: str):
    assert (section, name) in rows, (section, name, sorted(rows))
    return rows[(section, name)][0]


def _status(rows, section: str, name: str) -> str:
    assert (section, name) in rows, (section, name, sorted(rows))
    return rows[(section, name)][1]


def _probes(rows) -> list:
    return [name for section, name in rows if section == "probe"]


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("iotctl: error: ")]


def _ca(name: str = "ca.crt") -> str:
    path = CERTS / name
    if not path.exists():
        pytest.fail(f"test certificate {path} is missing; run: scripts/services up", pytrace=False)
    return str(path)


def _rabbitmqctl(*args: str) -> str:
    done = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


class TlsFront:
    """TLS terminated in front of a plain TCP peer (the test CA's localhost certificate):
    an amqps:// listener for RabbitMQ, which has none here."""

    def __init__(self, target_port: int):
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ctx.load_cert_chain(str(CERTS / "server.crt"), str(CERTS / "server.key"))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.target = target_port
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._start, args=(client,), daemon=True).start()

    def _start(self, client) -> None:
        try:
            client.settimeout(10)
            client = self.ctx.wrap_socket(client, server_side=True)
            client.settimeout(None)
            upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            upstream.settimeout(None)
        except OSError:
            client.close()
            return
        self.sockets += [client, upstream]
        threading.Thread(target=self._relay, args=(upstream, client), daemon=True).start()
        self._relay(client, upstream)

    @staticmethod
    def _relay(src, dst) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()
        for s in self.sockets:
            try:
                s.close()
            except OSError:
                pass


@pytest.fixture
def silent_udp():
    """A UDP port where something is bound and never answers (no ICMP either)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    yield sock.getsockname()[1]
    sock.close()


@pytest.fixture
def silent_tcp():
    """A TCP port that accepts and never says a word."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list = []
    done = threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not done.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    threading.Thread(target=accept, daemon=True).start()
    yield listener.getsockname()[1]
    done.set()
    listener.close()
    for s in held:
        s.close()


# =========================================================================== AMQP 0-9-1 (RabbitMQ)

AMQP = "amqp://guest:guest@127.0.0.1:5672/%2f"


def test_amqp_reports_rabbitmq_its_capabilities_and_limits_and_probes_through_a_temporary_queue(peer):
    peer("rabbitmq")
    code, rows, err = _check(AMQP)
    assert code == 0, err
    assert _value(rows, "server", "product").startswith("RabbitMQ 3.")
    assert _value(rows, "server", "platform").startswith("Erlang/OTP")
    assert _value(rows, "server", "cluster name").startswith("rabbit@")
    assert _status(rows, "server", "connect") == "ok" and " ms (TCP, AMQP handshake" in _value(rows, "server",
                                                                                              "connect")
    for capability in ("publisher confirms", "consumer cancel notify", "basic.nack", "per-consumer qos",
                       "direct reply-to"):
        assert _value(rows, "capabilities", capability) is True, capability
    # RabbitMQ's defaults: frame_max 131072, channel_max 2047, heartbeat 60 s
    assert _value(rows, "limits", "frame max") == "131072 bytes"
    assert _value(rows, "limits", "channel max") == "2047"
    assert _value(rows, "limits", "heartbeat") == "60 s"
    assert _value(rows, "login", "accepted") == "user guest (PLAIN)"
    assert "PLAIN" in _value(rows, "login", "mechanisms offered").split()
    assert _value(rows, "login", "vhost") == "/"
    queue = _value(rows, "probe", "temporary queue")
    assert queue.startswith("amq.gen-") and "exclusive" in queue
    assert _status(rows, "probe", "publish (confirm)") == "ok"
    assert _status(rows, "probe", "round trip") == "ok"
    assert _value(rows, "probe", "firehose (tracing)").split()[0] in ("on", "off")
    # the exclusive queue went with the check's connection
    wait_until(lambda: queue.split()[0] not in _rabbitmqctl("list_queues", "-p", "/", "name"), 10,
               "the probe's queue removed")


def test_amqp_tells_whether_the_firehose_is_on_in_the_vhost(peer):
    peer("rabbitmq")
    vhost = f"iotctl-check-{uuid.uuid4().hex[:8]}"
    _rabbitmqctl("add_vhost", vhost)
    try:
        _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        code, rows, err = _check(f"amqp://guest:guest@127.0.0.1:5672/{vhost}")
        assert code == 0, err
        assert _value(rows, "login", "vhost") == vhost
        assert rows[("probe", "firehose (tracing)")] == (f"off in vhost {vhost!r}", "info")
        _rabbitmqctl("trace_on", "-p", vhost)
        code, rows, err = _check(f"amqp://guest:guest@127.0.0.1:5672/{vhost}")
        assert code == 0, err
        value, status = rows[("probe", "firehose (tracing)")]
        assert value.startswith(f"on in vhost {vhost!r}") and status == "warn"
        assert _status(rows, "probe", "round trip") == "ok"
    finally:
        _rabbitmqctl("delete_vhost", vhost)


def test_amqp_without_probe_declares_and_publishes_nothing(peer):
    peer("rabbitmq")
    code, rows, err = _check(AMQP, "--no-probe")
    assert code == 0, err
    assert _probes(rows) == ["skipped"]
    assert _value(rows, "server", "product").startswith("RabbitMQ")


def test_amqp_a_user_who_may_not_declare_gets_a_failed_probe_not_a_failed_check(peer):
    peer("rabbitmq")
    code, rows, err = _check("amqp://iotctl-reader:reader-secret@127.0.0.1:5672")
    assert code == 0, err
    value, status = rows[("probe", "temporary queue")]
    assert status == "fail" and "ACCESS_REFUSED" in value and "iotctl-reader" in value
    assert _value(rows, "login", "accepted") == "user iotctl-reader (PLAIN)"


def test_amqp_exit_statuses_refused_login_and_no_answer(peer, silent_tcp):
    peer("rabbitmq")
    port = free_port(socket.SOCK_STREAM)
    code, rows, err = _check(f"amqp://guest:guest@127.0.0.1:{port}")
    assert code == 3 and "connection refused" in err, err
    code, rows, err = _check("amqp://guest:wrong@127.0.0.1:5672/%2f")
    assert code == 4, err
    assert _error_lines(err) and "refused the login" in err and "wrong" not in err
    code, rows, err = _check(f"amqp://guest:guest@127.0.0.1:{silent_tcp}", "-W", "1.5")
    assert code == 5 and "no AMQP handshake within 1.5 s" in err, err


def test_amqp_over_tls_verified_and_not(peer):
    peer("rabbitmq")
    front = TlsFront(5672)
    try:
        code, rows, err = _check(f"amqps://guest:guest@localhost:{front.port}/%2f?cafile={_ca()}", "--no-probe")
        assert code == 0, err
        assert rows[("tls", "verified")] == ("chain and name localhost", "ok")
        assert _value(rows, "tls", "subject") == "commonName=localhost"
        assert _value(rows, "tls", "issuer") == "commonName=iotctl test CA"
        assert "TLS" in _value(rows, "server", "connect")
        code, rows, err = _check(f"amqps://guest:guest@localhost:{front.port}/%2f?cafile={_ca('other-ca.crt')}",
                                 "--no-probe")
        assert code == 7, err
        value, status = rows[("tls", "verified")]
        assert status == "fail" and "certificate" in value
        assert _value(rows, "tls", "subject") == "commonName=localhost"  # shown all the same
    finally:
        front.close()


# =========================================================================== STOMP (RabbitMQ, ActiveMQ)

RABBIT_STOMP = "stomp://iotctl-stomp:iotctl-stomp-secret@127.0.0.1:61613?vhost=iotctl-stomp"
ACTIVEMQ = "stomp://iotctl:iotctl-secret@127.0.0.1:61614"


def test_stomp_rabbitmq_connected_frame_heartbeats_and_a_round_trip_through_a_temporary_topic(peer):
    peer("rabbitmq-stomp")
    code, rows, err = _check(RABBIT_STOMP + "&heartbeats=4000,6000")
    assert code == 0, err
    assert re.fullmatch(r"RabbitMQ/3\.\d+\.\d+", _value(rows, "server", "server"))
    assert _value(rows, "server", "version") == "1.2"
    assert _value(rows, "server", "session").startswith("session-")
    assert _value(rows, "server", "heart-beat") == \
        "6000,4000 (asked 4000,6000: we send every 4000 ms, the server every 6000 ms)"
    assert _value(rows, "login", "accepted") == "user iotctl-stomp"
    assert _value(rows, "login", "vhost") == "iotctl-stomp (the host header)"
    assert _value(rows, "probe", "destination").startswith("/topic/iotctl.check.")
    for probe in ("subscribe (receipt)", "send (receipt)", "round trip"):
        assert _status(rows, "probe", probe) == "ok", (probe, rows[("probe", probe)])
    assert _value(rows, "probe", "round trip").startswith("MESSAGE back in ")


def test_stomp_activemq_uses_a_temp_queue_and_stomp_over_tls(peer):
    peer("activemq")
    code, rows, err = _check(ACTIVEMQ)
    assert code == 0, err
    assert _value(rows, "server", "server").startswith("ActiveMQ/5.")
    assert _value(rows, "server", "session").startswith("ID:")
    assert _value(rows, "server", "heart-beat") == "0,0 (asked 0,0: none)"
    assert _value(rows, "probe", "destination").startswith("/temp-queue/iotctl-check-")
    assert _status(rows, "probe", "round trip") == "ok", rows
    tls = "stomp+ssl://iotctl:iotctl-secret@localhost:61615?cafile="
    code, rows, err = _check(tls + _ca(), "--no-probe")
    assert code == 0, err
    assert rows[("tls", "verified")] == ("chain and name localhost", "ok")
    assert _value(rows, "tls", "protocol").startswith("TLSv1")
    assert _probes(rows) == ["skipped"]
    code, rows, err = _check(tls + _ca("other-ca.crt"), "--no-probe")
    assert code == 7 and _status(rows, "tls", "verified") == "fail", err


def test_stomp_exit_statuses(peer, silent_tcp):
    peer("activemq")
    peer("rabbitmq-stomp")
    code, rows, err = _check("stomp://iotctl:wrong@127.0.0.1:61614")
    assert code == 4 and "refused the login" in err, err
    code, rows, err = _check("stomp://iotctl-stomp:wrong@127.0.0.1:61613?vhost=iotctl-stomp")
    assert code == 4 and "refused the login" in err, err
    code, rows, err = _check(f"stomp://iotctl:x@127.0.0.1:{free_port(socket.SOCK_STREAM)}")
    assert code == 3 and "connection refused" in err, err
    code, rows, err = _check(f"stomp://iotctl:x@127.0.0.1:{silent_tcp}", "-W", "1.5")
    assert code == 5 and "no CONNECTED frame within 1.5 s" in err, err


def test_stomp_a_user_who_may_not_write_gets_a_failed_probe(peer):
    peer("rabbitmq-stomp")
    code, rows, err = _check("stomp://iotctl-stomp-reader:reader-secret@127.0.0.1:61613?vhost=iotctl-stomp")
    assert code == 0, err
    failed = [(name, value) for (section, name), (value, status) in rows.items()
              if section == "probe" and status == "fail"]
    assert failed and "ACCESS_REFUSED" in failed[0][1], rows


# =========================================================================== XMPP (Prosody)

XMPP = "xmpp://dave:dave-pw@localhost"


def test_xmpp_stream_features_discovery_version_components_and_the_probe(peer):
    peer("prosody")
    code, rows, err = _check(f"{XMPP}?cafile={_ca()}")
    assert code == 0, err
    assert rows[("tls", "verified")] == ("chain and name localhost", "ok")
    assert _value(rows, "tls", "subject") == "commonName=localhost"
    assert re.fullmatch(r"\d+\.\d ms \(TCP, STARTTLS, SASL, bind\)", _value(rows, "server", "login"))
    assert _value(rows, "server", "identity") == "server/im (Prosody)"
    assert re.fullmatch(r"Prosody 0\.12\.\d+ on Linux", _value(rows, "server", "software"))
    # as scripts/services configures it: c2s_require_encryption, smacks on, no carbons or MAM
    assert _value(rows, "features", "TLS") == "STARTTLS (required)"
    assert "SCRAM-SHA-1" in _value(rows, "features", "SASL mechanisms").split()
    assert _value(rows, "features", "stream management (XEP-0198)") == "enabled"
    assert _value(rows, "features", "ping (XEP-0199)") == "yes"
    assert _value(rows, "features", "blocking (XEP-0191)") == "yes"
    assert _value(rows, "features", "message archive (XEP-0313)") == "no"
    assert _value(rows, "features", "message carbons (XEP-0280)") == "no"
    assert _value(rows, "components", "conference.localhost") == "group chat (MUC)"
    login = _value(rows, "login", "accepted")
    assert login.startswith("dave@localhost/") and login.endswith("(SCRAM-SHA-1)")
    assert _status(rows, "probe", "ping") == "ok"
    assert _status(rows, "probe", "message to oneself") == "ok"


def test_xmpp_direct_tls_and_no_probe(peer):
    peer("prosody")
    code, rows, err = _check(f"{XMPP}?server=127.0.0.1:5223&direct_tls=true&cafile={_ca()}", "--no-probe")
    assert code == 0, err
    assert _value(rows, "features", "TLS") == "direct TLS (XEP-0368)"
    assert rows[("tls", "verified")] == ("chain and name localhost", "ok")  # the domain's name, not 127.0.0.1
    assert _value(rows, "server", "address") == "127.0.0.1:5223 (domain localhost)"
    assert _probes(rows) == ["skipped"]


def test_xmpp_exit_statuses_and_an_untrusted_certificate_through_starttls(peer):
    peer("prosody")
    code, rows, err = _check(f"xmpp://dave:wrong@localhost?cafile={_ca()}")
    assert code == 4 and "refused the login (not-authorized" in err, err
    code, rows, err = _check(f"{XMPP}?cafile={_ca('other-ca.crt')}")
    assert code == 7, err
    value, status = rows[("tls", "verified")]
    assert status == "fail" and "certificate" in value
    assert _value(rows, "tls", "subject") == "commonName=localhost"  # read through STARTTLS all the same
    code, rows, err = _check(f"{XMPP}?server=127.0.0.1:{free_port(socket.SOCK_STREAM)}&cafile={_ca()}")
    assert code == 3 and "connection refused" in err, err


# =========================================================================== CoAP (coap serve, libcoap)


@pytest.fixture
def coap_serve():
    """`iotctl coap serve` on a free UDP port, with /large of 5,000 bytes."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "iotctl", "coap", "serve", "-p", str(port), "--large-size", "5000"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=clean_env())
    try:
        from tests.conftest import _coap_ping

        wait_until(lambda: _coap_ping("127.0.0.1", port) or proc.poll() is not None, 15, "coap serve")
        assert proc.poll() is None, "iotctl coap serve did not start"
        yield port
    finally:
        stop(proc, timeout=10)


def test_coap_serve_resources_observables_formats_and_blockwise(coap_serve):
    code, rows, err = _check(f"coap://127.0.0.1:{coap_serve}")
    assert code == 0, err
    assert re.fullmatch(r"RST in \d+\.\d ms", _value(rows, "server", "ping (empty CON)"))
    assert _value(rows, "server", "GET /.well-known/core").startswith("2.05 Content in ")
    assert _value(rows, "resources", "listed") == 7
    assert _value(rows, "resources", "observable") == \
        "4 (/time, /sensors/temperature, /sensors/humidity, /actuators/led)"
    formats = _value(rows, "resources", "content formats").split(", ")
    assert {"application/json", "application/cbor", "application/senml+json", "application/link-format"} <= set(
        formats)
    # /large is listed with sz=5000: fetched in blocks of 1024
    assert re.fullmatch(r"5000 bytes in 5 blocks of 1024 \(\d+\.\d ms\)", _value(rows, "block-wise", "GET /large"))
    assert _value(rows, "login", "none") == "CoAP has no login"
    assert not _probes(rows)  # nothing is written to a CoAP server, probe or not


def test_coap_libcoap_server_and_dtls(peer):
    peer("coap-server")
    code, rows, err = _check("coap://127.0.0.1:5783")
    assert code == 0, err
    assert _status(rows, "server", "ping (empty CON)") == "ok"
    assert _value(rows, "resources", "listed") >= 4
    assert _value(rows, "resources", "observable").split(" (")[1].startswith("/time")
    assert re.fullmatch(r"\d+ bytes in \d+ blocks of 16 \(\d+\.\d ms\)", _value(rows, "block-wise", "GET /"))
    peer("coaps-server")
    code, rows, err = _check("coaps://127.0.0.1:5786#psk_identity=iotctl&psk=iotctl-psk")
    assert code == 0, err
    assert _value(rows, "security", "DTLS") == "pre-shared key, identity 'iotctl'"
    assert _status(rows, "server", "GET /.well-known/core") == "ok"
    assert ("server", "ping (empty CON)") not in rows  # no plain ping through DTLS
    code, rows, err = _check("coaps://127.0.0.1:5786#psk_identity=iotctl&psk=wrong-key", "-W", "2")
    assert code == 5 and "a DTLS handshake that fails looks like this" in err, err


def test_coap_exit_statuses(silent_udp):
    code, rows, err = _check(f"coap://127.0.0.1:{free_port()}")
    assert code == 3 and "port unreachable" in err, err
    started = time.monotonic()
    code, rows, err = _check(f"coap://127.0.0.1:{silent_udp}", "-W", "1.5")
    assert code == 5 and "no answer within 1.5 s" in err, err
    assert time.monotonic() - started < 15


# =========================================================================== MQTT-SN (the gateway)


@pytest.fixture
def gateway(peer):
    peer("mosquitto")
    with mqttsn_gateway("mqtt://127.0.0.1:1883", "--gw-id", "42") as port:
        yield port


def test_mqttsn_gateway_id_connect_and_round_trips(gateway):
    code, rows, err = _check(f"mqttsn://127.0.0.1:{gateway}")
    assert code == 0, err
    assert _value(rows, "server", "SEARCHGW").startswith("GWINFO in ")
    assert _value(rows, "server", "gateway id") == "42"
    assert _value(rows, "server", "connect").startswith("CONNACK accepted in ")
    assert _value(rows, "probe", "topic").startswith("iotctl/check/")
    for probe in ("REGISTER", "SUBSCRIBE (QoS 1)", "QoS 0 round trip", "QoS 1 round trip"):
        assert _status(rows, "probe", probe) == "ok", (probe, rows.get(("probe", probe)))
    assert re.fullmatch(r"PUBACK in \d+\.\d ms, back in \d+\.\d ms", _value(rows, "probe", "QoS 1 round trip"))
    short = [name for name in _probes(rows) if name.startswith("short topic ")]
    assert len(short) == 1 and _status(rows, "probe", short[0]) == "ok"
    code, rows, err = _check(f"mqttsn://127.0.0.1:{gateway}", "--no-probe")
    assert code == 0 and _probes(rows) == ["skipped"], err


def test_mqttsn_exit_statuses(silent_udp):
    code, rows, err = _check(f"mqttsn://127.0.0.1:{free_port()}")
    assert code == 3 and "port unreachable" in err, err
    started = time.monotonic()
    code, rows, err = _check(f"mqttsn://127.0.0.1:{silent_udp}", "-W", "1")
    assert code == 5 and "no CONNACK from the gateway" in err, err
    assert rows[("server", "SEARCHGW")][1] == "warn"
    assert time.monotonic() - started < 15


# =========================================================================== HTTP (nginx)


def test_http_status_server_version_methods_and_keepalive(peer):
    peer("nginx")
    code, rows, err = _check("http://127.0.0.1:18080/hello")
    assert code == 0, err
    assert re.fullmatch(r"200 OK in \d+\.\d ms \(connect \d+\.\d ms\)", _value(rows, "server", "HEAD"))
    assert _value(rows, "server", "server").startswith("nginx")
    assert _value(rows, "server", "http version") == "HTTP/1.1"
    assert _value(rows, "server", "keep-alive").startswith("yes")
    assert _value(rows, "login", "none needed") == "the server answered without credentials"
    code, rows, err = _check("http://127.0.0.1:18080/status/404")
    assert code == 0, err  # an answer is a finding
    assert rows[("server", "HEAD")][1] == "warn" and _value(rows, "server", "HEAD").startswith("404 ")
    code, rows, err = _check("http://127.0.0.1:18080/redirect/1")
    assert code == 0 and _value(rows, "server", "redirects to").endswith("/hello"), err


def test_http_tls_and_logins(peer):
    peer("nginx")
    code, rows, err = _check(f"https://localhost:18443/hello#cafile={_ca()}")
    assert code == 0, err
    assert rows[("tls", "verified")] == ("chain and name localhost", "ok")
    assert _value(rows, "tls", "names").startswith("localhost")
    assert _value(rows, "server", "strict transport security") == "no"
    code, rows, err = _check(f"https://localhost:18443/hello#cafile={_ca('other-ca.crt')}")
    assert code == 7 and _status(rows, "tls", "verified") == "fail", err
    code, rows, err = _check("http://iotctl:wrong@127.0.0.1:18080/basic")
    assert code == 4, err
    value, status = rows[("login", "refused")]
    assert status == "fail" and 'Basic realm="iotctl"' in value and "wrong" not in json.dumps(list(rows.values()))
    code, rows, err = _check("http://iotctl:iotctl-secret@127.0.0.1:18080/basic")
    assert code == 0 and _value(rows, "login", "accepted") == "basic, user iotctl", err


def test_http_exit_statuses_and_a_listener_url(peer):
    peer("nginx")
    code, rows, err = _check(f"http://127.0.0.1:{free_port(socket.SOCK_STREAM)}/")
    assert code == 3 and "connection refused" in err, err
    code, rows, err = _check("http://127.0.0.1:18080/slow", "-W", "1")
    assert code == 5 and "no answer within 1 s" in err, err
    code, rows, err = _check("http+listen://127.0.0.1:8089/hooks")
    assert code == 2 and _error_lines(err) == [
        "iotctl: error: cannot check http+listen://127.0.0.1:8089/hooks: http+listen:// is a listener (iotctl "
        "receives the requests): there is no server to check"], err


# =========================================================================== MQTT (RabbitMQ's plugin)


def test_mqtt_check_of_rabbitmqs_mqtt_plugin(peer):
    peer("rabbitmq-mqtt")
    code, rows, err = _check("mqtt://guest:guest@127.0.0.1:11887", "--max-payload", "100000")
    assert code == 0, err
    # RabbitMQ 3.10: MQTT 3.1 and 3.1.1, no MQTT 5, no shared subscriptions
    assert _status(rows, "versions", "MQTT 3.1.1") == "ok" and _status(rows, "versions", "MQTT 3.1") == "ok"
    assert _status(rows, "versions", "MQTT 5") == "warn"
    for probe in ("QoS 0 round trip", "QoS 1 round trip", "retain", "wildcard +", "wildcard #"):
        assert _status(rows, "probe", probe) == "ok", (probe, rows[("probe", probe)])
    assert rows[("probe", "shared subscription")] == ("subscribed, nothing came", "warn")
    code, rows, err = _check("mqtt://guest:wrong@127.0.0.1:11887", "--no-probe")
    assert code == 4 and "refused the login" in err, err
