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
