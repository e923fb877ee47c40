"""The HTTP server: HTTP/1.1 over asyncio streams with h11, on the process's shared
asyncio loop, bounded in every direction (connections, requests in progress, head and
body sizes, slow or silent clients). `http listen` runs it; a later `coap proxy` can
run one in the same loop as aiocoap (through client.py, which re-exports it):

    async def handler(request: ServerRequest) -> ServerResponse: ...
    server = HttpServer(handler, "127.0.0.1", 8080)
    await server.start()            # bound; server.port is the port (0 = any free one)
    ...
    await server.close()

A handler returns a ServerResponse with a body, or with `stream` (an async iterator
of bytes, sent chunked, e.g. server-sent events): the stream is closed (`aclose()`) as
soon as the client goes away, and a client that stops reading holds the writer back
(at most the transport's buffer is queued) until `write_timeout` drops it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import AsyncIterator, Awaitable, Callable

import h11

from iotctl import receive

MAX_HEAD = 32 * 1024
READ_SIZE = 64 * 1024
log = logging.getLogger("iotctl.http")

REASONS = {200: "OK", 201: "Created", 202: "Accepted", 204: "No Content", 400: "Bad Request",
           404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout", 413: "Content Too Large",
           414: "URI Too Long", 415: "Unsupported Media Type", 431: "Request Header Fields Too Large",
           500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
           504: "Gateway Timeout"}


class ServerRequest:
    """One request as a handler sees it: method, the raw target (path?query), the
    percent-decoded path, the query string, headers as (name, value) text pairs in
    order, the HTTP version, the whole body, and the client's address."""

    __slots__ = ("method", "target", "path", "query", "headers", "http_version", "body", "remote")

    def __init__(self, method: str, target: str, headers: list[tuple[str, str]], http_version: str,
                 body: bytes, remote: str):
        from urllib.parse import unquote

        self.method, self.target, self.headers = method, target, headers
        self.http_version, self.body, self.remote = http_version, body, remote
        raw_path, _, self.query = target.partition("?")
        self.path = unquote(raw_path, errors="surrogateescape")

    def header(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None


class ServerResponse:
    """What a handler answers: a status, headers, and a body or an async `stream`."""

    __slots__ = ("status", "headers", "body", "stream", "reason")

    def __init__(self, status: int = 200, headers=(), body: bytes = b"", stream: AsyncIterator[bytes] | None = None,
                 reason: str | None = None):
        self.status, self.headers, self.body, self.stream = status, list(headers), body, stream
        self.reason = reason if reason is not None else REASONS.get(status, "")


def text_response(status: int, text: str = "", headers=()) -> ServerResponse:
    body = (text or REASONS.get(status, "")).encode("utf-8") + b"\n"
    return ServerResponse(status, [("Content-Type", "text/plain; charset=utf-8"), *headers], body)


Handler = Callable[[ServerRequest], Awaitable[ServerResponse]]


async def _discard(reader: asyncio.StreamReader, limit: int) -> None:
    """Read and drop what a peer sends until it closes, or `limit` bytes."""
    while limit > 0:
        data = await reader.read(min(limit, READ_SIZE))
        if not data:
            return
        limit -= len(data)


class HttpServer:
    """handler: the coroutine answering each request. Bounds: `max_connections` open
    at once (past it a new connection gets 503 and is closed), `max_requests` being
    handled at once (past it 503 with Retry-After), `max_body` (413), a head within
    `head_timeout` seconds of connecting or of the previous answer (a silent or slow
    client is dropped), `idle_timeout` for a kept-alive connection, `write_timeout`
    for a client that stops reading. `on_request(request, status, size, seconds)` is
    called after every answer (a log line)."""

    def __init__(self, handler: Handler, host: str = "127.0.0.1", port: int = 0, max_body: int = 16 << 20,
                 max_connections: int = 512, max_requests: int = 256, head_timeout: float = 10.0,
                 idle_timeout: float = 60.0, write_timeout: float = 30.0, ssl=None, on_request=None,
                 server_name: str = "iotctl"):
        self.handler, self.host, self.port = handler, host, port
        self.max_body, self.max_connections, self.max_requests = max_body, max_connections, max_requests
        self.head_timeout, self.idle_timeout, self.write_timeout = head_timeout, idle_timeout, write_timeout
        self.ssl, self.on_request, self.server_name = ssl, on_request, server_name
        self.server: asyncio.AbstractServer | None = None
        self.connections: set[asyncio.Task] = set()
        self.active = 0
        self.refused = 0  # answered 503 for lack of room

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._connection, self.host, self.port, ssl=self.ssl,
                                                 limit=READ_SIZE, backlog=1024, reuse_address=True)
        self.port = self.server.sockets[0].getsockname()[1]

    async def close(self, grace: float = 1.0) -> None:
        if self.server is not None:
            self.server.close()
        tasks = list(self.connections)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=0.5)

    # ------------------------------------------------------------------ one connection

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if len(self.connections) >= self.max_connections:
            self.refused += 1
            try:
                writer.write(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\n"
                             b"Connection: close\r\n\r\n")
                await asyncio.wait_for(writer.drain(), 1.0)
                # closing with the client's request unread makes the kernel reset the
                # connection, and the reset can destroy the 503 before the client reads
                # it: say the end (FIN), take what the client sends (at most 1 s, 64 KiB)
                writer.write_eof()
                await asyncio.wait_for(_discard(reader, MAX_HEAD * 2), 1.0)
            except (OSError, asyncio.TimeoutError):
                pass
            writer.close()
            return
        self.connections.add(task)
        peer = writer.get_extra_info("peername")
        remote = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else str(peer or "")
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        try:
            while True:
                keep = await self._one(conn, reader, writer, remote)
                if not keep:
                    break
                try:
                    conn.start_next_cycle()
                except h11.LocalProtocolError:
                    break
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            self.connections.discard(task)
            try:
                writer.close()
            except Exception:
                pass

    async def _next(self, conn: h11.Connection, reader: asyncio.StreamReader, timeout: float):
        deadline = time.monotonic() + timeout
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            left = deadline - time.monotonic()
            if left <= 0:
                raise asyncio.TimeoutError
            data = await asyncio.wait_for(reader.read(READ_SIZE), left)
            conn.receive_data(data)

    async def _send(self, conn: h11.Connection, writer: asyncio.StreamWriter, event) -> None:
        data = conn.send(event)
        if data:
            writer.write(data)
            await asyncio.wait_for(writer.drain(), self.write_timeout)

    async def _answer(self, conn, writer, resp: ServerResponse, close: bool = False, reader=None,
                      head: bool = False) -> int:
        headers = [(k, v) for k, v in resp.headers]
        names = {k.lower() for k, _ in headers}
        if "server" not in names:
            headers.append(("Server", self.server_name))
        if resp.stream is None:
            headers.append(("Content-Length", str(len(resp.body))))
        if close:
            headers.append(("Connection", "close"))
        await self._send(conn, writer, h11.Response(status_code=resp.status, headers=headers,
                                                    reason=resp.reason.encode("latin-1", "replace")))
        size = 0
        if head:
            pass  # the head alone (Content-Length says what a GET would bring)
        elif resp.stream is None:
            if resp.body:
                await self._send(conn, writer, h11.Data(data=resp.body))
                size = len(resp.body)
        else:
            size = await self._stream(conn, reader, writer, resp.stream)
        await self._send(conn, writer, h11.EndOfMessage())
        return size

    async def _stream(self, conn, reader, writer, stream) -> int:
        """Send a streamed body until it ends or the client goes away (noticed while
        the stream is idle too: a watcher reads the client's side, whose end is EOF)."""
        size = 0
        iterator = stream.__aiter__()
        watch = asyncio.ensure_future(reader.read(READ_SIZE))
        nxt = None
        try:
            while True:
                nxt = asyncio.ensure_future(iterator.__anext__())
                while True:
                    done, _ = await asyncio.wait({nxt, watch}, return_when=asyncio.FIRST_COMPLETED)
                    if watch in done:
                        data = b"" if watch.exception() is not None else watch.result()
                        if not data:
                            raise ConnectionResetError("the client went away")
                        conn.receive_data(data)  # a pipelined request: kept for the next cycle
                        watch = asyncio.ensure_future(reader.read(READ_SIZE))
                        continue
                    break
                try:
                    chunk = nxt.result()
                except StopAsyncIteration:
                    nxt = None
                    return size
                nxt = None
                if chunk:
                    await self._send(conn, writer, h11.Data(data=chunk))
                    size += len(chunk)
        finally:
            for fut in (nxt, watch):
                if fut is not None and not fut.done():
                    fut.cancel()
            closer = getattr(iterator, "aclose", None)
            if closer is not None:
                try:
                    await closer()
                except Exception:
                    pass

    async def _one(self, conn, reader, writer, remote: str) -> bool:
        """Serve one request; False when the connection is to be closed."""
        first = conn.their_state is h11.IDLE
        try:
            event = await self._next(conn, reader, self.head_timeout if first else self.idle_timeout)
        except asyncio.TimeoutError:
            return False
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint or 400
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                try:
                    await self._answer(conn, writer, text_response(status, f"bad request: {exc}"), close=True)
                except Exception:
                    pass
            return False
        if isinstance(event, h11.ConnectionClosed) or not isinstance(event, h11.Request):
            return False
        started = time.monotonic()
        method = event.method.decode("ascii", "replace")
        target = event.target.decode("utf-8", "surrogateescape")
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers.raw_items()]
        version = event.http_version.decode("ascii", "replace")
        length = None
        for k, v in headers:
            if k.lower() == "content-length" and v.strip().isdigit():
                length = int(v)
        request = ServerRequest(method, target, headers, version, b"", remote)
        if length is not None and length > self.max_body:
            resp = text_response(413, f"the body ({length:,} bytes) is larger than {self.max_body:,} bytes")
            size = await self._answer(conn, writer, resp, close=True, head=method == "HEAD")
            self._log(request, 413, size, started)
            return False
        # the body, bounded (a chunked body may grow past the limit: then 413)
        chunks, total = [], 0
        try:
            while True:
                if conn.they_are_waiting_for_100_continue:
                    await self._send(conn, writer, h11.InformationalResponse(status_code=100, headers=[]))
                ev = await self._next(conn, reader, self.head_timeout)
                if isinstance(ev, h11.Data):
                    total += len(ev.data)
                    if total > self.max_body:
                        resp = text_response(413, f"the body is larger than {self.max_body:,} bytes")
                        size = await self._answer(conn, writer, resp, close=True, head=method == "HEAD")
                        self._log(request, 413, size, started)
                        return False
                    chunks.append(ev.data)
                elif isinstance(ev, h11.EndOfMessage):
                    break
                else:
                    return False
        except asyncio.TimeoutError:
            try:
                await self._answer(conn, writer, text_response(408, "the body did not come in time"), close=True)
            except Exception:
                pass
            return False
        except h11.RemoteProtocolError:
            return False
        request.body = b"".join(chunks)
        if self.active >= self.max_requests:
            self.refused += 1
            resp = text_response(503, "too many requests in progress", [("Retry-After", "1")])
        else:
            self.active += 1
            try:
                resp = await self.handler(request)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a handler's bug is the client's 500, not the server's end
                log.debug("handler failed: %r", exc, exc_info=True)
                resp = text_response(500, "internal error")
            finally:
                self.active -= 1
        if method == "HEAD" and resp.stream is not None:
            resp.stream = None
        try:
            size = await self._answer(conn, writer, resp, reader=reader, head=method == "HEAD")
        except asyncio.TimeoutError:
            self._log(request, resp.status, 0, started)
            return False
        except (ConnectionError, OSError):
            self._log(request, resp.status, 0, started)
            return False
        self._log(request, resp.status, size, started)
        return conn.our_state is h11.DONE and conn.their_state is h11.DONE

    def _log(self, request: ServerRequest, status: int, size: int, started: float) -> None:
        if self.on_request is not None:
            try:
                self.on_request(request, status, size, time.monotonic() - started)
            except Exception:
                pass


# --------------------------------------------------------------------------- http listen


class Listener(receive.Receiver):
    """`http listen` (webhook style) as a receive.Receiver: every request under
    `prefix` is a message (address: the path; meta: method, path, query, headers,
    HTTP version, the client's address; the body is the payload). The client is
    answered `status` (204) only once the message was written and flushed (the
    driver's ack); not written (the output failed, -C reached, the run ended) it gets
    503, so a webhook sender retries. At most `max_pending` requests wait for the
    output at once (past it 503 with Retry-After at once): memory stays bounded
    whatever the clients do."""

    delivery = "at-most-once"
    can_reconnect = False

    def __init__(self, bind: str = "127.0.0.1", port: int = 8080, prefix: str = "/", max_body: int = 1 << 20,
                 max_pending: int = 256, max_connections: int = 512, status: int = 204, log_requests=None):
        self.bind, self.port, self.prefix = bind, port, prefix
        self.max_body, self.max_pending, self.max_connections = max_body, max_pending, max_connections
        self.status = status
        self.log_requests = log_requests
        self.loop = None
        self.server: HttpServer | None = None
        self.inbox = None
        self.waiting: set = set()

    @property
    def where(self) -> str:
        host = f"[{self.bind}]" if ":" in self.bind else self.bind
        return f"http://{host}:{self.port}{self.prefix}"

    def open(self) -> None:
        from iotctl import aioloop
        from iotctl.errors import from_os_error
        from iotctl.settings import current
        from iotctl.trace import route_logs

        route_logs(("iotctl.http", "asyncio"), current().debug, label="http")
        self.loop = aioloop.shared()
        self.inbox = self.loop.handoff()
        self.server = HttpServer(self._handle, self.bind, self.port, max_body=self.max_body,
                                 max_connections=self.max_connections, max_requests=self.max_pending,
                                 on_request=self.log_requests)
        try:
            self.loop.run(self.server.start(), 10)
        except OSError as exc:
            error = from_os_error(f"cannot listen on {self.bind}:{self.port}", exc)
            if exc.errno == 98:
                error.why = "the address is already in use"
            raise error from None
        self.port = self.server.port

    async def _handle(self, request: ServerRequest) -> ServerResponse:
        from iotctl.message import Message
        from iotctl.protocols.http.fields import masked_value

        prefix = self.prefix
        if prefix != "/" and not (request.path == prefix.rstrip("/") or request.path.startswith(prefix.rstrip("/") + "/")):
            return text_response(404, f"nothing here: this listener takes {prefix}")
        future = asyncio.get_running_loop().create_future()
        meta = {"method": request.method, "path": request.path, "query": request.query,
                "headers": [[k, masked_value(k, v)] for k, v in request.headers],
                "http_version": request.http_version, "remote": request.remote}
        msg = Message("http", request.path, request.body, request.header("content-type"), meta, token=future)
        self.waiting.add(future)
        self.inbox.put(msg)
        try:
            written = await future
        except asyncio.CancelledError:
            written = False
        finally:
            self.waiting.discard(future)
        if written:
            return ServerResponse(self.status)
        return text_response(503, "not delivered: the listener did not write it", [("Retry-After", "1")])

    def poll(self, wait):
        return self.inbox.take(wait)

    def _settle(self, futures, written: bool) -> None:
        for fut in futures:
            if fut is not None and not fut.done():
                fut.set_result(written)

    def ack(self, messages) -> None:
        self.loop.soon(self._settle, [m.token for m in messages], True)

    def nack(self, messages) -> None:
        self.loop.soon(self._settle, [m.token for m in messages], False)

    def close(self) -> None:
        if self.loop is None or self.server is None:
            return
        server = self.server
        self.server = None

        async def shut():
            self._settle(list(self.waiting), False)  # everything not written: 503
            for msg in self.inbox.take(0):
                self._settle([msg.token], False)
            await server.close(grace=1.0)

        self.loop.cleanup(shut, timeout=3.0)
