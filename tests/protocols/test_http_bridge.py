"""HTTP in `iotctl bridge`: webhooks into MQTT (the 2xx only once Mosquitto confirmed),
and MQTT into nginx (a request per message, files on disk through WebDAV)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import uuid

from tests.conftest import PEERS_DIR
from tests.helpers import clean_env, free_port, wait_port, wait_until

STORE = PEERS_DIR / "nginx" / "store"


def spawn(*args):
    return subprocess.Popen([sys.executable, "-m", "iotctl", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=clean_env())


def wait_for_line(proc, needle: str, timeout: float = 20) -> list[str]:
    """Read proc's stderr until a line contains needle (the lines read are returned)."""
    lines: list[str] = []
    done = threading.Event()

    def read():
        for raw in proc.stderr:
            lines.append(raw.decode())
            if needle in lines[-1]:
                done.set()
                return

    threading.Thread(target=read, daemon=True).start()
    assert done.wait(timeout), f"no {needle!r} on stderr: {lines}"
    return lines


def test_webhook_into_mqtt_answered_once_the_broker_confirmed(peer):
    peer("mosquitto")
    topic = f"iotctl-test/http-bridge/{uuid.uuid4().hex[:8]}"
    sub = spawn("mqtt", "sub", "-t", topic, "-C", "1", "-W", "30", "-o", "jsonl")
    bridge = None
    try:
        wait_for_line(sub, "subscribed")
        port = free_port(socket.SOCK_STREAM)
        bridge = spawn("bridge", f"http+listen://127.0.0.1:{port}/hooks", f"mqtt://127.0.0.1/{topic}?qos=1",
                       "-C", "1", "-W", "30")
        wait_port("127.0.0.1", port, 20)
        r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Content-Type: application/json",
                            "-H", "X-Trace: t-1", "--data", '{"t": 21.5}', f"http://127.0.0.1:{port}/hooks/dev1"],
                           capture_output=True, timeout=30)
        assert r.stdout == b"204"
        out, err = sub.communicate(timeout=30)
        assert sub.returncode == 0, err
        msg = json.loads(out)
        assert msg["payload"] == '{"t": 21.5}'
        props = msg["meta"]["properties"]
        assert props["content_type"] == "application/json"
        assert ["X-Trace", "t-1"] in props["user_properties"]
        assert not any(k.lower() in ("host", "content-length", "user-agent") for k, _ in props["user_properties"])
        assert bridge.wait(30) == 0
    finally:
        for p in (sub, bridge):
            if p is not None and p.poll() is None:
                p.kill()


def test_mqtt_into_nginx_a_put_per_message(peer):
    peer("mosquitto")
    peer("nginx")
    run = uuid.uuid4().hex[:8]
    topic = f"iotctl-test/http-bridge/{run}"
    bridge = spawn("bridge", f"mqtt://127.0.0.1/{topic}/%23?qos=1", "http://127.0.0.1:18080/store/#method=put",
                   "--address", f"/store/bridge-{run}/{{address}}.txt", "-C", "2", "-W", "30")
    try:
        wait_for_line(bridge, "bridging")
        for name, value in (("a", "1"), ("b", "2")):
            pub = subprocess.run([sys.executable, "-m", "iotctl", "mqtt", "pub", "-t", f"{topic}/{name}", "-q", "1",
                                  "-m", value], capture_output=True, env=clean_env(), timeout=30)
            assert pub.returncode == 0, pub.stderr
        assert bridge.wait(30) == 0, bridge.stderr.read()
        base = STORE / f"bridge-{run}" / topic
        wait_until(lambda: (base / "b.txt").exists(), 5, "the second PUT on disk")
        assert (base / "a.txt").read_text() == "1" and (base / "b.txt").read_text() == "2"
    finally:
        if bridge.poll() is None:
            bridge.kill()
        import shutil

        shutil.rmtree(STORE / f"bridge-{run}", ignore_errors=True)
