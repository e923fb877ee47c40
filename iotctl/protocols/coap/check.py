"""`iotctl check coap://host:port`: what a CoAP server is: the round trip of a ping
(an empty confirmable message, answered with a reset: UDP only) and of a GET of
/.well-known/core, how many resources it lists, how many are observable, the content
formats they name, and whether it answers block-wise (a GET asking for small blocks
of the largest resource it lists, or of one of them); for coaps:// a note on DTLS.
CoAP has no login. Nothing is written to the server: GET only, with or without
--probe. Every step is bounded by --timeout."""

from __future__ import annotations

import os
import socket
import time

from iotctl.checking import Report
from iotctl.errors import ConnectError, IotctlError, TimeoutError_

WELL_KNOWN = "/.well-known/core"
SMALL_BLOCK = 0  # SZX 0: 16-byte blocks, what a block-wise GET of a small resource asks for
BLOCK_SIZES = (16, 32, 64, 128, 256, 512, 1024)


def check(report: Report, arguments: dict, probe: bool, max_payload: int, timeout: float) -> None:
    from iotctl.protocols.coap import client, endpoints, formats

    req, security = arguments["req"], arguments["security"]
    uri = endpoints.check(arguments["uri"], req, security)
    scheme = formats.uri_scheme(uri)
    base = uri.split("://", 1)[0] + "://" + uri.split("://", 1)[1].split("/", 1)[0].split("?", 1)[0]
    report.add("server", "address", base)
    if scheme == "coaps":
        identity = security.get("psk_identity")
        report.add("security", "DTLS", f"pre-shared key, identity {identity!r}" if identity is not None else
                   "credentials file" if security.get("credentials") else "?")
        report.add("security", "certificate", "not shown: iotctl's DTLS (aiocoap, tinydtls) takes pre-shared keys "
                                              "only; a failed handshake looks like no answer (exit 5)")
    elif scheme in ("coaps+tcp", "coaps+ws"):
        report.tls(_TlsEndpoint(uri, scheme), timeout)
    if scheme == "coap":
        _ping(report, uri, timeout)
    spec = client.RequestSpec(method="get", uri=formats.with_path(base, WELL_KNOWN), timeout=timeout,
                              security=client.Security(**security), max_size=req.get("max_size"))
    loop = client.shared_loop()
    ctx = loop.run(client._context(spec.uri, spec.security))
    try:
        links = _discovery(report, loop, ctx, spec)
        if links is not None:
            _blockwise(report, loop, ctx, spec, base, links)
    finally:
        loop.cleanup(ctx.shutdown)
    report.add("login", "none", "CoAP has no login" + (" (DTLS authenticates)" if scheme.startswith("coaps") else ""))


class _TlsEndpoint:
    """What Report.tls needs of a coaps+tcp:// or coaps+ws:// server."""

    tls = True

    def __init__(self, uri: str, scheme: str):
        from urllib.parse import urlsplit

        parts = urlsplit(uri)
        self.host = parts.hostname or ""
        self.port = parts.port or (5684 if scheme == "coaps+tcp" else 443)

    def ssl_context(self):
        from iotctl.tls import make_ssl_context

        return make_ssl_context()


def _ping(report: Report, uri: str, timeout: float) -> None:
    """An empty CON message (CoAP's ping, RFC 7252 4.3): a server answers with RST.
    Sent again every second (once per second keeps to CoAP's pace) until the timeout;
    an ICMP port unreachable is a refused connection (exit 3)."""
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    host, port = parts.hostname or "", parts.port or 5683
    what = f"cannot reach {host}:{port}"
    try:
        family, _, _, _, addr = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)[0]
    except socket.gaierror as exc:
        raise ConnectError(what, f"cannot resolve host: {exc.strerror}") from None
    mid = (os.getpid() + int(time.monotonic() * 1000)) & 0xFFFF
    packet = bytes([0x40, 0x00, mid >> 8, mid & 0xFF])
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.connect(addr)
        deadline = time.monotonic() + timeout
        sent = 0
        while True:
            t0 = time.perf_counter()
            try:
                sock.send(packet)
                sent += 1
                sock.settimeout(max(0.01, min(1.0, deadline - time.monotonic())))
                while True:
                    data = sock.recv(2048)
                    if len(data) >= 4 and data[2:4] == packet[2:4]:
                        break
            except ConnectionRefusedError:
                raise ConnectError(what, "port unreachable (nothing listens there)",
                                   hint="is a CoAP server running there?") from None
            except socket.timeout:
                if time.monotonic() >= deadline:
                    raise TimeoutError_(f"ping {host}:{port}", f"no answer within {timeout:g} s ({sent} sent)",
                                        hint="is a CoAP server running there? (-W sets the timeout)") from None
                continue
            except OSError as exc:
                raise ConnectError(what, exc.strerror or str(exc)) from None
            ms = (time.perf_counter() - t0) * 1000
            kind = {3: "RST", 2: "ACK"}.get((data[0] >> 4) & 3, "answer")
            report.ok("server", "ping (empty CON)", f"{kind} in {ms:.1f} ms" + (f" (try {sent})" if sent > 1 else ""))
            return


def _discovery(report: Report, loop, ctx, spec) -> list[dict] | None:
    from iotctl.protocols.coap import client, formats
    from iotctl.protocols.coap.linkformat import parse_links

    t0 = time.perf_counter()
    resp = loop.run(client._one(ctx, spec))
    ms = (time.perf_counter() - t0) * 1000
    code = str(resp.code)
    if not resp.code.is_successful():
        report.warn("server", f"GET {WELL_KNOWN}", f"{code} in {ms:.1f} ms: no resource discovery")
        return None
    report.ok("server", f"GET {WELL_KNOWN}", f"{code} in {ms:.1f} ms, {len(resp.payload)} bytes")
    ct = resp.opt.content_format
    if ct is not None and int(ct) != 40:
        report.warn("resources", "format", f"{formats.content_format_name(int(ct))}, not application/link-format")
    try:
        links = parse_links(bytes(resp.payload).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        report.warn("resources", "links", f"not link-format: {exc}")
        return None
    observable = [link for link in links if link.get("obs")]
    report.add("resources", "listed", len(links))
    report.add("resources", "observable", f"{len(observable)}" + (
        f" ({', '.join(link['href'] for link in observable[:5])}{', ...' if len(observable) > 5 else ''})"
        if observable else ""))
    names = []
    for number in sorted({int(v) for link in links for v in _values(link, "ct") if v.isdigit()}):
        names.append(formats.content_format_name(number) or str(number))
    report.add("resources", "content formats", ", ".join(names) or "(none named)")
    types = sorted({v for link in links for v in _values(link, "rt")})
    if types:
        report.add("resources", "resource types", ", ".join(types[:10]) + (", ..." if len(types) > 10 else ""))
    return links


def _values(link: dict, name: str) -> list[str]:
    value = link.get(name)
    if value is None or value is True:
        return []
    values = value if isinstance(value, list) else [value]
    return [v for text in values for v in str(text).split()]


def _blockwise(report: Report, loop, ctx, spec, base: str, links: list[dict]) -> None:
    """GET the largest listed resource (its sz), else the root or the first listed, in
    blocks: small ones (16 bytes) for a small resource, 1024 for a large one."""
    from iotctl.protocols.coap import client

    def size(link: dict) -> int:
        try:
            return int(link.get("sz")) if link.get("sz") not in (None, True) else -1
        except (TypeError, ValueError):
            return -1

    hrefs = [link for link in links if isinstance(link.get("href"), str) and link["href"].startswith("/")]
    if not hrefs:
        report.add("block-wise", "GET", "no resource on this server is listed to try")
        return
    sized = max(hrefs, key=size)
    target = sized if size(sized) > 0 else next((link for link in hrefs if link["href"] == "/"), hrefs[0])
    szx = 6 if size(target) > 1024 else SMALL_BLOCK
    uri = base + target["href"]
    req = client.RequestSpec(method="get", uri=uri, block_szx=szx, timeout=spec.timeout, security=spec.security,
                             max_size=spec.max_size)
    t0 = time.perf_counter()
    try:
        resp = loop.run(client._one(ctx, req))
    except IotctlError as exc:
        report.fail("block-wise", f"GET {target['href']}", exc.why or exc.what)
        return
    ms = (time.perf_counter() - t0) * 1000
    if not resp.code.is_successful():
        report.warn("block-wise", f"GET {target['href']}", f"{resp.code}")
        return
    length = len(resp.payload)
    block = resp.opt.block2
    asked = BLOCK_SIZES[szx]
    if block is not None and block.block_number > 0:
        report.ok("block-wise", f"GET {target['href']}", f"{length} bytes in {block.block_number + 1} blocks of "
                                                         f"{BLOCK_SIZES[block.size_exponent]} ({ms:.1f} ms)")
    elif length > asked and block is None:
        report.warn("block-wise", f"GET {target['href']}", f"{length} bytes in one response: blocks of {asked} "
                                                           "were asked for, the server ignored it")
    else:
        report.add("block-wise", f"GET {target['href']}", f"{length} bytes: fits in one block of {asked}, "
                                                           "nothing to tell")
