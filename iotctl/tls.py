"""One SSLContext builder for every protocol's --tls/--cafile/--cert/--key/--insecure/--alpn."""

from __future__ import annotations

from iotctl.errors import TLSError, UsageError


def make_ssl_context(cafile: str | None = None, cert: str | None = None, key: str | None = None,
                     insecure: bool = False, alpn: tuple[str, ...] = ()):
    import ssl

    for label, path in (("--cafile", cafile), ("--cert", cert), ("--key", key)):
        if path is not None:
            try:
                with open(path, "rb"):
                    pass
            except OSError as exc:
                raise UsageError(f"cannot read {label} file {path}", exc.strerror or str(exc)) from None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    try:
        if cafile:
            ctx.load_verify_locations(cafile=cafile)
        if cert:
            ctx.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise TLSError("bad certificate or key", f"{exc.reason or exc}") from None
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def inspect(host: str, port: int, ctx, server_name: str | None = None, timeout: float = 5.0,
            starttls=None) -> dict:
    """What `iotctl check` shows of a TLS endpoint: protocol, cipher, the certificate's
    subject, names, issuer and expiry, and whether chain and name verify with `ctx`.
    A failed verification is reported, not raised; a handshake that fails either way
    raises TLSError (or the connection's own error). `starttls(sock)`, when given, runs
    a protocol's plain-text upgrade on the connected socket before the handshake (XMPP's
    STARTTLS); it raises an IotctlError when the server does not offer it."""
    import socket
    import ssl
    import time

    from iotctl.errors import from_os_error

    name = server_name or host
    what = f"TLS to {host}:{port}"
    out: dict = {"verified": True, "verify_error": None}
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            if starttls is not None:
                starttls(raw)
            with ctx.wrap_socket(raw, server_hostname=name) as tls:
                out.update(_session(tls))
                if ctx.verify_mode != ssl.CERT_NONE:
                    out["certificate"] = _cert_fields(tls.getpeercert())
                else:
                    out["verified"] = None  # --insecure: not checked
                    out["certificate"] = _decode_der(tls.getpeercert(binary_form=True))
    except ssl.SSLCertVerificationError as exc:
        out["verified"] = False
        out["verify_error"] = exc.verify_message or str(exc)
        loose = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        loose.check_hostname = False
        loose.verify_mode = ssl.CERT_NONE
        try:
            with socket.create_connection((host, port), timeout=timeout) as raw:
                if starttls is not None:
                    starttls(raw)
                with loose.wrap_socket(raw, server_hostname=name) as tls:
                    out.update(_session(tls))
                    out["certificate"] = _decode_der(tls.getpeercert(binary_form=True))
        except (OSError, ssl.SSLError) as again:
            raise from_os_error(what, again) from None
    except OSError as exc:
        raise from_os_error(what, exc) from None
    cert = out.get("certificate") or {}
    if cert.get("not_after_ts") is not None:
        cert["days_left"] = int((cert["not_after_ts"] - time.time()) // 86400)
    return out


def _session(tls) -> dict:
    cipher = tls.cipher()
    return {"version": tls.version(), "cipher": cipher[0] if cipher else None,
            "alpn": tls.selected_alpn_protocol()}


def _cert_fields(cert: dict) -> dict:
    import ssl

    def name(rdns) -> str:
        return ", ".join(f"{k}={v}" for rdn in rdns or () for k, v in rdn)

    not_after = cert.get("notAfter")
    return {"subject": name(cert.get("subject")), "issuer": name(cert.get("issuer")),
            "names": [v for kind, v in cert.get("subjectAltName", ()) if kind in ("DNS", "IP Address")],
            "not_after": not_after,
            "not_after_ts": ssl.cert_time_to_seconds(not_after) if not_after else None}


def _decode_der(der: bytes | None) -> dict:
    """The fields of a certificate that did not verify (the standard library decodes
    only verified certificates, or a PEM file through a private helper)."""
    import os
    import ssl
    import tempfile

    if not der:
        return {}
    fd, path = tempfile.mkstemp(suffix=".pem")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(ssl.DER_cert_to_PEM_cert(der))
        decode = getattr(ssl._ssl, "_test_decode_cert", None)  # type: ignore[attr-defined]
        return _cert_fields(decode(path)) if decode is not None else {}
    except (ssl.SSLError, ValueError, OSError):
        return {}
    finally:
        os.unlink(path)
