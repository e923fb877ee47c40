"""`watch`: a live tree of the addresses a source delivers, for any protocol of the
registry (the command never names one).

The model is a tree of addresses split by the protocol's separator (the registry
entry's `separator`: MQTT and STOMP "/", AMQP routing keys "."). Every node counts
the messages under its prefix, their rate and the time of the last one; a node that
is an address itself (a "topic") also keeps a ring of its recent messages (the
history), the last message's metadata, and a retained flag where the protocol has
retained messages (the registry's `retained` module says which message is one).

Memory is ONE budget for the whole view (`--memory`, 64 MiB by default). Every node,
topic and ring entry is accounted (estimated from the sizes of the objects kept;
tests/test_watch.py checks the estimate against tracemalloc); beyond the budget
whole topics are evicted, least recently updated first, and counted. A payload
larger than a quarter of the budget is kept cut to that size.

`snapshot()` receives for -W seconds through the receive driver and prints the tree
once, as text or -o json; watchscreen.run() chooses it or the full-screen view.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import OrderedDict

from iotctl.errors import UsageError
from iotctl.message import Message
from iotctl.output.writers import Writer

_time = time.time

# --------------------------------------------------------------------------- sizes

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1 << 10, "m": 1000 ** 2, "mb": 1000 ** 2, "mib": 1 << 20,
          "g": 1000 ** 3, "gb": 1000 ** 3, "gib": 1 << 30}


def parse_size(text: str) -> int:
    """'64MiB', '64M', '500kB', '1GiB', '1048576' -> bytes (k/M/G are powers of 1000,
    KiB/MiB/GiB of 1024)."""
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = m.group(2).lower() if m else None
    if m is None or unit not in _UNITS:
        raise UsageError(f"bad size {text!r}", "give a number of bytes with an optional unit: 64MiB, 500kB, 1GiB")
    return int(float(m.group(1)) * _UNITS[unit])


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


class WatchSpec:
    """The view's options: the memory budget in bytes, the snapshot's duration (-W),
    --snapshot, the initial --filter, the ring length per topic (--history), and
    the most frames per second the screen draws for arriving messages."""

    __slots__ = ("memory", "seconds", "snapshot", "filter", "history", "fps")

    def __init__(self, memory: int = 64 << 20, seconds: float | None = None, snapshot: bool = False,
                 filter: str | None = None, history: int = 50, fps: float = 5.0):
        self.memory, self.seconds, self.snapshot = memory, seconds, snapshot
        self.filter, self.history, self.fps = filter or None, history, fps


# --------------------------------------------------------------------------- the model

WINDOW = 10.0  # seconds: the rate is a sliding window of this length

# Accounted bytes (CPython 3.11, 64 bit; tests/test_watch.py compares them with
# tracemalloc): a node (the slots object, its floats, its entry in the parent's
# dict) plus its name; the children dict of a prefix; a topic (its OrderedDict
# entry, the address string, the ring list) plus its address; a ring entry (a
# 3-tuple, the float time, the bytes object, a list slot) plus its payload and
# summary.
NODE_COST = 260
DICT_COST = 200
TOPIC_COST = 250
ENTRY_COST = 136


class Cut(bytes):
    """A payload kept cut to the budget's limit; `size` is its real length."""

    size = 0


class Node:
    """A prefix of addresses. `count` messages under it (itself included), `last` the
    local time of the newest, the rate's window (`wstart`, `wcount`, `pcount`: the
    previous window's count, -1 in the first); as an address itself (`address` set):
    `own` messages, `ring` of (ts, payload, summary), the last message's `meta`,
    `content_type` and real `size`, `retained`, and `cost`, the accounted bytes of its
    topic data. `expanded`: None until the user folds or unfolds it."""

    __slots__ = ("name", "parent", "children", "count", "last", "wstart", "wcount", "pcount", "address", "own",
                 "ring", "meta", "meta_cost", "content_type", "size", "retained", "cost", "expanded")

    def __init__(self, name: str, parent: "Node | None", now: float = 0.0):
        self.name, self.parent, self.children = name, parent, None
        self.count, self.last, self.wstart, self.wcount, self.pcount = 0, now, now, 0, -1
        self.address = self.ring = self.meta = self.content_type = None
        self.own = self.meta_cost = self.size = self.cost = 0
        self.retained = False
        self.expanded = None

    def rate(self, now: float) -> float:
        """Messages per second over the last WINDOW seconds (sliding; since the first
        message while the first window lasts)."""
        d = now - self.wstart
        if self.pcount < 0:
            if d < WINDOW:
                return self.wcount / max(d, 1.0)
            prev, cur, d = self.wcount, 0, d - WINDOW
        elif d >= WINDOW:
            prev, cur, d = self.wcount, 0, d - WINDOW
        else:
            prev, cur = self.pcount, self.wcount
        if d >= WINDOW:
            return 0.0
        return (prev * (WINDOW - d) / WINDOW + cur) / WINDOW

    def path(self) -> list["Node"]:
        out = []
        node = self
        while node.parent is not None:
            out.append(node)
            node = node.parent
        out.reverse()
        return out

    def sorted_children(self) -> list["Node"]:
        return [self.children[k] for k in sorted(self.children)] if self.children else []

    def __repr__(self) -> str:
        return f"Node({self.name!r}, count={self.count}, address={self.address!r})"


class Tree:
    """The watched addresses. `add(msg)` from the receiving side (under `lock` when
    another thread reads), everything else reads. `used` is the accounted memory,
    never above `budget` once `add` returns (but for one topic whose single newest
    message is larger: then it is kept alone)."""

    def __init__(self, separator: str = "/", budget: int = 64 << 20, history: int = 50, flag=None):
        if history < 1:
            raise UsageError("--history", "must be at least 1")
        self.separator = separator
        self.budget, self.history, self.flag = budget, history, flag
        self.max_payload = max(64, budget // 4)
        self.started = _time()
        self.root = Node("", None, self.started)
        self.root.expanded = True
        self.topics: OrderedDict[str, Node] = OrderedDict()  # least recently updated first
        self.used = 0
        self.nodes = 0
        self.evicted = 0  # topics evicted for the budget
        self.cut = 0  # payloads kept cut
        self.dropped = 0  # messages not recorded (while paused)
        self.version = 0  # changes whenever a node is added or removed
        self.lock = threading.Lock()
        self._keys: dict[str, tuple[str, ...]] = {}
        self._summaries: dict[str, str] = {}

    def begin(self) -> None:
        """Start the clock now (the connection is up): rates count from here."""
        root = self.root
        self.started = root.wstart = root.last = _time()

    # ------------------------------------------------------------------ adding

    def add(self, msg: Message, now: float | None = None) -> None:
        if now is None:
            now = _time()
        address = msg.address
        topics = self.topics
        node = topics.get(address)
        if node is None:
            node = self._topic(address, now)
        else:
            topics.move_to_end(address)
        payload = msg.payload
        size = len(payload)
        if size > self.max_payload:
            cut = Cut(payload[: self.max_payload])
            cut.size = size
            payload = cut
            self.cut += 1
        summary = self._summary(msg)
        ring = node.ring
        added = ENTRY_COST + len(payload) + len(summary)
        if len(ring) >= self.history:
            old = ring.pop(0)
            added -= ENTRY_COST + len(old[1]) + len(old[2])
        ring.append((msg.ts, payload, summary))
        meta = msg.meta
        if meta is not node.meta:
            mc = _size(meta) if meta else 0
            added += mc - node.meta_cost
            node.meta, node.meta_cost = meta, mc
        node.content_type = msg.content_type
        node.size = size
        node.own += 1
        node.cost += added
        self.used += added
        flag = self.flag
        if not size:
            node.retained = False
        elif flag is not None and flag(msg):
            node.retained = True
        while node is not None:  # the counts and rates of every prefix, the root's are the totals
            node.count += 1
            node.last = now
            d = now - node.wstart
            if d >= WINDOW:
                if d < 2 * WINDOW:
                    node.pcount = node.wcount
                    node.wstart += WINDOW
                else:
                    node.pcount = 0
                    node.wstart = now
                node.wcount = 0
            node.wcount += 1
            node = node.parent
        if self.used > self.budget:
            self._evict()

    def add_all(self, batch: list[Message]) -> None:
        now = _time()
        add = self.add
        for msg in batch:
            add(msg, now)

    def _topic(self, address: str, now: float) -> Node:
        sep = self.separator
        node = self.root
        for name in (address.split(sep) if sep else (address,)):
            children = node.children
            if children is None:
                children = node.children = {}
                self.used += DICT_COST
            child = children.get(name)
            if child is None:  # a node of the first window counts its rate from the start of the watch
                child = children[name] = Node(name, node, now if now - self.started >= WINDOW else self.started)
                self.used += NODE_COST + len(name)
                self.nodes += 1
                self.version += 1
            node = child
        node.address = address
        node.ring = []
        node.cost = TOPIC_COST + len(address)
        self.used += node.cost
        self.topics[address] = node
        return node

    def _summary(self, msg: Message) -> str:
        """The message's key metadata on one line, as the pretty header shows it (the
        registry's header keys; a true boolean as its name), each value at most 20
        characters; a value equal to the address (an AMQP routing key) is left out.
        Interned: most messages share a few."""
        meta = msg.meta
        if not meta:
            return ""
        keys = self._keys.get(msg.protocol)
        if keys is None:
            from iotctl.registry import header_keys

            keys = self._keys[msg.protocol] = header_keys(msg.protocol)
        parts = []
        for key in keys:
            value = meta.get(key)
            if value is True:
                parts.append(key)
            elif value is not None and value is not False and value != "" and value != msg.address:
                text = str(value)
                parts.append(f"{key}={text if len(text) <= 20 else text[:19] + '…'}")
        text = " ".join(parts)
        cache = self._summaries
        found = cache.get(text)
        if found is None:
            if len(cache) >= 4096:
                cache.clear()
            found = cache[text] = text
        return found

    # ------------------------------------------------------------------ the budget

    def _evict(self) -> None:
        topics = self.topics
        while self.used > self.budget and len(topics) > 1:
            _, node = topics.popitem(last=False)
            self._drop(node)
            self.evicted += 1
        if self.used > self.budget and topics:  # one topic alone is too big: its oldest messages go
            node = next(reversed(topics.values()))
            ring = node.ring
            while self.used > self.budget and len(ring) > 1:
                old = ring.pop(0)
                freed = ENTRY_COST + len(old[1]) + len(old[2])
                node.cost -= freed
                self.used -= freed

    def _drop(self, node: Node) -> None:
        self.used -= node.cost
        node.address = node.ring = node.meta = None
        node.cost = node.meta_cost = node.own = 0
        node.retained = False
        self._prune(node)

    def _prune(self, node: Node) -> None:
        """Remove `node` and its ancestors while they are neither an address nor a prefix."""
        while node.parent is not None and not node.children and node.address is None:
            parent = node.parent
            del parent.children[node.name]
            if not parent.children:
                parent.children = None
                self.used -= DICT_COST
            self.used -= NODE_COST + len(node.name)
            self.nodes -= 1
            self.version += 1
            node.parent = None
            node = parent

    def forget(self, address: str) -> None:
        """Drop one topic (e.g. after its retained message was cleared and nothing else came)."""
        node = self.topics.pop(address, None)
        if node is not None:
            self._drop(node)

    # ------------------------------------------------------------------ reading

    def find(self, address: str) -> Node | None:
        return self.topics.get(address)

    def rows(self, match: str | None = None, everything: bool = False, auto: int = 10) -> list[tuple[Node, int]]:
        """The visible rows, depth first, children sorted by name: (node, depth).
        Unfolded: what the user opened, else a node with at most `auto` children;
        `everything`: all. With `match` (case-insensitive text in the address) only
        the matches and their prefixes, unfolded."""
        out: list[tuple[Node, int]] = []
        if match:
            needle = match.lower()
            self._matching(self.root, -1, needle, out, False)
            return out
        stack = [(c, 0) for c in reversed(self.root.sorted_children())]
        append, pop = out.append, stack.pop
        while stack:
            node, depth = pop()
            append((node, depth))
            children = node.children
            if children and (everything or node.expanded or (node.expanded is None and len(children) <= auto)):
                stack.extend((children[k], depth + 1) for k in sorted(children, reverse=True))
        return out

    def _matching(self, node: Node, depth: int, needle: str, out: list, inside: bool) -> bool:
        """Append `node` (unless the root) and its matching descendants; True when
        anything under it matched. A node whose own address matches shows whole."""
        if node.parent is not None and not inside:
            own = node.address or self.address_of(node)
            inside = needle in own.lower()
        mark = len(out)
        if node.parent is not None:
            out.append((node, depth))
        found = inside
        for child in node.sorted_children():
            if self._matching(child, depth + 1, needle, out, inside):
                found = True
        if not found and node.parent is not None:
            del out[mark:]
        return found

    def address_of(self, node: Node) -> str:
        return node.address if node.address is not None else self.separator.join(n.name for n in node.path())

    def topic_count(self) -> int:
        return len(self.topics)


def _size(value, depth: int = 0) -> int:
    """The accounted bytes of a message's meta (the objects it holds, roughly)."""
    getsizeof = sys.getsizeof
    if value is None or value is True or value is False:
        return 0
    if isinstance(value, int) and -5 <= value <= 256:  # CPython's shared small ints
        return 0
    if isinstance(value, dict):  # keys count by their length: most are shared literals ("qos")
        if depth > 4:
            return getsizeof(value)
        return getsizeof(value) + sum(len(k) + _size(v, depth + 1) if isinstance(k, str) else _size(k) + _size(v)
                                      for k, v in value.items())
    if isinstance(value, (list, tuple)):
        if depth > 4:
            return getsizeof(value)
        return getsizeof(value) + sum(_size(v, depth + 1) for v in value)
    return getsizeof(value)


# --------------------------------------------------------------------------- one line of a row


def one_line(payload: bytes, limit: int = 200) -> str:
    """A payload on one line: text with its whitespace runs made single spaces and
    control characters shown as '·'; binary as 0x-hex; at most about `limit` chars."""
    if not payload:
        return ""
    head = payload[: limit * 4]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if len(payload) > len(head) and exc.start >= len(head) - 3:
            text = head[: exc.start].decode("utf-8")
        else:
            return "0x" + payload[: max(4, limit // 2)].hex() + ("…" if len(payload) > limit // 2 else "")
    text = " ".join(text.split())
    if not text.isprintable():
        text = _printable(text)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else "·" for c in text)


def shown_name(name: str, depth: int = 1) -> str:
    """A node's name for a screen: control characters as '·'; empty as '/' at the top
    (a STOMP destination '/topic/x', an MQTT topic '/a'), else as ''."""
    if name == "":
        return "/" if depth == 0 else '""'
    return name if name.isprintable() else _printable(name)


def row_summary(node: Node) -> str:
    """An address's key metadata on its row: the last message's, and 'retained' while
    the broker keeps a message for it (in place of that message's own retain flag)."""
    summary = node.ring[-1][2]
    if node.retained:
        words = [w for w in summary.split(" ") if w and w != "retain"]
        summary = " ".join(words + ["retained"])
    return summary


def ago(seconds: float) -> str:
    s = max(0.0, seconds)
    if s < 60:
        return f"{s:.0f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    if s < 86400:
        return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"
    return f"{int(s // 86400)}d{int(s % 86400 // 3600):02d}h"


def rate_text(rate: float) -> str:
    if rate <= 0:
        return "0"
    if rate < 10:
        return f"{rate:.1f}"
    return f"{rate:.0f}"


def clock(ts: float) -> str:
    from datetime import datetime

    return datetime.fromtimestamp(ts).strftime("%H:%M:%S.%f")[:12]


def iso(ts: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ts, timezone.utc).isoformat()


# --------------------------------------------------------------------------- the snapshot


def snapshot_json(tree: Tree, now: float, where: str, protocol: str, match: str | None = None) -> dict:
    """The tree as one JSON document: totals and one object per address (sorted),
    with its last message and its history (oldest first)."""
    from iotctl.message import jsonable

    needle = match.lower() if match else None
    topics = []
    for address in sorted(tree.topics):
        if needle and needle not in address.lower():
            continue
        node = tree.topics[address]
        ts, payload, summary = node.ring[-1]
        text, encoding = _text(payload)
        history = []
        for h_ts, h_payload, h_summary in node.ring:
            h_text, h_encoding = _text(h_payload)
            history.append({"ts": iso(h_ts), "payload": h_text, "encoding": h_encoding, "meta": h_summary})
        item = {"address": address, "count": node.own, "rate": round(node.rate(now), 3), "last": iso(ts),
                "age": round(max(0.0, now - node.last), 3), "retained": node.retained,
                "content_type": node.content_type, "meta": jsonable(node.meta or {}), "payload": text,
                "encoding": encoding, "size": node.size, "history": history}
        if isinstance(payload, Cut):
            item["cut"] = True
        topics.append(item)
    return {"source": where, "protocol": protocol, "separator": tree.separator, "filter": match,
            "elapsed": round(now - tree.started, 3), "messages": tree.root.count, "topic_count": len(tree.topics),
            "evicted_topics": tree.evicted, "memory": {"budget": tree.budget, "used": tree.used},
            "topics": topics}


def _text(payload: bytes) -> tuple[str, str]:
    import base64

    try:
        return payload.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(payload).decode("ascii"), "base64"


def snapshot_text(tree: Tree, now: float, width: int = 100, match: str | None = None) -> list[str]:
    """The whole tree as aligned text lines: a header, then one line per node
    (two spaces of indent a level), its message count, rate, age, and for an address
    the last message's key metadata and payload on one line."""
    rows = tree.rows(match, everything=True)
    header = ("TOPIC", "COUNT", "RATE/S", "AGE", "META", "PAYLOAD")
    cells = []
    for node, depth in rows:
        name = "  " * depth + shown_name(node.name, depth)
        if node.address is not None:
            summary = row_summary(node)
            payload = one_line(node.ring[-1][1], 400)
        else:
            summary = payload = ""
        cells.append((name, str(node.count), rate_text(node.rate(now)), ago(now - node.last), summary, payload))
    widths = [max([len(header[i])] + [len(c[i]) for c in cells]) for i in range(5)]
    out = []
    for c in [header] + cells:
        line = (f"{c[0]:<{widths[0]}}  {c[1]:>{widths[1]}}  {c[2]:>{widths[2]}}  {c[3]:>{widths[3]}}  "
                f"{c[4]:<{widths[4]}}  ")
        room = max(20, width - len(line))
        payload = c[5] if len(c[5]) <= room else c[5][: room - 1] + "…"
        out.append((line + payload).rstrip())
    return out


def totals_line(tree: Tree, now: float) -> str:
    n = len(tree.topics)
    line = (f"{tree.root.count} message(s), {n} topic(s) in {now - tree.started:.1f} s, "
            f"memory {human_size(tree.used)} of {human_size(tree.budget)}")
    if tree.evicted:
        line += f", {tree.evicted} topic(s) evicted"
    if tree.cut:
        line += f", {tree.cut} payload(s) cut to {human_size(tree.max_payload)}"
    return line


# --------------------------------------------------------------------------- running


class Watched:
    """What the view watches: the source (a Receiver, not yet entered), the registry
    entry of its protocol, the source command's built arguments (for the protocol's
    `retained` hooks) and how to name it."""

    def __init__(self, source, protocol, arguments: dict, where: str):
        self.source, self.protocol, self.arguments, self.where = source, protocol, arguments, where

    def retained(self):
        """The protocol's retained-message module (`flag(msg)`, `clear(arguments,
        address, timeout)`), or None."""
        name = getattr(self.protocol, "retained", None)
        if not name:
            return None
        import importlib

        return importlib.import_module(name)


def tree_for(watched: Watched, spec: WatchSpec, retained=None) -> Tree:
    """An empty tree for the watched source: its protocol's separator, the budget,
    the protocol's retained flag."""
    return Tree(watched.protocol.separator, spec.memory, spec.history,
                flag=retained.flag if retained is not None else None)


class _Into(Writer):
    """The receive driver's writer: every message goes into the tree."""

    def __init__(self, tree: Tree):
        super().__init__(None)
        self.write = tree.add

    def flush(self) -> None:
        pass


def snapshot(watched: Watched, spec: WatchSpec, tree: Tree, mode: str) -> None:
    """Receive for -W seconds (5 by default) through the receive driver (reconnects,
    Ctrl-C ends it early), then print the tree once: text, -o json (one document)
    or -o jsonl (one line per address); the totals on stderr."""
    import json
    import shutil

    from iotctl import receive
    from iotctl.settings import status

    seconds = spec.seconds if spec.seconds is not None else 5.0
    with watched.source as source:
        status(f"watching {watched.where} for {seconds:g} s")
        tree.begin()
        receive.run(source, receive.ReceiveSpec(duration=seconds, reconnect=True), "watch", writer=_Into(tree))
    now = _time()
    out = sys.stdout
    if mode in ("json", "jsonl"):
        doc = snapshot_json(tree, now, watched.where, watched.protocol.name, spec.filter)
        if mode == "jsonl":
            for item in doc.pop("topics"):
                out.write(json.dumps(item, ensure_ascii=False) + "\n")
        else:
            out.write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    else:
        width = shutil.get_terminal_size((100, 24)).columns
        out.write("".join(line + "\n" for line in snapshot_text(tree, now, width, spec.filter)))
    out.flush()
    status(totals_line(tree, now))
