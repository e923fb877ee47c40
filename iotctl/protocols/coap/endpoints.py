"""CoAP endpoints: the source (an observation) and the sink (a request per message)
that the `coap` commands and URLs both open. No aiocoap here: client.py is imported
when an endpoint is built.

A URL is `coap[s]://host:port/path?device-query#iotctl-options` (also coap+tcp://,
coaps+tcp://, coap+ws://, coaps+ws://): the query is the device's (Uri-Query, sent as
it is), so iotctl's options go in the fragment. They are the long options of `coap
observe` (source: `#accept=json&non=true&count=5`) and of `coap post` (sink:
`#content_format=json&method=put`, `#timeout=5`).
"""

from __future__ import annotations

from iotctl.endpoint import Scheme
from iotctl.errors import UsageError
from iotctl.protocols.coap import formats

SCHEMES = {
    "coap": Scheme(tls=False, ws=False, port=5683),
    "coaps": Scheme(tls=True, ws=False, port=5684),
    "coap+tcp": Scheme(tls=False, ws=False, port=5683),
    "coaps+tcp": Scheme(tls=True, ws=False, port=5684),
    "coap+ws": Scheme(tls=False, ws=True, port=80),
    "coaps+ws": Scheme(tls=True, ws=True, port=443),
}

# the methods a sink may send with (`coap post --method`, `#method=put` in a URL)
SINK_METHODS = ("post", "put", "patch", "ipatch")
PAYLOAD_DEFAULT_FORMATS = {"cbor": 60, "json": 50}


def address_args(url, role: str) -> list[str]:
    """The command-line arguments a URL's address part means: the URI itself, with the
    device's query (the resolver took iotctl's options from the fragment)."""
    uri = url.base + (url.raw_path or "")
    if url.peer_query:
        uri += "?" + url.peer_query
    return [uri]


def check(uri: str, req: dict, security: dict) -> str:
    """A CoAP URI and its security options, checked before anything is sent."""
    uri = formats.check_uri(uri)
    scheme = formats.uri_scheme(req.get("proxy") or uri)
    if security["psk"] is not None and scheme != "coaps":
        raise UsageError("--psk", f"DTLS pre-shared keys need a coaps:// URI, not {scheme}://")
    if scheme == "coaps" and security["psk"] is None and not security["credentials"]:
        from iotctl.protocols.coap import client

        client.check_transport("coaps", client.Security())  # "DTLS not available" comes first
        raise UsageError(f"{uri}", "coaps:// needs --psk-identity and --psk (or --credentials FILE)")
    return uri


def request_spec(method: str, uri: str, req: dict, security: dict, payload: bytes = b""):
    """A client.RequestSpec from a command's checked values (aiocoap is loaded here)."""
    from iotctl.protocols.coap import client
    from iotctl.settings import current

    client.setup_logging(current().debug)
    return client.RequestSpec(method=method, uri=uri, payload=payload, security=client.Security(**security),
                              **req)


# --------------------------------------------------------------------------- source


def source(uri, req, security, receive=None, duration=None, **_ignored):
    """The observation (a receive.Receiver, entered to register): the first response,
    then every notification; re-registers when the server forgets it."""
    from iotctl.protocols.coap import client

    uri = check(uri, req, security)
    req = dict(req)
    # -W bounds the whole run, the first response included [default: 10 s for that]
    req["timeout"] = (receive.timeout if receive is not None else None) or req.get("timeout") or 10.0
    req["label"] = f"observe {uri}"
    if receive is not None and duration is not None:
        receive.duration = duration
    return client.Observation(request_spec("get", uri, req, security))


# --------------------------------------------------------------------------- sink


def sink(uri, req, security, payload=None, method="post", respond=None, **_ignored):
    """The sender (a send.Sender, entered to open the client): one `method` request
    (POST by default; PUT, PATCH or iPATCH; FETCH for `coap fetch -l`) per message to `uri`, each 2.xx response
    its acknowledgement, 4.xx/5.xx a refusal. `respond(message, ok)` gets every
    response (the commands print them)."""
    from iotctl.protocols.coap import client

    method = (method or "post").lower()
    if method not in SINK_METHODS + ("fetch",):
        raise UsageError(f"--method {method}", f"one of {', '.join(SINK_METHODS)}")
    uri = check(uri, req, security)
    req = dict(req)
    if req.get("content_format") is None and payload is not None and payload.encode in PAYLOAD_DEFAULT_FORMATS:
        req["content_format"] = PAYLOAD_DEFAULT_FORMATS[payload.encode]
    if req.get("timeout") is None:
        req["timeout"] = 10.0
    return client.Requests(request_spec(method, uri, req, security), respond)
