"""Fault tools for tests, 127.0.0.1 only:

- TcpRelay, in front of a real peer, can cut every connection, freeze (hold every
  byte, connections open), thaw, or refuse new ones (bounded in time, one thread),
  and show a tap what passes each way:

    with TcpRelay(1883) as relay:
        ... connect the client to 127.0.0.1:relay.port ...
        relay.cut()          # both sides see the connection drop (RST)
        relay.freeze()       # nothing moves, nothing closes
        relay.thaw()

- ScriptedPeer, a TCP server of the test's own that plays a script on every
  connection (a peer that sends garbage, never answers, or answers wrongly).
"""

from __future__ import annotations

import selectors
import socket
import struct
import threading


class TcpRelay:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1", tap=None):
        self.target = (target_host, target_port)
        self.tap = tap  # tap(from_client: bool, data: bytes), on the relay's thread, before the bytes go on
        self._clients: set[socket.socket] = set()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.frozen = False
        self.refusing = False
        self.accepted = 0
        self._pairs: dict[socket.socket, socket.socket] = {}
        self._lock = threading.Lock()
        self._commands: list = []
        self._wake_r, self._wake_w = socket.socketpair()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="tcp-relay", daemon=True)
        self._thread.start()

    def __enter__(self) -> "TcpRelay":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ controls (any thread)

    def cut(self) -> None:
        """Reset every open connection (new ones are still accepted)."""
        self._command("cut")

    def freeze(self) -> None:
        self.frozen = True
        self._command("noop")

    def thaw(self) -> None:
        self.frozen = False
        self._command("noop")

    def refuse(self, refusing: bool = True) -> None:
        """Close new connections at once (a target that stays down)."""
        self.refusing = refusing

    def connections(self) -> int:
        with self._lock:
            return len(self._pairs) // 2

    def close(self) -> None:
        """Stop relaying and listening (new connections are refused); again: nothing."""
        if self._stop:
            return
        self._stop = True
        self._command("cut")
        self._thread.join(5)
        self.listener.close()
        self._wake_r.close()
        self._wake_w.close()

    def _command(self, what: str) -> None:
        done = threading.Event()
        self._commands.append((what, done))
        try:
            self._wake_w.send(b"x")
        except OSError:
            return
        done.wait(5)

    # ------------------------------------------------------------------ the relay's thread

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.listener, selectors.EVENT_READ, "accept")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        buffers: dict[socket.socket, bytearray] = {}
        import select as select_module

        while not self._stop:
            if self.frozen:  # only commands: reading would busy-loop on what is held
                ready = select_module.select([self._wake_r], [], [], 0.05)[0]
                events = [(sel.get_key(self._wake_r), None)] if ready else []
            else:
                events = sel.select(0.05)
            for key, _ in events:
                if key.data == "wake":
                    try:
                        self._wake_r.recv(64)
                    except OSError:
                        pass
                elif key.data == "accept":
                    self._accept(sel, buffers)
                else:
                    self._pump(sel, key.fileobj, buffers)
            while self._commands:
                what, done = self._commands.pop(0)
                if what == "cut":
                    for sock in list(self._pairs):
                        self._drop(sel, sock, buffers, reset=True)
                done.set()
            if not self.frozen:
                for sock, data in list(buffers.items()):
                    if data:
                        self._flush(sel, sock, buffers)
        for sock in list(self._pairs):
            self._drop(sel, sock, buffers, reset=True)
        sel.close()

    def _accept(self, sel, buffers) -> None:
        try:
            client, _ = self.listener.accept()
        except OSError:
            return
        if self.refusing:
            _reset(client)
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            _reset(client)
            return
        self.accepted += 1
        for s in (client, upstream):
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            buffers[s] = bytearray()
        with self._lock:
            self._pairs[client] = upstream
            self._pairs[upstream] = client
            self._clients.add(client)
        sel.register(client, selectors.EVENT_READ, "data")
        sel.register(upstream, selectors.EVENT_READ, "data")

    def _pump(self, sel, sock, buffers) -> None:
        if self.frozen:
            return  # hold everything: the kernel buffers fill, the peers see silence
        other = self._pairs.get(sock)
        if other is None:
            return
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(sel, sock, buffers, reset=False)
            return
        if self.tap is not None:
            self.tap(sock in self._clients, data)
        buffers[other] += data
        self._flush(sel, other, buffers)

    def _flush(self, sel, sock, buffers) -> None:
        data = buffers.get(sock)
        if not data:
            return
        try:
            sent = sock.send(data)
            del data[:sent]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._drop(sel, sock, buffers, reset=True)

    def _drop(self, sel, sock, buffers, reset: bool) -> None:
        with self._lock:
            other = self._pairs.pop(sock, None)
            if other is not None:
                self._pairs.pop(other, None)
            self._clients.discard(sock)
            self._clients.discard(other)
        for s in (sock, other):
            if s is None:
                continue
            try:
                sel.unregister(s)
            except (KeyError, ValueError):
                pass
            buffers.pop(s, None)
            if reset:
                _reset(s)
            else:
                s.close()


def _reset(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


class ScriptedPeer:
    """A TCP server on 127.0.0.1 (an OS-assigned `port`) that runs `handle(conn)` for
    every connection, each in a thread of its own (an OSError ends it quietly); pass
    `handle` or override the method. close() closes the listener and every connection
    still open."""

    def __init__(self, handle=None):
        if handle is not None:
            self.handle = handle
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def handle(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        try:
            self.handle(conn)
        except OSError:
            pass

    def close(self) -> None:
        self.listener.close()
        for conn in self.conns:
            try:
                conn.close()
            except OSError:
                pass

    def __enter__(self) -> "ScriptedPeer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
