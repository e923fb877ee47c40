"""The xmpp group when things go wrong: stored messages past the server's queue, a
connection cut through a TCP relay, a server restarted (a Prosody of the test's own),
a fake server sending hostile XML, payloads and options XMPP cannot carry, a stdin
that pauses, a reader of stdout that goes away.

The fake server (`FakeXmpp`) speaks just enough XMPP for a login (STARTTLS with the
test CA's localhost certificate, SASL PLAIN, resource binding, no stream management),
then runs the test's script."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import CERTS
from tests.helpers import clean_env, free_port, wait_port, wait_until

XDIST_GROUP = "prosody"  # fixed accounts: never at the same time as another module using them

SERVER = "127.0.0.1:5222"
PW = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw", "dave": "dave-pw", "erin": "erin-pw"}


def login(user: str, server: str = SERVER) -> list[str]:
    return ["--jid", f"{user}@localhost", "-P", PW[user], "--server", server, "--cafile", str(CERTS / "ca.crt")]


def iotctl_cmd(*args) -> list:
    return [sys.executable, "-m", "iotctl", *args]


def token() -> str:
    return uuid.uuid4().hex[:10]


def run(*args, input: bytes | None = None, timeout: float = 60, env: dict | None = None):
    return subprocess.run(iotctl_cmd(*args), input=input, capture_output=True, timeout=timeout,
                          env=clean_env(**(env or {})))


def drain(user: str, server: str = SERVER, idle: float = 1.5) -> bytes:
    """Take everything stored for `user` (Prosody takes seconds to load thousands of
    stored messages: `idle` counts from the login)."""
    done = run("-o", "raw", "xmpp", "listen", *login(user, server), "--idle-timeout", str(idle), timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def store(user: str, lines: list[str], server: str = SERVER) -> None:
    """Messages from alice, stored offline for `user` (who must not be online)."""
    done = run("xmpp", "send", f"{user}@localhost", "-l", *login("alice", server),
               input="".join(line + "\n" for line in lines).encode(), timeout=120)
    assert done.returncode == 0, done.stderr


class Lines(threading.Thread):
    """Reads a child's stdout line by line."""

    def __init__(self, stream):
        super().__init__(daemon=True)
        self.stream = stream
        self.lines: list[str] = []
        self.start()

    def run(self) -> None:
        for line in self.stream:
            self.lines.append(line.decode().rstrip("\n"))


class Background:
    def __init__(self, tmp_path: Path, *args, ready: str | None = "listening as", read: bool = True):
        self.err_path = tmp_path / f"bg-{token()}.err"
        self.err = open(self.err_path, "wb")
        self.proc = subprocess.Popen(iotctl_cmd(*args), stdout=subprocess.PIPE, stderr=self.err, env=clean_env())
        self.lines = Lines(self.proc.stdout) if read else None
        if ready:
            wait_until(lambda: ready in self.stderr or self.proc.poll() is not None, 20, f"{args[:3]} ready")
            assert self.proc.poll() is None, self.stderr

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def wait(self, timeout: float = 30) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        if self.lines is not None:
            self.lines.join(5)
        self.err.close()
        return code

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait(10)


@pytest.fixture
def background(tmp_path, peer):
    peer("prosody")
    started: list[Background] = []

    def start(*args, **kw) -> Background:
        bg = Background(tmp_path, *args, **kw)
        started.append(bg)
        return bg

    yield start
    for bg in started:
        bg.stop()


# --------------------------------------------------------------------------- a TCP relay


@pytest.fixture
def relay(peer):
    """tests/faults.TcpRelay in front of the shared Prosody."""
    from tests.faults import TcpRelay

    peer("prosody")
    relays: list = []

    def make():
        r = TcpRelay(5222)
        relays.append(r)
        return r

    yield make
    for r in relays:
        r.close()


# --------------------------------------------------------------------------- a fake server

HEADER = (b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
          b"xmlns:stream='http://etherx.jabber.org/streams' id='fake' from='localhost' version='1.0'>")


class FakeConn:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def expect(self, pattern: bytes, timeout: float = 15):
        regex = re.compile(pattern, re.S)
        end = time.monotonic() + timeout
        while True:
            m = regex.search(self.buf)
            if m:
                self.buf = self.buf[m.end():]
                return m
            self.sock.settimeout(max(0.01, end - time.monotonic()))
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("client closed")
            self.buf += data

    def tls(self) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(CERTS / "server.crt", CERTS / "server.key")
        self.sock.settimeout(15)
        self.sock = ctx.wrap_socket(self.sock, server_side=True)

    def flood(self, start: bytes, unit: bytes, limit: int) -> int:
        """`start`, then `unit` repeated (in 64 KiB writes) until `limit` bytes or the
        client hung up; returns the bytes sent."""
        self.send(start)
        chunk = unit * (65536 // len(unit))
        sent = 0
        try:
            while sent < limit:
                self.sock.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass
        return sent


class FakeXmpp:
    """A server that logs any client in (STARTTLS, SASL PLAIN, bind), then calls
    `script(conn)`; `before_login(conn)` instead takes over right after the first
    stream header."""

    def __init__(self, script=None, before_login=None):
        self.script, self.before_login = script, before_login
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4)
        self.port = self.listener.getsockname()[1]
        self.errors: list[BaseException] = []
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        c = FakeConn(sock)
        try:
            c.expect(rb"<stream:stream[^>]*>")
            if self.before_login is not None:
                self.before_login(c)
                return
            c.send(HEADER + b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/>"
                            b"</starttls></stream:features>")
            c.expect(rb"<starttls[^>]*/>")
            c.send(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            c.tls()
            c.expect(rb"<stream:stream[^>]*>")
            c.send(HEADER + b"<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"
                            b"<mechanism>PLAIN</mechanism></mechanisms></stream:features>")
            c.expect(rb"<auth[^>]*>[^<]*</auth>")
            c.send(b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>")
            c.expect(rb"<stream:stream[^>]*>")
            c.send(HEADER + b"<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>")
            m = c.expect(rb"<iq [^>]*id=\"([^\"]+)\"[^>]*>.*?</iq>")
            c.send(b"<iq type='result' id='%s'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                   b"<jid>alice@localhost/fake</jid></bind></iq>" % m.group(1))
            if self.script is not None:
                self.script(c)
        except (OSError, ConnectionError, ssl.SSLError):
            pass
        except BaseException as exc:  # noqa: BLE001  (shown by the test)
            self.errors.append(exc)
        finally:
            try:
                c.sock.close()
            except OSError:
                pass

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def fake_xmpp():
    servers: list[FakeXmpp] = []

    def make(**kw) -> FakeXmpp:
        s = FakeXmpp(**kw)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


def fake_login(port: int) -> list[str]:
    return ["--jid", "alice@localhost", "-P", "pw", "--server", f"127.0.0.1:{port}", "--cafile",
            str(CERTS / "ca.crt")]


def run_measured(args: list, timeout: float = 60, input: bytes | None = None) -> tuple[int, bytes, str, int]:
    """Run iotctl; (exit code, stdout, stderr, peak RSS in KiB of that process alone)."""
    from tests.helpers import PEAK_RSS_PROGRAM

    proc = subprocess.run([sys.executable, "-c", PEAK_RSS_PROGRAM, *map(str, args)], input=input,
                          stdin=None if input is not None else subprocess.DEVNULL, capture_output=True,
                          env=clean_env(), timeout=timeout)
    lines = proc.stderr.decode(errors="replace").splitlines()
    peak = int(next(line.split()[1] for line in lines if line.startswith("peak-rss-kib ")))
    err = "".join(line + "\n" for line in lines if not line.startswith("peak-rss-kib "))
    return proc.returncode, proc.stdout, err, peak


# --------------------------------------------------------------------------- issue 21 item 1: stored messages


def test_stored_messages_past_the_queue_arrive_exactly_once_after_a_count(peer):
    """1,000 messages stored for an offline account: `listen -C 100`, then `listen`
    again, prints each exactly once. (Prosody sends every stored message at once at
    login and keeps, of what the session did not acknowledge, only its
    stream-management queue: with its default of 500 the second listen got 500.)"""
    peer("prosody")
    drain("dave")
    t = token()
    sent = [f"{t} {i}" for i in range(1000)]
    store("dave", sent)
    first = run("-o", "raw", "xmpp", "listen", *login("dave"), "-C", "100", "-W", "30")
    assert first.returncode == 0, first.stderr
    rest = run("-o", "raw", "xmpp", "listen", *login("dave"), "--idle-timeout", "4", "-W", "60")
    assert rest.returncode == 0, rest.stderr
    got = first.stdout.decode().splitlines() + rest.stdout.decode().splitlines()
    assert got[:100] == sent[:100]
    assert sorted(got, key=lambda s: int(s.split()[1])) == sent  # all of them, each once


def test_stored_messages_survive_a_cut_mid_listen(relay, tmp_path):
    """The connection is cut after 300 of 1,000 stored messages were printed: the
    listener logs in again (same resource), and the server hands back what the cut
    session had not acknowledged: nothing is lost (with the server's default queue
    of 500 the cut lost hundreds). What was printed but whose acknowledgement the cut
    swallowed comes twice: the messages already read when the cut came are printed
    before the loss is noticed (at-least-once)."""
    drain("erin")
    t = token()
    sent = [f"{t} {i}" for i in range(1000)]
    store("erin", sent)
    r = relay()
    listener = Background(tmp_path, "-o", "raw", "xmpp", "listen", *login("erin", f"127.0.0.1:{r.port}"),
                          "--idle-timeout", "5", "-W", "90", ready=None)
    lines = listener.lines
    wait_until(lambda: len(lines.lines) >= 300 or listener.proc.poll() is not None, 30, "300 messages printed")
    r.cut()
    assert listener.wait(120) == 0, listener.stderr
    err = listener.stderr
    assert "connection lost" in err and "reconnected to erin@localhost" in err, err
    got = [line for line in lines.lines if line.startswith(t)]
    assert set(got) == set(sent), f"{len(set(sent) - set(got))} lost"
    # the first session printed sent[:k] in order, the second sent[j:] from where the
    # server's acknowledged count stood (j <= k): nothing else, nothing out of order
    k = next((i for i, (a, b) in enumerate(zip(got, sent)) if a != b), len(sent))
    j = len(sent) - (len(got) - k)
    assert 0 <= j <= k and got[k:] == sent[j:], (k, j)


# --------------------------------------------------------------------------- issue 21 item 6: a pause in -l


def test_send_lines_survives_a_long_pause_in_stdin(background):
    """`tail -f | xmpp send -l`: a pause of 12 s in the input is not a missing
    acknowledgement (it exited 5 and put both lines in --failed)."""
    drain("carol")
    listener = background("-o", "raw", "xmpp", "listen", *login("carol"), "--from", "alice@localhost", "-C", "2",
                          "-W", "60")
    t = token()
    shell = (f"(echo 'a {t}'; sleep 12; echo 'b {t}') | "
             + " ".join(map(_quote, iotctl_cmd("xmpp", "send", "carol@localhost", "-l", *login("alice")))))
    done = subprocess.run(["bash", "-c", shell], capture_output=True, timeout=60, env=clean_env())
    assert done.returncode == 0, done.stderr
    assert done.stderr == b""
    assert listener.wait() == 0, listener.stderr
    assert listener.lines.lines == [f"a {t}", f"b {t}"]


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(str(arg))


# --------------------------------------------------------------------------- issue 21 item 9: stdout closed


def test_listen_notices_a_closed_stdout_while_idle(background):
    """`xmpp listen | head -1`: after the first message, silence; the listener sees the
    reader gone within a second or so and exits 0 (not at the next message)."""
    drain("carol")
    listener = background("-o", "raw", "xmpp", "listen", *login("carol"), "--from", "alice@localhost", read=False)
    t = token()
    assert run("xmpp", "send", "carol@localhost", f"one {t}", *login("alice")).returncode == 0
    assert listener.proc.stdout.readline().decode() == f"one {t}\n"
    listener.proc.stdout.close()
    started = time.monotonic()
    code = listener.proc.wait(15)
    assert code == 0, listener.stderr
    assert time.monotonic() - started < 5
    assert "error" not in listener.stderr


# --------------------------------------------------------------------------- issue 21 item 10: server restarts


class PrivateProsody:
    """A Prosody of the test's own (as PEERS.md says: run as the prosody user), on a
    free port, domain localhost, accounts alice and erin, so restarting it disturbs
    nobody."""

    def __init__(self):
        if os.geteuid() != 0:
            pytest.fail("starting a Prosody of the test's own needs root (it runs as the prosody user)",
                        pytrace=False)
        self.dir = Path(tempfile.mkdtemp(prefix="iotctl-prosody-", dir="/var/tmp"))
        (self.dir / "data").mkdir()
        self.port = free_port(socket.SOCK_STREAM)
        self.config = self.dir / "prosody.cfg.lua"
        self.config.write_text(f"""
pidfile = "{self.dir}/prosody.pid"
data_path = "{self.dir}/data"
certificates = "{CERTS}"
log = {{ info = "{self.dir}/prosody.log" }}
interfaces = {{ "127.0.0.1" }}
local_interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {self.port} }}
c2s_direct_tls_ports = {{ }}
s2s_ports = {{ }}
modules_disabled = {{ "s2s", "s2s_auth_certs", "s2s_bidi", "dialback", "limits" }}
modules_enabled = {{ "roster"; "saslauth"; "tls"; "disco"; "ping"; "smacks"; "offline"; "posix"; }}
authentication = "internal_hashed"
storage = "internal"
c2s_require_encryption = true
allow_registration = false
smacks_hibernation_time = 5
smacks_max_queue_size = 10000
ssl = {{ certificate = "{CERTS}/server.crt"; key = "{CERTS}/server.key"; }}
VirtualHost "localhost"
""")
        subprocess.run(["chown", "-R", "prosody:prosody", str(self.dir)], check=True)
        os.chmod(self.dir, 0o755)
        for user in ("alice", "erin"):
            subprocess.run(["runuser", "-u", "prosody", "--", "prosodyctl", "--config", str(self.config), "register",
                            user, "localhost", PW[user]], check=True, capture_output=True, timeout=60)
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def server(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(["runuser", "-u", "prosody", "--", "prosody", "-F", "--config", str(self.config)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port("127.0.0.1", self.port, 20)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # prosody says system-shutdown to every client
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def private_prosody():
    p = PrivateProsody()
    yield p
    p.close()


def test_listen_reconnects_after_the_server_restarts(private_prosody, tmp_path):
    server = private_prosody.server
    listener = Background(tmp_path, "-o", "raw", "xmpp", "listen", *login("erin", server), "-C", "3", "-W", "90")
    try:
        t = token()
        assert run("xmpp", "send", "erin@localhost", f"before {t}", *login("alice", server)).returncode == 0
        wait_until(lambda: len(listener.lines.lines) >= 1, 15, "the first message")
        private_prosody.stop()
        time.sleep(2)  # down for a while: the listener tries again (refused) with backoff
        private_prosody.start()
        # sent while the listener may still be away: stored, then delivered when it is back
        assert run("xmpp", "send", "erin@localhost", f"between {t}", *login("alice", server)).returncode == 0
        wait_until(lambda: "reconnected to" in listener.stderr, 30, "the listener back")
        assert run("xmpp", "send", "erin@localhost", f"after {t}", *login("alice", server)).returncode == 0
        assert listener.wait(60) == 0, listener.stderr
    finally:
        listener.stop()
    assert listener.lines.lines == [f"before {t}", f"between {t}", f"after {t}"]
    err = listener.stderr.splitlines()
    lost = [line for line in err if "connection lost" in line]
    assert lost and "system-shutdown" in lost[0], err
    assert re.fullmatch(r"iotctl: connection lost \(.*\); reconnecting in 0\.5 s", lost[0]), err
    assert any("(attempt 2)" in line for line in lost), err  # refused while down: backoff
    assert sum("reconnected to erin@localhost on" in line for line in err) == 1, err


def test_listen_no_reconnect_exits_3_when_the_server_restarts(private_prosody, tmp_path):
    server = private_prosody.server
    listener = Background(tmp_path, "-o", "raw", "xmpp", "listen", *login("erin", server), "--no-reconnect")
    private_prosody.stop()
    code = listener.wait(30)
    assert code == 3, listener.stderr
    errors = [line for line in listener.stderr.splitlines() if line.startswith("iotctl: error")]
    assert errors == [f"iotctl: error: connection to 127.0.0.1:{private_prosody.port}: stream error: "
                      "system-shutdown: Server is shutting down"] or (
        len(errors) == 1 and "system-shutdown" in errors[0]), listener.stderr


# --------------------------------------------------------------------------- issue 23 item 1: hostile XML


NESTED_LIMIT = 3_000_000  # bytes of <a> the fake server sends at most (~1M elements)


def test_endlessly_nested_stanza_after_login_is_exit_6_with_bounded_memory(fake_xmpp):
    def script(c: FakeConn) -> None:
        c.expect(rb"<message ")
        c.flood(b"<message from='bob@localhost/x' to='alice@localhost/fake'><body>", b"<a>", NESTED_LIMIT)

    server = fake_xmpp(script=script)
    code, _, err, rss = run_measured(["xmpp", "send", "bob@localhost", "hi", *fake_login(server.port)])
    assert code == 6, err
    assert err.splitlines()[-1].startswith("iotctl: error: ")
    assert "nested deeper than 64 elements" in err, err
    assert len(err.splitlines()) == 1, err
    assert rss < 100 * 1024, f"peak RSS {rss // 1024} MiB"
    assert not server.errors


def test_endlessly_nested_xml_before_login_is_exit_6(fake_xmpp):
    server = fake_xmpp(before_login=lambda c: c.flood(HEADER, b"<a>", NESTED_LIMIT))
    code, _, err, rss = run_measured(["xmpp", "ping", *fake_login(server.port)])
    assert code == 6, err
    assert "nested deeper than 64 elements" in err and len(err.splitlines()) == 1, err
    assert rss < 100 * 1024, f"peak RSS {rss // 1024} MiB"


def test_huge_stanza_is_exit_6_with_bounded_memory(fake_xmpp):
    def script(c: FakeConn) -> None:
        c.expect(rb"<presence")
        c.flood(b"<message from='bob@localhost/x' to='alice@localhost/fake'><body>", b"x" * 1024, 40 << 20)

    server = fake_xmpp(script=script)
    code, _, err, rss = run_measured(["xmpp", "listen", *fake_login(server.port), "-W", "20"])
    assert code == 6, err
    assert "a stanza larger than 4 MiB" in err.splitlines()[-1], err
    assert rss < 100 * 1024, f"peak RSS {rss // 1024} MiB"


def test_not_well_formed_xml_is_exit_6(fake_xmpp):
    def script(c: FakeConn) -> None:
        c.expect(rb"<presence")
        c.send(b"<message><body>a & b</body></message>")
        time.sleep(5)

    server = fake_xmpp(script=script)
    code, _, err, _ = run_measured(["xmpp", "listen", *fake_login(server.port), "--no-reconnect", "-W", "20"])
    assert code == 6, err
    assert err.splitlines()[-1].startswith(f"iotctl: error: connection to 127.0.0.1:{server.port}: the server sent "
                                           "bad XML: not well-formed (invalid token)"), err


# --------------------------------------------------------------------------- without stream management


def test_without_stream_management_round_trips_confirm_and_errors_reach_failed(fake_xmpp, tmp_path):
    """A server without XEP-0198: each written batch is confirmed by a ping's answer;
    an error stanza for a message makes it refused, and --failed keeps it with its
    recipient, so `--replay FILE` alone sends it again."""
    seen: list[bytes] = []

    def script(c: FakeConn) -> None:
        while True:
            m = c.expect(rb"<(message|iq)\b[^>]*?(?:/>|>.*?</\1>)", timeout=20)
            stanza = m.group(0)
            seen.append(stanza)
            ident = re.search(rb'id="([^"]+)"', stanza).group(1)
            if stanza.startswith(b"<iq"):
                c.send(b"<iq type='result' id='%s' from='localhost' to='alice@localhost/fake'/>" % ident)
            elif b"<body>two</body>" in stanza:
                c.send(b"<message type='error' id='%s' from='bob@localhost'><error type='cancel'>"
                       b"<service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>"
                       % ident)

    server = fake_xmpp(script=script)
    failed = tmp_path / "failed.jsonl"
    code, _, err, _ = run_measured(["xmpp", "send", "bob@localhost", "-l", *fake_login(server.port),
                                    "--failed", str(failed)], input=b"one\ntwo\nthree\n")
    assert code == 6, err
    assert "service-unavailable" in err and "refused 1" in err, err
    envs = [json.loads(line) for line in failed.read_text().splitlines()]
    assert [(e["payload"], e["address"], e["protocol"]) for e in envs] == [("two", "bob@localhost", "xmpp")]
    assert any(s.startswith(b"<iq") and b"urn:xmpp:ping" in s for s in seen)
    # the file alone says where it goes
    seen.clear()
    code, _, err, _ = run_measured(["xmpp", "send", "--replay", str(failed), *fake_login(server.port)])
    assert code == 6 and "service-unavailable" in err, err  # the fake server refuses it again
    assert any(b'to="bob@localhost"' in s and b"<body>two</body>" in s for s in seen)


# --------------------------------------------------------------------------- issue 23 items 6, 7, 8


@pytest.fixture
def no_server():
    """A TCP port that counts connections (and never answers)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.settimeout(0.1)
    yield listener
    listener.close()


def _connections(listener: socket.socket) -> int:
    n = 0
    while True:
        try:
            c, _ = listener.accept()
        except OSError:
            return n
        c.close()
        n += 1


@pytest.mark.parametrize("args, stdin, what, why", [
    (["A\x01B"], None, "payload", "control character 0x01 at offset 1"),
    (["-s"], b"caf\xe9", "payload", "byte 0xe9 at offset 3 is not UTF-8"),
    (["-f", "BINARY"], None, "payload", "byte 0x89 at offset 0 is not UTF-8"),
    ([b"bad\xffbyte"], None, "payload", "byte 0xff at offset 3 is not UTF-8"),
    (["hi", "--subject", b"s\xff"], None, "--subject", "byte 0xff is not UTF-8"),
    (["hi", "--thread", "t\x1b[2J"], None, "--thread", "character U+001B at position 2"),
])
def test_bodies_and_options_that_are_not_xml_text_are_exit_2_before_connecting(no_server, tmp_path, args, stdin,
                                                                              what, why):
    png = tmp_path / "x.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n")
    args = [str(png) if a == "BINARY" else a for a in args]
    done = subprocess.run(iotctl_cmd("xmpp", "send", "bob@localhost", *args, "--jid", "alice@localhost", "-P", "pw",
                                     "--server", f"127.0.0.1:{no_server.getsockname()[1]}"),
                          input=stdin, capture_output=True, timeout=30, env=clean_env())
    err = done.stderr.decode()
    assert done.returncode == 2, err
    assert err.startswith(f"iotctl: error: {what} is not text XMPP can carry: ") and why in err, err
    if what == "payload":
        assert "base64" in err  # the way to send binary
    assert _connections(no_server) == 0


@pytest.mark.parametrize("args, what", [
    (["presence", "set", "--status", "away\x07"], "--status"),
    (["roster", "add", "dave@localhost", "--name", b"D\xffave"], "--name"),
    (["roster", "add", "dave@localhost", "--group", "a\x1f"], "--group"),
    (["listen", "--muc", "room@conference.localhost", "--nick", "n\x0b"], "--nick"),
    (["send", "bob@localhost", "hi", "--resource", "r\x01"], "--resource"),
])
def test_other_options_that_are_not_xml_text_are_exit_2_before_connecting(no_server, args, what):
    done = subprocess.run(iotctl_cmd("xmpp", *args, "--jid", "alice@localhost", "-P", "pw",
                                     "--server", f"127.0.0.1:{no_server.getsockname()[1]}"),
                          capture_output=True, timeout=30, env=clean_env())
    err = done.stderr.decode()
    assert done.returncode == 2, err
    assert err.startswith(f"iotctl: error: {what} is not text XMPP can carry: "), err
    assert _connections(no_server) == 0


def test_a_jid_byte_that_is_not_utf8_is_exit_2(no_server):
    done = subprocess.run(iotctl_cmd("xmpp", "send", "bob@localhost", "hi", "--jid", b"al\xffice@localhost", "-P",
                                     "pw", "--server", f"127.0.0.1:{no_server.getsockname()[1]}"),
                          capture_output=True, timeout=30, env=clean_env())
    err = done.stderr.decode()
    assert done.returncode == 2, err
    assert err == "iotctl: error: --jid is not text XMPP can carry: byte 0xff is not UTF-8\n"
    assert _connections(no_server) == 0


def test_a_bad_line_of_stdin_is_exit_2_naming_it(peer):
    peer("prosody")
    done = run("xmpp", "send", "bob@localhost", "-l", *login("alice"), input=b"fine\nnot \x00 fine\n")
    err = done.stderr.decode()
    assert done.returncode == 2, err
    assert err.startswith("iotctl: error: message 2 is not text XMPP can carry: control character 0x00 at offset 4")
    assert "sent 1, acknowledged 1" in err


def test_a_cut_send_says_one_line_and_its_failed_file_replays_on_its_own(relay, background, tmp_path):
    """Cut mid-way, `send -l` prints one error line (it printed 92 lines of asyncio's
    "socket.send() raised exception." first), and --failed FILE holds the recipient:
    `--replay FILE` alone sends the rest, with the command line's --subject and --thread."""
    drain("carol")
    listener = background("-o", "raw", "xmpp", "listen", *login("carol"), "--from", "alice@localhost")
    t = token()
    lines = [f"{t} {i:05d}" for i in range(6000)]
    r = relay()
    failed = tmp_path / "rest.jsonl"
    source = tmp_path / "lines.txt"
    source.write_text("".join(line + "\n" for line in lines))
    with open(source, "rb") as stdin:  # a file: what was not read yet goes to --failed too
        proc = subprocess.Popen(iotctl_cmd("xmpp", "send", "carol@localhost", "-l",
                                           *login("alice", f"127.0.0.1:{r.port}"), "--failed", str(failed),
                                           "--subject", f"s {t}", "--thread", f"t {t}"),
                                stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env())
    wait_until(lambda: len(listener.lines.lines) > 500 or proc.poll() is not None, 60, "a good part sent")
    r.cut()
    out, err = proc.communicate(timeout=60)
    err = err.decode()
    assert proc.returncode == 3, err
    assert err.count("\n") == 1, err
    assert re.fullmatch(r"iotctl: error: send: connection lost \(.*\); sent \d+, acknowledged \d+, "
                        r"\d+ not acknowledged written to .*\n", err), err
    rest = [json.loads(line) for line in failed.read_text().splitlines()]
    assert rest and all(e["address"] == "carol@localhost" for e in rest)
    # the command line's subject and thread too: the replay alone sends them the same way
    assert all(e["meta"].get("subject") == f"s {t}" and e["meta"].get("thread") == f"t {t}" for e in rest)
    done = run("xmpp", "send", "--replay", str(failed), *login("alice"), timeout=120)
    assert done.returncode == 0, done.stderr
    wait_until(lambda: set(lines) <= set(listener.lines.lines), 60, "every line at carol's")
