"""What the amqp1 commands hand to client.py: the connection's settings and the send
command's message options (no proton here: the commands' option builders make these)."""

from __future__ import annotations


class Amqp1Config:
    def __init__(self, endpoint, sasl: str = "auto", vhost: str | None = None, container_id: str | None = None,
                 heartbeat: float = 60.0, connect_timeout: float = 10.0, debug: bool = False):
        self.endpoint, self.sasl, self.vhost, self.container_id = endpoint, sasl, vhost, container_id
        self.heartbeat, self.connect_timeout, self.debug = heartbeat, connect_timeout, debug


class Props:
    """The message options of `amqp1 send` (None: not given)."""

    __slots__ = ("content_type", "content_encoding", "message_id", "correlation_id", "subject", "reply_to", "to",
                 "durable", "priority", "ttl", "headers", "annotations", "body")

    def __init__(self, content_type=None, content_encoding=None, message_id=None, correlation_id=None, subject=None,
                 reply_to=None, to=None, durable=False, priority=None, ttl=None, headers=(), annotations=(),
                 body=None):
        self.content_type, self.content_encoding, self.message_id = content_type, content_encoding, message_id
        self.correlation_id, self.subject, self.reply_to, self.to = correlation_id, subject, reply_to, to
        self.durable, self.priority, self.ttl = durable, priority, ttl
        self.headers, self.annotations, self.body = list(headers or ()), list(annotations or ()), body
