"""`iotctl check URL`: what a server is and what it allows, for any protocol. The
protocol's registry entry names its `check` function, which fills a `Report`; this
module holds the report, the TLS part every protocol shares, and the rendering (a
table on a terminal, tab-separated lines when piped, -o json)."""

from __future__ import annotations

import time


class Report:
    """Rows of (section, name, value, status); status is "ok", "warn", "fail" or "info"."""

    def __init__(self, url: str, protocol: str):
        self.url, self.protocol = url, protocol
        self.rows: list[tuple[str, str, object, str]] = []
        self.started = time.monotonic()

    def add(self, section: str, name: str, value, status: str = "info") -> None:
        self.rows.append((section, name, value, status))

    def ok(self, section: str, name: str, value) -> None:
        self.add(section, name, value, "ok")

    def warn(self, section: str, name: str, value) -> None:
        self.add(section, name, value, "warn")

    def fail(self, section: str, name: str, value) -> None:
        self.add(section, name, value, "fail")

    def server(self, cfg, timeout: float):
        """The start every broker's check shares: its connect bounded by the check's
        timeout, the TLS rows and the address row. Returns the endpoint."""
        cfg.connect_timeout = min(cfg.connect_timeout, timeout)
        self.tls(cfg.endpoint, timeout)
        self.add("server", "address", cfg.endpoint.display)
        return cfg.endpoint

    def probe_skipped(self, what: str) -> None:
        """The row of a check run without --probe: `what` says what the probe would do."""
        self.add("probe", "skipped", f"{what}: on by default against loopback only (--probe)")

    def tls(self, endpoint, timeout: float, server_name: str | None = None, starttls=None) -> None:
        """The TLS rows of an endpoint that uses TLS (nothing otherwise). `server_name`:
        the name the certificate must carry when it is not the host connected to (an
        XMPP domain); `starttls(sock)`: the protocol's plain-text upgrade before the
        handshake (see tls.inspect)."""
        if not getattr(endpoint, "tls", False):
            return
        from iotctl.tls import inspect

        info = inspect(endpoint.host, endpoint.port, endpoint.ssl_context(), server_name=server_name,
                       timeout=timeout, starttls=starttls)
        cert = info.get("certificate") or {}
        self.add("tls", "protocol", info.get("version"))
        self.add("tls", "cipher", info.get("cipher"))
        if info.get("alpn"):
            self.add("tls", "alpn", info["alpn"])
        self.add("tls", "subject", cert.get("subject") or "?")
        self.add("tls", "names", ", ".join(cert.get("names") or []) or "(none)")
        self.add("tls", "issuer", cert.get("issuer") or "?")
        days = cert.get("days_left")
        if days is not None:
            status = "fail" if days < 0 else "warn" if days < 30 else "ok"
            self.add("tls", "expires", f"{cert.get('not_after')} ({days} days)", status)
        verified = info.get("verified")
        if verified is None:
            self.warn("tls", "verified", "not checked (--insecure)")
        elif verified:
            self.ok("tls", "verified", f"chain and name {server_name or endpoint.host}")
        else:
            self.fail("tls", "verified", info.get("verify_error") or "no")

    def to_json(self) -> dict:
        return {"url": self.url, "protocol": self.protocol,
                "elapsed": round(time.monotonic() - self.started, 3),
                "checks": [{"section": s, "name": n, "value": v, "status": st} for s, n, v, st in self.rows]}


LOOPBACK = ("127.0.0.1", "::1", "localhost")


def run(entry, shown: str, host: str, arguments: dict, checking) -> None:
    """Run a protocol's checks (its registry entry's `check`) and print the report; a
    failure still prints what was found before it (a certificate that does not verify)."""
    import importlib

    from iotctl.errors import IotctlError, UsageError
    from iotctl.settings import current

    if not getattr(entry, "check", None):
        raise UsageError(f"cannot check {entry.name} yet", "no checks are written for this protocol")
    probe = checking.probe
    if probe is None:
        probe = (host or "").lower() in LOOPBACK
    module, attr = entry.check.split(":")
    report = Report(shown, entry.name)
    try:
        getattr(importlib.import_module(module), attr)(report, arguments, probe=probe,
                                                       max_payload=checking.max_payload, timeout=checking.timeout)
    except IotctlError:
        if report.rows:
            render(report, current().output)
        raise
    render(report, current().output)


def timed(fn, *args, **kwargs) -> tuple[object, float]:
    """fn's result and how long it took, in milliseconds."""
    t0 = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, (time.perf_counter() - t0) * 1000


def render(report: Report, mode: str) -> None:
    import json
    import sys

    if mode in ("json", "jsonl"):
        data = report.to_json()
        sys.stdout.write(json.dumps(data, indent=2 if mode == "json" else None, default=str) + "\n")
        sys.stdout.flush()
        return
    if sys.stdout.isatty() and mode in ("auto", "pretty"):
        from rich.table import Table

        from iotctl.output import console

        marks = {"ok": "[green]ok[/]", "warn": "[yellow]warn[/]", "fail": "[red]FAIL[/]", "info": ""}
        table = Table(title=f"{report.protocol}: {report.url}", show_header=True, expand=False)
        for column in ("", "check", "value", ""):
            table.add_column(column, overflow="fold")
        last = None
        for section, name, value, status in report.rows:
            table.add_row(section if section != last else "", name, _text(value), marks[status])
            last = section
        console.stdout().print(table)
        return
    out = "".join(f"{s}\t{n}\t{_text(v)}\t{st}\n" for s, n, v, st in report.rows)
    sys.stdout.write(out)
    sys.stdout.flush()


def _text(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value).replace("\t", " ").replace("\n", " ")
