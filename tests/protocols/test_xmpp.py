"""The xmpp group against the real Prosody of scripts/services (domain localhost,
accounts alice, bob and carol, group chat on conference.localhost), and against
go-sendxmpp, a client no one here wrote."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid

import pytest

from tests.conftest import CERTS
from tests.helpers import clean_env, wait_until
from iotctl.output.writers import Writer

XDIST_GROUP = "prosody"  # fixed accounts: never at the same time as another module using them

SERVER = "127.0.0.1:5222"
PW = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw"}


def login(user: str, password: str | None = None) -> list[str]:
    return ["--jid", f"{user}@localhost", "-P", password or PW[user], "--server", SERVER,
            "--cafile", str(CERTS / "ca.crt")]


@pytest.fixture
def xmpp(iotctl, peer):
    """Run `iotctl xmpp ARGS` as USER in-process."""
    peer("prosody")

    def run(user: str, *args, input=None):
        cmd, rest = args[0], args[1:]
        sub = []
        if cmd in ("presence", "subscription", "roster"):
            sub, rest = [rest[0]], rest[1:]
        return iotctl("xmpp", cmd, *sub, *login(user), *rest, input=input)

    return run


class Background:
    """`iotctl xmpp ...` in a subprocess, ready once it says it is listening."""

    def __init__(self, tmp_path, user: str, *args: str, ready: str = "listening as"):
        self.err_path = tmp_path / f"bg-{uuid.uuid4().hex[:6]}.err"
        self.err = open(self.err_path, "wb")
        cmd, rest = args[0], args[1:]
        sub = []
        if cmd in ("presence", "subscription", "roster"):
            sub, rest = [rest[0]], rest[1:]
        self.proc = subprocess.Popen([sys.executable, "-m", "iotctl", "xmpp", cmd, *sub, *login(user), *rest],
                                     stdout=subprocess.PIPE, stderr=self.err, env=clean_env())
        if ready:
            wait_until(lambda: ready in self.err_path.read_text() or self.proc.poll() is not None, 15,
                       f"iotctl xmpp {cmd} ready")
            assert self.proc.poll() is None, self.err_path.read_text()

    def finish(self, timeout: float = 15) -> tuple[int, bytes, str]:
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        self.err.close()
        return self.proc.returncode, out, self.err_path.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.finish()


@pytest.fixture
def background(tmp_path, peer):
    peer("prosody")
    started: list[Background] = []

    def start(user: str, *args: str, ready: str = "listening as") -> Background:
        bg = Background(tmp_path, user, *args, ready=ready)
        started.append(bg)
        return bg

    yield start
    for bg in started:
        bg.stop()


@pytest.fixture(scope="module", autouse=True)
def clean_accounts(peer):
    """Nothing left over from earlier runs: no stored offline messages, contacts or
    blocks between the test accounts."""
    peer("prosody")
    env = clean_env()
    procs = []
    for user in PW:
        args = login(user)
        procs.append(subprocess.Popen(
            [sys.executable, "-c", CLEANUP, json.dumps(args), json.dumps([u for u in PW if u != user])],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err.decode()


CLEANUP = """
import json, sys
from iotctl.cli import run
login, others = json.loads(sys.argv[1]), json.loads(sys.argv[2])
assert run(["xmpp", "unblock", "--all", *login]) == 0
for other in others:
    assert run(["xmpp", "roster", "remove", other + "@localhost", *login]) in (0, 6)  # 6: not there
# take whatever waits offline
assert run(["-o", "raw", "xmpp", "listen", "--idle-timeout", "0.5", *login]) == 0
"""


def token() -> str:
    return uuid.uuid4().hex[:10]


def jsonl(out: bytes) -> list[dict]:
    return [json.loads(line) for line in out.decode().splitlines() if line.strip()]


# --------------------------------------------------------------------------- messages


def test_alice_sends_bob_receives_in_every_output_mode(xmpp, background):
    modes = {
        "jsonl": ["-o", "jsonl"],
        "json": ["-o", "json"],
        "raw": ["-o", "raw"],
        "text": ["-o", "text"],
        "hex": ["-o", "hex"],
        "template": ["-F", "{address}|{payload}|{meta[type]}|{meta[subject]}"],
        "pretty": ["-o", "pretty"],
    }
    listeners = {mode: background("bob", "listen", "--from", "alice@localhost", "-C", "2", "-W", "20",
                                  "--resource", f"r-{mode}", *flags)
                 for mode, flags in modes.items()}
    t = token()
    r = xmpp("alice", "send", "bob@localhost", f"one {t}", "--subject", "s1", "--thread", "th1",
             "--resource", "sender")
    assert r.exit_code == 0, r.stderr
    r = xmpp("alice", "send", "bob@localhost", "--type", "normal", "--resource", "sender", input=f"two {t}\n",
             *["-l"])
    assert r.exit_code == 0, r.stderr
    out = {}
    for mode, bg in listeners.items():
        code, stdout, err = bg.finish()
        assert code == 0, (mode, err)
        out[mode] = stdout.decode()
    envs = jsonl(out["jsonl"].encode())
    assert [e["payload"] for e in envs] == [f"one {t}", f"two {t}"]
    first = envs[0]
    assert first["protocol"] == "xmpp"
    assert first["address"] == "alice@localhost/sender"
    assert first["meta"]["type"] == "chat" and first["meta"]["subject"] == "s1"
    assert first["meta"]["thread"] == "th1" and first["meta"]["id"]
    assert first["meta"]["to"].startswith("bob@localhost")
    assert envs[1]["meta"]["type"] == "normal"
    assert json.loads(out["json"].split("\n}\n")[0] + "\n}")["payload"] == f"one {t}"
    assert out["raw"] == f"one {t}\ntwo {t}\n"
    assert out["text"] == f"alice@localhost/sender one {t}\nalice@localhost/sender two {t}\n"
    assert out["hex"].splitlines() == [f"one {t}".encode().hex(), f"two {t}".encode().hex()]
    assert out["template"].splitlines()[0] == f"alice@localhost/sender|one {t}|chat|s1"
    assert "alice@localhost/sender" in out["pretty"] and "type=chat" in out["pretty"]
    assert "subject=s1" in out["pretty"] and f"one {t}" in out["pretty"]


def test_offline_message_arrives_with_its_delay_stamp(xmpp):
    t = token()
    before = time.time()
    r = xmpp("alice", "send", "bob@localhost", f"while you were out {t}")
    assert r.exit_code == 0, r.stderr
    r = xmpp("bob", "listen", "-C", "1", "-W", "10", "-o", "jsonl")
    assert r.exit_code == 0, r.stderr
    env = json.loads(r.stdout)
    assert env["payload"] == f"while you were out {t}"
    from datetime import datetime

    stamp = datetime.fromisoformat(env["meta"]["delay"]).timestamp()
    assert before - 2 <= stamp <= time.time()


def test_send_lines_and_replay(xmpp, background, tmp_path):
    bg = background("bob", "listen", "--from", "alice@localhost", "-C", "200", "-W", "20", "-o", "jsonl")
    lines = "".join(f"line {i}\n" for i in range(100))
    r = xmpp("alice", "send", "bob@localhost", "-l", input=lines)
    assert r.exit_code == 0, r.stderr
    capture = tmp_path / "c.jsonl"
    capture.write_text("".join(json.dumps({"payload": f"replayed {i}", "address": "x", "meta": {}}) + "\n"
                               for i in range(100)))
    r = xmpp("alice", "send", "bob@localhost", "--replay", str(capture))
    assert r.exit_code == 0, r.stderr
    code, out, err = bg.finish()
    assert code == 0, err
    got = [e["payload"] for e in jsonl(out)]
    assert got == [f"line {i}" for i in range(100)] + [f"replayed {i}" for i in range(100)]


def test_message_to_unknown_account_is_error_stanza_exit_6(xmpp):
    r = xmpp("alice", "send", f"nobody-{token()}@localhost", "hello")
    assert r.exit_code == 6
    assert "service-unavailable" in r.stderr


def test_muc_send_and_listen(xmpp, background):
    room = f"room-{token()}@conference.localhost"
    bg = background("bob", "listen", "--muc", room, "--nick", "bob", "-C", "1", "-W", "15", "-o", "jsonl")
    t = token()
    r = xmpp("alice", "send", "--muc", room, "--nick", "alice", f"hello room {t}")
    assert r.exit_code == 0, r.stderr
    code, out, err = bg.finish()
    assert code == 0, err
    env = json.loads(out)
    assert env["address"] == f"{room}/alice"
    assert env["payload"] == f"hello room {t}"
    assert env["meta"]["type"] == "groupchat"


# --------------------------------------------------------------------------- presence and subscriptions


def test_presence_is_seen_only_after_subscription_approval(xmpp, background):
    status_text = f"busy {token()}"
    carol_online = background("carol", "presence", "set", "--show", "dnd", "--status", status_text, "--for", "30",
                              ready="online as")
    r = xmpp("alice", "presence", "get", "carol@localhost")
    assert r.exit_code == 0, r.stderr
    # not subscribed: the server tells nothing, which is not "offline"
    assert r.stdout == "carol@localhost\tunknown\t\t\t\n"
    assert "not subscribed to carol@localhost's presence" in r.stderr
    # the handshake, seen from both sides
    watcher = background("carol", "listen", "--presence", "--from", "alice@localhost", "-o", "jsonl",
                         "-C", "1", "-W", "15", "--resource", "watch", "--priority", "-1")
    assert xmpp("alice", "subscription", "request", "carol@localhost").exit_code == 0
    code, out, err = watcher.finish()
    assert code == 0, err
    assert json.loads(out)["meta"]["presence"] == "subscribe"
    r = xmpp("carol", "subscription", "list", "-o", "jsonl")
    assert any(e["meta"]["jid"] == "alice@localhost" and e["meta"]["direction"] == "in" for e in jsonl(r.stdout_bytes))
    r = xmpp("alice", "subscription", "list", "-o", "jsonl")
    assert any(e["meta"]["jid"] == "carol@localhost" and e["meta"]["direction"] == "out"
               for e in jsonl(r.stdout_bytes))
    assert xmpp("carol", "subscription", "approve", "alice@localhost").exit_code == 0
    r = xmpp("alice", "presence", "get", "carol@localhost", "-o", "jsonl")
    envs = jsonl(r.stdout_bytes)
    assert [e["meta"]["presence"] for e in envs] == ["available"]
    assert envs[0]["meta"]["show"] == "dnd" and envs[0]["meta"]["status"] == status_text
    assert _subscription("alice", "carol", xmpp) == ("to", "")
    assert _subscription("carol", "alice", xmpp) == ("from", "")
    # watch: a line (or a live table on a terminal) per contact resource
    r = xmpp("alice", "presence", "watch", "-C", "1", "-W", "10")
    assert r.exit_code == 0, r.stderr
    assert re.fullmatch(rf"carol@localhost/\S+ available dnd {status_text}\n", r.stdout)
    r = xmpp("alice", "presence", "watch", "-C", "1", "-W", "10", "-o", "pretty")
    assert re.search(rf"carol@localhost/\S+\s+available\s+dnd\s+{status_text}", r.stdout), r.stdout
    # subscribed and offline: "unavailable", and nothing on stderr
    carol_online.stop()
    r = wait_until(lambda: (lambda r: r if "unavailable" in r.stdout else None)(
        xmpp("alice", "presence", "get", "carol@localhost")), 10, "carol offline")
    assert r.stdout == "carol@localhost\tunavailable\t\t\t\n" and r.stderr == ""
    # cancel: alice stops receiving carol's presence
    assert xmpp("alice", "subscription", "cancel", "carol@localhost").exit_code == 0
    assert _subscription("alice", "carol", xmpp) == ("none", "")
    # deny: carol refuses a new request
    assert xmpp("alice", "subscription", "request", "carol@localhost").exit_code == 0
    assert _subscription("alice", "carol", xmpp) == ("none", "subscribe")
    assert xmpp("carol", "subscription", "deny", "alice@localhost").exit_code == 0
    assert _subscription("alice", "carol", xmpp) == ("none", "")
    r = xmpp("alice", "presence", "get", "carol@localhost", "-o", "text")
    assert r.stdout.split("\t")[1] == "unknown"


def _subscription(user: str, contact: str, xmpp) -> tuple[str, str]:
    r = xmpp(user, "roster", "list", "-o", "jsonl")
    assert r.exit_code == 0, r.stderr
    for env in jsonl(r.stdout_bytes):
        if env["meta"]["jid"] == f"{contact}@localhost":
            return env["meta"]["subscription"], env["meta"]["ask"]
    return "absent", ""


def test_listen_auto_approve(xmpp, background):
    bg = background("carol", "listen", "--auto-approve", "--idle-timeout", "3", "--priority", "-1")
    assert xmpp("bob", "subscription", "request", "carol@localhost").exit_code == 0
    wait_until(lambda: _subscription("bob", "carol", xmpp)[0] == "to", 10, "carol's approval")
    bg.stop()
    assert xmpp("bob", "roster", "remove", "carol@localhost").exit_code == 0


# --------------------------------------------------------------------------- roster


def test_roster_add_list_remove_export_import(xmpp, tmp_path):
    r = xmpp("bob", "roster", "add", "carol@localhost", "--name", "Carol C", "--group", "team", "--group", "ops")
    assert r.exit_code == 0, r.stderr
    r = xmpp("bob", "roster", "list", "-o", "raw")
    assert "carol@localhost\tCarol C\tnone\t\tops,team" in r.stdout.splitlines()
    r = xmpp("bob", "roster", "list", "-o", "pretty")
    assert re.search(r"carol@localhost\s+Carol C\s+none\s+ops,team", r.stdout), r.stdout
    r = xmpp("bob", "roster", "export")
    doc = json.loads(r.stdout)
    assert {"jid": "carol@localhost", "name": "Carol C", "groups": ["ops", "team"]} in doc["roster"]
    backup = tmp_path / "roster.json"
    backup.write_text(r.stdout)
    assert xmpp("bob", "roster", "remove", "carol@localhost").exit_code == 0
    assert "carol@localhost" not in xmpp("bob", "roster", "list", "-o", "raw").stdout
    r = xmpp("bob", "roster", "import", str(backup))
    assert r.exit_code == 0, r.stderr
    assert "carol@localhost\tCarol C" in xmpp("bob", "roster", "list", "-o", "raw").stdout
    assert xmpp("bob", "roster", "remove", "carol@localhost").exit_code == 0


# --------------------------------------------------------------------------- blocking


def test_blocked_jid_messages_do_not_arrive_until_unblocked(xmpp, background):
    bg = background("bob", "listen", "--from", "carol@localhost", "-C", "1", "-W", "20", "-o", "raw")
    assert xmpp("bob", "block", "carol@localhost").exit_code == 0
    r = xmpp("bob", "blocklist")
    assert r.stdout.splitlines() == ["carol@localhost"]
    t = token()
    r = xmpp("carol", "send", "bob@localhost", f"blocked {t}")
    assert r.exit_code == 6 and "service-unavailable" in r.stderr  # XEP-0191: the server bounces it
    assert xmpp("bob", "unblock", "carol@localhost").exit_code == 0
    assert xmpp("bob", "blocklist").stdout == ""
    r = xmpp("carol", "send", "bob@localhost", f"after {t}")
    assert r.exit_code == 0, r.stderr
    code, out, err = bg.finish()
    assert code == 0, err
    assert out.decode() == f"after {t}\n"


def test_unblock_all(xmpp):
    assert xmpp("carol", "block", "x1@localhost", "x2@localhost").exit_code == 0
    assert xmpp("carol", "blocklist").stdout.splitlines() == ["x1@localhost", "x2@localhost"]
    assert xmpp("carol", "unblock", "--all").exit_code == 0
    assert xmpp("carol", "blocklist").stdout == ""
    assert xmpp("carol", "unblock").exit_code == 2


# --------------------------------------------------------------------------- diagnostics


def test_ping_reports_rtt_and_summary(xmpp):
    r = xmpp("alice", "ping", "-c", "2", "-i", "0.05")
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 2 and all(re.fullmatch(r"localhost seq=\d time=\d+\.\d{3} ms", line) for line in lines)
    assert re.search(r"iotctl: --- localhost ping statistics ---\niotctl: 2 sent, 2 received, 0% loss\n"
                     r"iotctl: rtt min/avg/max/mdev = [\d.]+/[\d.]+/[\d.]+/[\d.]+ ms\n", r.stderr), r.stderr
    r = xmpp("alice", "ping", "-o", "json")
    assert json.loads(r.stdout)["meta"]["rtt_ms"] > 0


def test_disco_lists_server_features_and_items(xmpp):
    r = xmpp("alice", "disco", "-o", "raw")
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "identity\tserver/im\tProsody" in lines
    for feature in ("urn:xmpp:ping", "urn:xmpp:blocking", "jabber:iq:roster", "jabber:iq:version"):
        assert f"feature\t{feature}\t" in lines
    r = xmpp("alice", "disco", "--items", "-o", "raw")
    assert "conference.localhost\t\t" in r.stdout.splitlines()
    r = xmpp("alice", "disco", "conference.localhost", "-o", "raw")
    assert "identity\tconference/text\tChatrooms" in r.stdout.splitlines() or "conference/text" in r.stdout


def test_version_of_server_and_error_stanza(xmpp):
    r = xmpp("alice", "version", "-o", "raw")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.startswith("Prosody\t0.12")
    r = xmpp("alice", "version", "bob@localhost")
    assert r.exit_code == 6
    assert r.stderr.startswith("iotctl: error: version of bob@localhost: service-unavailable")


def test_debug_shows_stanzas_in_and_out(xmpp, iotctl, peer):
    r = iotctl("-d", "xmpp", "ping", *login("alice"))
    assert r.exit_code == 0
    assert re.search(r"SEND: <iq [^\n]*urn:xmpp:ping", r.stderr)
    assert re.search(r"RECV: <iq [^\n]*type=\"result\"", r.stderr)


# --------------------------------------------------------------------------- connection errors


def test_wrong_password_exits_4(xmpp):
    r = xmpp("alice", "ping", "-P", "wrong")
    assert r.exit_code == 4
    assert "not-authorized" in r.stderr


def test_nothing_listening_exits_3(iotctl):
    from tests.helpers import free_port

    import socket

    port = free_port(socket.SOCK_STREAM)
    r = iotctl("xmpp", "ping", *login("alice"), "--server", f"127.0.0.1:{port}")
    assert r.exit_code == 3
    assert "connection refused" in r.stderr


def test_silent_server_exits_5_after_connect_timeout(iotctl):
    import socket

    with socket.socket() as silent:  # accepts (the kernel does), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        started = time.monotonic()
        r = iotctl("xmpp", "ping", *login("alice"), "--server", f"127.0.0.1:{port}", "--connect-timeout", "0.5")
    assert r.exit_code == 5
    assert "no answer within 0.5 s" in r.stderr
    assert time.monotonic() - started < 3


def test_untrusted_certificate_exits_7_insecure_warns(iotctl, peer):
    peer("prosody")
    args = ["--jid", "alice@localhost", "-P", "alice-pw", "--server", SERVER]
    r = iotctl("xmpp", "ping", *args)
    assert r.exit_code == 7
    assert "certificate verification failed" in r.stderr
    r = iotctl("xmpp", "ping", *args, "--insecure")
    assert r.exit_code == 0
    assert "warning: --insecure" in r.stderr


def test_direct_tls_and_server_from_the_jid(iotctl, peer):
    peer("prosody")
    ca = ["--cafile", str(CERTS / "ca.crt")]
    r = iotctl("xmpp", "ping", "--jid", "alice@localhost", "-P", "alice-pw", "--server", "127.0.0.1",
               "--direct-tls", *ca)
    assert r.exit_code == 0, r.stderr
    # no --server: the JID's domain (no SRV records for localhost: port 5222, or 5223 direct)
    for extra in ([], ["--direct-tls"]):
        r = iotctl("xmpp", "ping", "--jid", "alice@localhost", "-P", "alice-pw", *ca, *extra)
        assert r.exit_code == 0, (extra, r.stderr)


# --------------------------------------------------------------------------- interop with go-sendxmpp

GO_SENDXMPP = shutil.which("go-sendxmpp")


def _need_go_sendxmpp():
    if GO_SENDXMPP is None:
        pytest.fail("go-sendxmpp is not installed; run: scripts/services up prosody", pytrace=False)


def test_go_sendxmpp_sends_iotctl_listens(background):
    _need_go_sendxmpp()
    bg = background("bob", "listen", "--from", "alice@localhost", "-C", "1", "-W", "15", "-o", "jsonl")
    t = token()
    done = subprocess.run([GO_SENDXMPP, "-u", "alice@localhost", "-p", "alice-pw", "-j", SERVER, "-n",
                           "bob@localhost"], input=f"from go {t}".encode(), capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr
    code, out, err = bg.finish()
    assert code == 0, err
    env = json.loads(out)
    assert env["payload"].strip() == f"from go {t}"
    assert env["address"].startswith("alice@localhost/")


def test_iotctl_sends_go_sendxmpp_listens(xmpp, tmp_path, peer):
    _need_go_sendxmpp()
    peer("prosody")
    out_path = tmp_path / "go.out"
    with open(out_path, "wb") as out:
        listener = subprocess.Popen([GO_SENDXMPP, "-u", "carol@localhost", "-p", "carol-pw", "-j", SERVER, "-n",
                                     "-l"], stdout=out, stderr=subprocess.STDOUT)
    try:
        # go-sendxmpp says nothing once online; a message sent before that waits in
        # carol's offline storage and is delivered when it logs in: either way it arrives
        t = token()
        r = xmpp("alice", "send", "carol@localhost", f"to go {t}")
        assert r.exit_code == 0, r.stderr
        wait_until(lambda: f"to go {t}" in out_path.read_text(), 15, "go-sendxmpp printing the message")
        assert "alice@localhost" in out_path.read_text()
    finally:
        listener.terminate()
        listener.wait(timeout=10)



def test_listen_count_leaves_the_rest_stored(xmpp):
    """Stream management acknowledges only what was written: messages that arrived
    after -C was reached are stored again by the server for the next listen."""
    t = token()
    r = xmpp("alice", "send", "bob@localhost", "-l", input="".join(f"{t} {i}\n" for i in range(6)))
    assert r.exit_code == 0, r.stderr
    first = xmpp("bob", "listen", "-C", "2", "-W", "10", "-o", "raw")
    assert first.stdout.splitlines() == [f"{t} 0", f"{t} 1"]
    rest = xmpp("bob", "listen", "-C", "4", "-W", "10", "-o", "raw")
    assert rest.stdout.splitlines() == [f"{t} {i}" for i in range(2, 6)]


# --------------------------------------------------------------------------- endpoints by URL (issue 15)


CA = str(CERTS / "ca.crt")


def url(account: str, peer: str = "", query: str = "") -> str:
    user = account.split("@")[0]
    return (f"xmpp://{user}:{PW[user]}@localhost/{peer}?server={SERVER}&cafile={CA}"
            + (f"&{query}" if query else ""))


def test_url_sink_and_source_are_the_commands(peer):
    """xmpp://ACCOUNT/PEER: a sink sends to PEER, a source takes only PEER's messages
    (without a path, everyone's); the options are those of `send` and `listen`."""
    from iotctl import receive, resolver, send
    from iotctl.message import Message

    peer("prosody")
    t = token()
    with resolver.sink(url("carol", "bob@localhost")) as sink:
        assert send.run(sink, [Message("", "", f"from carol {t}".encode())]).acknowledged == 1
    with resolver.sink(url("alice", "bob@localhost", "subject=via%20url&type=normal")) as sink:
        assert sink.window and sink.mtype == "normal"
        result = send.run(sink, [Message("", "", f"url {t} {i}".encode()) for i in range(3)])
        assert (result.sent, result.acknowledged) == (3, 3)
    source = resolver.source(url("bob", "alice@localhost", "idle_timeout=1"))
    got = []

    class Collect(Writer):
        def __init__(self):
            super().__init__(None)

        def write(self, msg):
            got.append(msg)

        def flush(self):
            pass

    with source:
        assert source.delivery == "at-least-once"
        assert source.where == "bob@localhost on 127.0.0.1:5222"
        receive.run(source, receive.ReceiveSpec(idle_timeout=1.5, idle_ok=True), "listen", writer=Collect())
    mine = [m for m in got if t in m.payload.decode()]
    assert [m.payload.decode() for m in mine] == [f"url {t} {i}" for i in range(3)]  # not carol's
    assert all(m.meta["subject"] == "via url" and m.meta["type"] == "normal" for m in mine)
    # what --from filtered out counts as handled: carol's message is not stored again
    r = run_listen_raw("bob")
    assert f"from carol {t}" not in r


def run_listen_raw(user: str) -> str:
    done = subprocess.run([sys.executable, "-m", "iotctl", "-o", "raw", "xmpp", "listen", *login(user),
                           "--idle-timeout", "1"], capture_output=True, env=clean_env(), timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.decode()


@pytest.mark.parametrize("address, role, why", [
    ("xmpp://localhost/bob@localhost", "sink", "no account"),
    (f"xmpp://alice:pw@localhost/nc2?server={SERVER}", "sink", "did you mean nc2@localhost?"),
    (f"xmpp://alice:pw@localhost?server={SERVER}", "sink", "no recipient"),
    (f"xmpp://alice:pw@localhost/bob@localhost?server={SERVER}&type=bogus", "sink", "type: "),
    (f"xmpp://alice:pw@localhost/bob@localhost?server={SERVER}&qos=1", "sink", "unknown option 'qos'"),
    ("xmpp://alice:pw@localhost/bob@localhost?jid=x@y", "source", "belongs in the URL itself"),
    (f"xmpp://alice:pw@localhost:5223/bob@localhost?server={SERVER}", "source", "give the port in ?server="),
    (f"xmpp://alice:pw@localhost/bob@localhost?server={SERVER}&count=0", "source", "count: "),
    (f"xmpp://alice:pw@localhost/bob@localhost?server={SERVER}&subject=%1B%5B2J", "sink",
     "--subject is not text XMPP can carry"),
    (f"xmpp://alice:pw@localhost/not%20a%20jid@@localhost?server={SERVER}", "source", "bad --from JID"),
])
def test_url_checks_are_the_commands(address, role, why):
    """A URL is checked as the command line is, before anything connects."""
    from iotctl import resolver
    from iotctl.errors import UsageError

    with pytest.raises(UsageError) as caught:
        getattr(resolver, role)(address)
    text = f"{caught.value}" + (f" {caught.value.hint}" if caught.value.hint else "")
    assert why in text, text
    assert ":pw@" not in text  # the password is never shown


def test_url_parses_for_check_as_a_source():
    """`iotctl check URL` parses a URL as a source: the peer is listen's --from."""
    from iotctl import resolver

    target = resolver.resolve(url("alice", "bob@localhost"), "check")
    assert list(target.arguments["senders"]) == ["bob@localhost"]
    assert target.arguments["cfg"].jid == "alice@localhost"


def test_url_password_and_port_in_the_authority(peer):
    """A percent-encoded password; a port in the authority means the JID's domain on
    that port (direct TLS on 5223 here, with ?direct_tls=true)."""
    from iotctl import resolver, send
    from iotctl.message import Message

    peer("prosody")
    with resolver.sink(f"xmpp://alice:alice%2Dpw@localhost:5223/bob@localhost?cafile={CA}&direct_tls=true") as sink:
        assert send.run(sink, [Message("", "", b"x")]).acknowledged == 1


# --------------------------------------------------------------------------- what crosses (issue 15)


def test_replay_keeps_native_meta_and_adopts_only_what_crosses(xmpp, background, tmp_path):
    """A replayed XMPP capture keeps its subject, thread and XEP-0131 headers; from an
    MQTT capture only its content type and user properties (as headers) and its
    correlation data (as the thread) cross; nothing else of its meta is sent."""
    run_listen_raw("bob")  # nothing stored from earlier tests
    bg = background("bob", "listen", "--from", "alice@localhost", "-C", "2", "-W", "20", "-o", "jsonl")
    t = token()
    capture = tmp_path / "c.jsonl"
    capture.write_text(
        json.dumps({"protocol": "xmpp", "address": "carol@localhost/x", "payload": f"native {t}",
                    "meta": {"type": "chat", "subject": "s1", "thread": "th1", "to": "bob@localhost",
                             "headers": [["Urgency", "high"], ["Content-Type", "text/plain"]],
                             "id": "old-id", "delay": "2026-01-01T00:00:00+00:00"}}) + "\n"
        + json.dumps({"protocol": "mqtt", "address": "sensors/t1", "payload": f"foreign {t}",
                      "content_type": "application/json",
                      "meta": {"qos": 1, "retain": True, "subject": "not mine", "thread": "not mine",
                               "headers": [["not", "mine"]],
                               "properties": {"content_type": "application/json",
                                              "user_properties": [["unit", "C"], ["site", "lab"]],
                                              "correlation_data": "req-7", "response_topic": "r/t"}}}) + "\n")
    r = xmpp("alice", "send", "bob@localhost", "--replay", str(capture))
    assert r.exit_code == 0, r.stderr
    code, out, err = bg.finish()
    assert code == 0, err
    native, adopted = jsonl(out)
    assert native["payload"] == f"native {t}"
    assert native["meta"]["subject"] == "s1" and native["meta"]["thread"] == "th1"
    assert native["meta"]["headers"] == [["Urgency", "high"], ["Content-Type", "text/plain"]]
    assert native["content_type"] == "text/plain" and native["meta"]["id"] != "old-id"
    assert adopted["payload"] == f"foreign {t}"
    assert adopted["content_type"] == "application/json"
    assert adopted["meta"]["headers"] == [["unit", "C"], ["site", "lab"], ["Content-Type", "application/json"]]
    assert adopted["meta"]["thread"] == "req-7"
    assert "subject" not in adopted["meta"]
    assert set(adopted["meta"]) == {"type", "to", "id", "headers", "thread"}


def test_a_foreign_capture_needs_a_recipient(xmpp, tmp_path):
    capture = tmp_path / "c.jsonl"
    capture.write_text(json.dumps({"protocol": "mqtt", "address": "sensors/t1", "payload": "x"}) + "\n")
    r = xmpp("alice", "send", "--replay", str(capture))
    assert r.exit_code == 2
    assert "no recipient for a mqtt message: give JID" in r.stderr


def test_what_an_xmpp_message_carries_to_another_protocol():
    from iotctl.message import Message, foreign

    msg = Message("xmpp", "alice@localhost/r", b"21.5", "application/json",
                  {"type": "chat", "thread": "0x00ff", "subject": "stays", "to": "bob@localhost", "id": "x",
                   "headers": [["Content-Type", "application/json"], ["unit", "C"]]})
    found = foreign(msg, "mqtt")
    assert found.content_type == "application/json"
    assert found.headers == [("unit", "C")]
    assert found.correlation_id == b"\x00\xff"
    assert found.reply_to is None
    assert foreign(msg, "xmpp") is None


# --------------------------------------------------------------------------- what users look at (issue 22)


def test_lists_have_no_message_header_and_pipe_as_tab_separated_lines(xmpp):
    r = xmpp("alice", "version", "-o", "pretty")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.splitlines()[0].split() == ["name", "version", "os"]
    assert "ct=" not in r.stdout and "xmpp" not in r.stdout and " B)" not in r.stdout
    assert xmpp("alice", "roster", "add", "dave@localhost", "--name", "[bold]Dave").exit_code == 0
    r = xmpp("alice", "roster", "list", "-o", "pretty")
    assert r.stdout.splitlines()[0].split() == ["jid", "name", "subscription", "ask", "groups"]
    assert re.search(r"^dave@localhost\s+\[bold\]Dave\s+none", r.stdout, re.M), r.stdout  # a name is not markup
    assert "ct=" not in r.stdout
    assert xmpp("alice", "roster", "remove", "dave@localhost").exit_code == 0
    # piped: the row, tab-separated, nothing before it (it was "JID JID<TAB>...")
    r = xmpp("alice", "version")
    assert re.fullmatch(r"Prosody\t0\.12\.\d+\t\S*\n", r.stdout), r.stdout
    r = xmpp("alice", "presence", "get", "alice@localhost")
    assert r.stdout == "alice@localhost\tunavailable\t\t\t\n"


def test_ping_is_one_line_a_reply_like_ping8(xmpp):
    r = xmpp("alice", "ping", "-c", "3", "-i", "0.05", "-o", "pretty")
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 3, r.stdout
    assert all(re.fullmatch(rf"reply from localhost: seq={i} time=\d+\.\d{{3}} ms", line)
               for i, line in enumerate(lines, 1)), lines


def test_a_name_without_domain_suggests_your_server(xmpp):
    r = xmpp("alice", "send", "nc2", "hi")
    assert r.exit_code == 2
    assert r.stderr == ("iotctl: error: bad recipient 'nc2': no @domain (a bare name is a server's address)\n"
                        "iotctl: hint: did you mean nc2@localhost?\n")
    r = xmpp("alice", "presence", "get", "nc2")
    assert r.exit_code == 2 and "did you mean nc2@localhost?" in r.stderr
    # a domain is still a valid address where one makes sense
    assert xmpp("alice", "version", "localhost").exit_code == 0


# --------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_ends_listen_with_0_and_send_with_130(peer, tmp_path):
    peer("prosody")
    env = clean_env()
    err_path = tmp_path / "listen.err"
    with open(err_path, "wb") as err_file:
        listen = subprocess.Popen([sys.executable, "-m", "iotctl", "xmpp", "listen", *login("carol")],
                                  stdout=subprocess.PIPE, stderr=err_file, env=env)
    wait_until(lambda: listen.poll() is not None or "listening as" in err_path.read_text(), 15, "listening")
    time.sleep(0.5)  # in the receive loop
    listen.send_signal(signal.SIGINT)
    listen.communicate(timeout=10)
    err = err_path.read_text()
    assert listen.returncode == 0, err
    assert err.splitlines()[-1].startswith("iotctl: listening as carol@localhost/"), err  # nothing after it
    sender = subprocess.Popen([sys.executable, "-m", "iotctl", "xmpp", "send", "carol@localhost", "-l",
                               *login("alice")], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=env)
    sender.stdin.write(b"one\ntwo\n")
    sender.stdin.flush()
    time.sleep(2)  # logged in, both sent and acknowledged; stdin stays open
    sender.send_signal(signal.SIGINT)
    _, err = sender.communicate(timeout=10)
    assert sender.returncode == 130, err
    assert err.decode().splitlines()[-1] == ("iotctl: error: send interrupted: sent 2, acknowledged 2 "
                                             "(--failed FILE keeps what was not acknowledged)")
    assert run_listen_raw("carol").splitlines()[-2:] == ["one", "two"]


# --------------------------------------------------------------------------- iotctl bridge, both ways


def test_bridge_mqtt_into_xmpp_and_xmpp_into_mqtt(peer, tmp_path):
    """Through the registry alone: MQTT 5 content type and user properties become
    XEP-0131 headers, correlation data the thread; the other way the thread becomes
    correlation data, the headers user properties; nothing else of either meta
    crosses. An XMPP listener is an at-least-once source."""
    peer("prosody")
    peer("mosquitto")
    env = clean_env()
    t = token()
    topic = f"iotctl-test/xmpp-{t}"
    run_listen_raw("bob")

    def start(*args):
        err = tmp_path / f"{uuid.uuid4().hex[:6]}.err"
        with open(err, "wb") as fh:
            proc = subprocess.Popen([sys.executable, "-m", "iotctl", *args], stdout=subprocess.PIPE, stderr=fh,
                                    env=env)
        return proc, err

    # MQTT -> XMPP
    bridge, bridge_err = start("bridge", f"mqtt://127.0.0.1/{topic}/#?qos=1", url("alice", "bob@localhost"),
                               "-C", "1", "-W", "30")
    wait_until(lambda: "bridging" in bridge_err.read_text() or bridge.poll() is not None, 15, "bridge up")
    subprocess.run([sys.executable, "-m", "iotctl", "mqtt", "pub", "-t", f"{topic}/a", "-m", f"to xmpp {t}", "-q", "1",
                    "--content-type", "application/json", "--user-property", "unit=C", "--correlation-data", "c-1",
                    "--response-topic", "r/t"], env=env, check=True, timeout=30)
    assert bridge.wait(30) == 0, bridge_err.read_text()
    done = subprocess.run([sys.executable, "-m", "iotctl", "-o", "jsonl", "xmpp", "listen", *login("bob"), "-C", "1",
                           "-W", "15"], capture_output=True, env=env, timeout=30)
    env_in = json.loads(done.stdout)
    assert env_in["payload"] == f"to xmpp {t}" and env_in["content_type"] == "application/json"
    assert env_in["meta"]["headers"] == [["unit", "C"], ["Content-Type", "application/json"]]
    assert env_in["meta"]["thread"] == "c-1"
    assert set(env_in["meta"]) == {"type", "to", "id", "delay", "headers", "thread"}
    # XMPP -> MQTT
    sub, _ = start("-o", "jsonl", "mqtt", "sub", "-t", f"{topic}/in", "-q", "1", "-C", "1", "-W", "30")
    bridge, bridge_err = start("bridge", url("bob", "alice@localhost"), f"mqtt://127.0.0.1/{topic}/in?qos=1",
                               "-C", "1", "-W", "30")
    wait_until(lambda: "bridging" in bridge_err.read_text() or bridge.poll() is not None, 15, "bridge up")
    assert "(at least once)" in bridge_err.read_text()
    capture = tmp_path / "c.jsonl"
    capture.write_text(json.dumps({"protocol": "xmpp", "address": "", "payload": f"to mqtt {t}",
                                   "meta": {"thread": "req-9", "subject": "stays here",
                                            "headers": [["unit", "K"]]}}) + "\n")
    r = subprocess.run([sys.executable, "-m", "iotctl", "xmpp", "send", "bob@localhost", "--replay", str(capture),
                        *login("alice")], capture_output=True, env=env, timeout=30)
    assert r.returncode == 0, r.stderr
    assert bridge.wait(30) == 0, bridge_err.read_text()
    out, _ = sub.communicate(timeout=30)
    got = json.loads(out)
    assert got["payload"] == f"to mqtt {t}"
    assert got["meta"]["properties"] == {"user_properties": [["unit", "K"]], "correlation_data": "req-9"}
