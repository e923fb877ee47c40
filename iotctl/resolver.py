"""Endpoints by URL: any protocol opened as a source (a Receiver) or a sink (a Sender)
from a URL and the active profile, for the cross-protocol commands (bridge, bench,
watch, check) and anything else that spans protocols.

    with resolver.source("mqtt://127.0.0.1/sensors/#?qos=1") as receiver: ...
    with resolver.sink("amqp://guest:guest@127.0.0.1/%2f?routing_key=readings") as sender: ...

A URL means exactly what the protocol's own command would do with the same options:
its parameters are that command's long option names (`client_id`, `qos`,
`clean_start=false`: the same names as profile keys), checked by the same click types,
and the command's own argument builders run before the protocol's factory. So a
protocol has one code path: its command and a URL reach the same factory.

The registry says which scheme opens which protocol, which command's options a URL
takes (`source_command`, `sink_command`), whether the options sit in the query or, when
the query belongs to the peer (CoAP, HTTP), in the fragment. The protocol's
`endpoints` module turns the URL's address part into the command's arguments
(`address_args`) and builds the endpoint (`source(**arguments)`, `sink(**arguments)`).
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from iotctl.endpoint import mask_url
from iotctl.errors import UsageError
from iotctl.registry import Protocol, all_schemes, by_scheme


class Url:
    """A URL split for a protocol's `address_args`: `base` is scheme://userinfo@host:port
    (what --url takes), `path` the percent-decoded path (leading '/' kept, None when
    absent), `raw_path` as written, `peer_query` the peer's query string when options
    live in the fragment (else ""), `shown` the URL with its password masked."""

    __slots__ = ("scheme", "base", "path", "raw_path", "query", "fragment", "peer_query", "host", "port",
                 "username", "shown")

    def __init__(self, scheme, base, path, raw_path, query, fragment, host, port, username, shown):
        self.scheme, self.base, self.path, self.raw_path = scheme, base, path, raw_path
        self.query, self.fragment, self.peer_query = query, fragment, ""
        self.host, self.port, self.username, self.shown = host, port, username, shown


class Target:
    """A URL resolved: the protocol, the role, the command's built arguments."""

    def __init__(self, protocol: Protocol, role: str, url: Url, arguments: dict[str, Any], module):
        self.protocol, self.role, self.url, self.arguments, self.module = protocol, role, url, arguments, module

    @property
    def name(self) -> str:
        return self.protocol.name

    def open(self):
        """The protocol's Receiver (role "source") or Sender ("sink"), not yet entered."""
        factory = getattr(self.module, self.role, None)
        if factory is None:
            raise UsageError(f"bad URL {self.url.shown!r}", f"{self.protocol.name} cannot be a {self.role}")
        return factory(**self.arguments)


def source(url: str, **overrides: Any):
    """The Receiver for `url` (a context manager: entering it connects)."""
    return resolve(url, "source", **overrides).open()


def sink(url: str, **overrides: Any):
    """The Sender for `url` (a context manager: entering it connects)."""
    return resolve(url, "sink", **overrides).open()


def resolve(url: str, role: str, **overrides: Any) -> Target:
    """Parse `url` for `role` ("source" or "sink"). `overrides`: option values that win
    over the URL's (a cross-protocol command's own, e.g. the bridge's --max-inflight)."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    protocol = by_scheme(scheme)
    # where options live in the query, a '#' is part of the address (an MQTT filter)
    parts = split(url, literal_hash=protocol is not None and protocol.options_in == "query")
    if protocol is None:
        raise UsageError(f"bad URL {parts.shown!r}",
                         f"unknown scheme {parts.scheme!r}; one of {', '.join(s + '://' for s in all_schemes())}")
    # "check" opens nothing: it parses like a source (address_args supplies what the
    # command requires) and the protocol's check uses the connection settings
    command_name = protocol.sink_command if role == "sink" else protocol.source_command
    if isinstance(command_name, dict):  # a command per scheme (http:// streams, http+listen:// listens)
        command_name = command_name.get(parts.scheme)
    if protocol.endpoints is None or command_name is None:
        raise UsageError(f"bad URL {parts.shown!r}", f"{protocol.name} cannot be a {role}")
    module = importlib.import_module(protocol.endpoints)
    group = _group(protocol)
    command = _command(group, command_name)
    options = _option_args(command, parts, protocol)
    argv = list(module.address_args(parts, role)) + options
    for name, value in overrides.items():
        argv += _one_option(command, name, value, parts.shown, overriding=True)
    arguments = _parse(group, command, command_name, argv, parts.shown)
    return Target(protocol, role, parts, arguments, module)


# --------------------------------------------------------------------------- the URL


def split(url: str, literal_hash: bool = False) -> Url:
    from urllib.parse import unquote, urlsplit

    shown = mask_url(url)
    try:
        parts = urlsplit(url.replace("#", "%23") if literal_hash else url)
        port = parts.port
    except ValueError as exc:
        raise UsageError(f"bad URL {shown!r}", str(exc)) from None
    scheme = parts.scheme.lower()
    if not scheme or "://" not in url:
        raise UsageError(f"bad URL {shown!r}", "give SCHEME://HOST/..., e.g. mqtt://127.0.0.1/sensors/#")
    if not parts.hostname:
        raise UsageError(f"bad URL {shown!r}", "no host")
    base = f"{scheme}://{parts.netloc}"
    path = unquote(parts.path) if parts.path else None
    return Url(scheme, base, path, parts.path, parts.query, parts.fragment, parts.hostname, port,
               unquote(parts.username) if parts.username is not None else None, shown)


def _options_text(parts: Url, protocol: Protocol) -> str:
    if protocol.options_in == "fragment":
        parts.peer_query = parts.query
        return parts.fragment
    if parts.fragment:
        raise UsageError(f"bad URL {parts.shown!r}", f"a {protocol.name} URL has no #fragment; "
                                                     "options go in the ?query")
    return parts.query


def _option_args(command: click.Command, parts: Url, protocol: Protocol) -> list[str]:
    from urllib.parse import parse_qsl

    text = _options_text(parts, protocol)
    if not text:
        return []
    try:
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise UsageError(f"bad URL {parts.shown!r}", f"cannot read the options {text!r} (KEY=VALUE&...)") from None
    argv: list[str] = []
    for key, value in pairs:
        argv += _one_option(command, key, value, parts.shown)
    return argv


def _options_by_name(command: click.Command) -> dict[str, click.Option]:
    found = {}
    for p in command.params:
        if isinstance(p, click.Option) and p.name and not getattr(p, "iotctl_global", False) and not p.hidden:
            found[p.name] = p
            for decl in p.opts + p.secondary_opts:
                if decl.startswith("--"):
                    found.setdefault(decl[2:].replace("-", "_"), p)
    return found


# what the URL's authority says; `server` is not among them: an XMPP URL's authority is
# the account (RFC 5122), and the server to connect to may be another host (?server=)
_NOT_IN_URLS = {"url", "host", "port", "username", "password", "jid"}


def _one_option(command: click.Command, key: str, value: Any, shown: str, overriding: bool = False) -> list[str]:
    """The command-line arguments for one URL option `key=value`."""
    options = _options_by_name(command)
    name = key.replace("-", "_")
    opt = options.get(name)
    if opt is None or (name in _NOT_IN_URLS and not overriding):
        from iotctl.groups import suggest

        if name in _NOT_IN_URLS:
            raise UsageError(f"bad URL {shown!r}", f"{key!r} belongs in the URL itself (scheme://user:pass@host:port)")
        close = suggest(name, [n for n in options if n not in _NOT_IN_URLS])
        raise UsageError(f"bad URL {shown!r}", f"unknown option {key!r}"
                         + (f" (did you mean {close!r}?)" if close else ""))
    long_opts = [d for d in opt.opts if d.startswith("--")] or opt.opts
    if opt.is_flag and not opt.count:
        truth = _truth(value, key, shown)
        if name in {d[2:].replace("-", "_") for d in opt.secondary_opts}:
            truth = not truth  # no_clean_start=true
        if opt.secondary_opts:
            return [long_opts[0] if truth else opt.secondary_opts[0]]
        if truth:
            return [long_opts[0]]
        return []
    if isinstance(value, (list, tuple)):
        out = []
        for v in value:
            out += [long_opts[0], str(v)]
        return out
    return [long_opts[0], str(value)]


def _truth(value: Any, key: str, shown: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("", "1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise UsageError(f"bad URL {shown!r}", f"{key}={value!r}: give true or false")


# --------------------------------------------------------------------------- the command's arguments


def _group(protocol: Protocol) -> click.Group:
    module, attr = protocol.group.split(":")
    return getattr(importlib.import_module(module), attr)


def _command(group: click.Group, name: str) -> click.Command:
    cmd = group.commands.get(name)
    if cmd is None:
        raise UsageError(f"no command {group.name} {name}")
    return cmd


def _parse(group: click.Group, command: click.Command, name: str, argv: list[str], shown: str) -> dict:
    """Parse `argv` as the command would be parsed under its group (profile table as
    defaults, IOTCTL_<PROTO>_<OPTION>), and apply its bundles: the arguments its body
    receives."""
    from iotctl.groups import options_of
    from iotctl.options import built_arguments
    from iotctl.profiles import ProfileSection
    from iotctl.settings import Settings, current

    parent = click.get_current_context(silent=True)
    if parent is None:
        parent = click.Context(group, info_name="iotctl", obj=Settings())
    group_ctx = click.Context(group, info_name=group.name, parent=parent)
    section = ProfileSection(group.protocol, lambda: current().profile, lambda: options_of(group))
    group_ctx.default_map = {name: section}
    try:
        ctx = command.make_context(name, argv, parent=group_ctx)
    except click.UsageError as exc:
        raise UsageError(f"bad URL {shown!r}", _click_message(exc)) from None
    with ctx:
        try:
            return built_arguments(command.callback, ctx.params)
        except click.UsageError as exc:
            raise UsageError(f"bad URL {shown!r}", _click_message(exc)) from None


def _click_message(exc: click.UsageError) -> str:
    param = getattr(exc, "param", None)
    if isinstance(exc, click.BadParameter) and isinstance(param, click.Option):
        long_opts = [d[2:] for d in param.opts if d.startswith("--")]
        name = (long_opts[0] if long_opts else param.name or "").replace("-", "_")
        if isinstance(exc, click.MissingParameter):
            return f"no {name}: give it in the URL"
        return f"{name}: {exc.message}".rstrip(".")
    return exc.format_message().rstrip(".")
