"""The `watch` view: `run()` shows the full-screen view when stdin and stdout are
terminals (drawn with rich on the alternate screen), else (or with --snapshot, or
-o json) the snapshot of watching.py. Imported only by `watch` and `mqtt watch`.

On the full screen there are two threads: this one reads keys and draws, at most `fps` frames a second for
arriving messages (a key draws at once, at most 30 frames a second), however fast
messages come; the receiving thread polls the source (which it alone touches until
the view closes), puts every batch into the tree under its lock and acknowledges it,
and connects again with backoff after a lost connection.

Keys: up/down (k/j), PgUp/PgDn, Home/End (g/G) move; right/left unfold/fold (left on
a folded node goes to its parent), Enter or space folds/unfolds (on an address
without children: its history); / filters by text in the address (Enter keeps it,
Esc drops it); p pauses (messages are counted, not recorded); h shows the selected
address's recent messages; c copies its last payload, printed on the terminal when
the view closes; d clears its retained message after y/n (protocols with retained
messages); q or Ctrl-C quits.
"""

from __future__ import annotations

import os
import select
import sys
import threading
import time

from iotctl.errors import ConnectError, ConnectionLost, IotctlError, TimeoutError_, UsageError
from iotctl.watching import Cut, Node, Tree, WatchSpec, Watched, ago, clock, human_size, one_line, rate_text, \
    row_summary, shown_name, snapshot, tree_for

KEY_FPS = 30.0
MESSAGE_SECONDS = 4.0
DETAIL_BYTES = 64 << 10  # the most of a payload the detail pane pretty-prints

KEYS = {
    "\x1b[A": "up", "\x1bOA": "up", "k": "up", "\x1b[B": "down", "\x1bOB": "down", "j": "down",
    "\x1b[C": "right", "\x1bOC": "right", "l": "right", "\x1b[D": "left", "\x1bOD": "left",
    "\x1b[5~": "pgup", "\x1b[6~": "pgdn", "\x1b[H": "home", "\x1bOH": "home", "\x1b[1~": "home", "g": "home",
    "\x1b[F": "end", "\x1bOF": "end", "\x1b[4~": "end", "G": "end",
    "\r": "enter", "\n": "enter", " ": "toggle", "/": "filter", "p": "pause", "h": "history", "c": "copy",
    "d": "clear", "q": "quit", "Q": "quit", "\x03": "quit", "\x1b": "escape",
}


def run(watched: Watched, spec: WatchSpec) -> None:
    """The full-screen view on a terminal, else (or with --snapshot, or -o json|jsonl)
    a snapshot. The payloads copied with c are printed once the screen is restored."""
    from iotctl.settings import current

    settings = current()
    mode = settings.output
    if settings.format is not None or mode in ("raw", "hex", "template"):
        raise UsageError(f"-o {mode if settings.format is None else 'template'}",
                         "watch prints its tree as text or json (-o text|json|jsonl)")
    retained = watched.retained()
    tree = tree_for(watched, spec, retained)
    if spec.snapshot or mode in ("json", "jsonl") or not (sys.stdin.isatty() and sys.stdout.isatty()):
        snapshot(watched, spec, tree, mode)
        return
    source = watched.source
    source.open()  # a refused connection is the usual one-line error, before the screen
    screen = None
    try:
        screen = Screen(tree, source, watched, spec, retained)
        copied = screen.run()
    finally:
        if screen is None or screen.finished:  # else the receiving thread still holds it (a daemon)
            source.close()
    out = sys.stdout.buffer
    for payload in copied:
        out.write(payload + b"\n")
    out.flush()


def tokens(data: str) -> list[str]:
    """Split terminal input into keys: escape sequences (CSI/SS3) whole, else one
    character each."""
    out = []
    i, n = 0, len(data)
    while i < n:
        c = data[i]
        if c == "\x1b" and i + 1 < n and data[i + 1] in "[O":
            j = i + 2
            while j < n and not ("@" <= data[j] <= "~"):
                j += 1
            out.append(data[i: j + 1])
            i = j + 1
        else:
            out.append(c)
            i += 1
    return out


class Screen:
    def __init__(self, tree: Tree, source, watched: Watched, spec: WatchSpec, retained=None, out_fd: int = 1):
        self.tree, self.source, self.watched, self.spec, self.retained = tree, source, watched, spec, retained
        self.out_fd = out_fd
        self.filter = spec.filter
        self.selected: Node | None = None
        self.index = 0
        self.top = 0
        self.paused = False
        self.history = False
        self.copied: list[bytes] = []
        self.prompt: str | None = None  # "filter" or "clear"
        self.typed = ""
        self.before_filter: str | None = None
        self.clearing: str | None = None
        self.message = ""
        self.message_until = 0.0
        self._status = ""
        self.changes = 0  # bumped by what the other threads show (a status, a message)
        self.quit = False
        self.stop = threading.Event()
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.ended = False
        self.page = 10
        self.frames = 0
        self.draw_seconds = 0.0
        self._detail_cache: tuple | None = None

    # ------------------------------------------------------------------ running

    def run(self) -> list[bytes]:
        """Show the view until q; returns the payloads copied with c. Raises what
        ended the source (an IotctlError) after the terminal is restored."""
        import termios
        import tty

        fd = sys.stdin.fileno()
        saved = termios.tcgetattr(fd)
        thread = threading.Thread(target=self._receive, name="iotctl-watch", daemon=True)
        handlers = self._signals()
        try:
            tty.setcbreak(fd)
            self._write("\x1b[?1049h\x1b[?25l\x1b[H\x1b[2J")
            self.tree.begin()
            thread.start()
            self._loop(fd)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop.set()
            self._write("\x1b[?25h\x1b[?1049l")
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
            self._restore(handlers)
            if thread.is_alive():
                thread.join(3.0)
        if self.error is not None:
            raise self.error
        return self.copied

    def _signals(self) -> dict:
        """SIGTERM ends the view like q (the terminal is restored); SIGWINCH (a resized
        terminal) wakes the loop to draw at once."""
        import signal

        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)

        def resized(signum, frame):
            try:
                os.write(self._wake_w, b"w")
            except OSError:
                pass

        def terminated(signum, frame):
            raise KeyboardInterrupt

        return {signal.SIGWINCH: signal.signal(signal.SIGWINCH, resized),
                signal.SIGTERM: signal.signal(signal.SIGTERM, terminated)}

    def _restore(self, handlers: dict) -> None:
        import signal

        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        os.close(self._wake_r)
        os.close(self._wake_w)

    @property
    def status(self) -> str:
        """What the receiving side says in the header (a lost connection)."""
        return self._status

    @status.setter
    def status(self, text: str) -> None:
        self._status = text
        self.changes += 1

    @property
    def finished(self) -> bool:
        """The receiving thread has let go of the source (it may be closed)."""
        return self.done.is_set()

    def _loop(self, fd: int) -> None:
        frame_gap = 1.0 / max(0.5, self.spec.fps)
        until = time.monotonic() + self.spec.seconds if self.spec.seconds else None
        last_draw = 0.0
        keyed = True
        seen = shown = -1
        while not self.quit:
            if self.error is not None:
                return
            now = time.monotonic()
            if until is not None and now >= until:
                return
            if keyed:
                wait = max(0.0, last_draw + 1.0 / KEY_FPS - now)
            else:
                changed = self.tree.root.count != seen or self.changes != shown
                wait = max(0.0, last_draw + (frame_gap if changed else 1.0) - now)
            ready, _, _ = select.select([fd, self._wake_r], [], [], min(wait, 0.25))
            if self._wake_r in ready:  # resized: draw now
                os.read(self._wake_r, 64)
                keyed = True
                last_draw = 0.0
                continue
            if ready:
                try:
                    data = os.read(fd, 4096)
                except OSError:  # the terminal went away (EIO after a hangup)
                    return
                if not data:
                    return
                for key in tokens(data.decode("utf-8", "replace")):
                    self.key(key)
                keyed = True
                continue
            now = time.monotonic()
            if keyed and now >= last_draw + 1.0 / KEY_FPS or now >= last_draw + frame_gap and (
                    self.tree.root.count != seen or self.changes != shown or now >= last_draw + 1.0):
                seen, shown = self.tree.root.count, self.changes
                self.draw()
                last_draw = time.monotonic()
                keyed = False

    def _write(self, text: str) -> None:
        data = text.encode("utf-8")
        while data:
            n = os.write(self.out_fd, data)
            data = data[n:]

    # ------------------------------------------------------------------ receiving (its own thread)

    def _receive(self) -> None:
        source, tree = self.source, self.tree
        try:
            while not self.stop.is_set():
                try:
                    batch = source.poll(0.2)
                except ConnectionLost as lost:
                    if not source.can_reconnect:
                        raise
                    self._reconnect(lost)
                    continue
                if batch is None:
                    self.ended = True
                    self.status = "the source ended"
                    return
                if not batch:
                    continue
                if self.paused:
                    with tree.lock:
                        tree.dropped += len(batch)
                else:
                    with tree.lock:
                        tree.add_all(batch)
                source.ack(batch)
        except BaseException as exc:  # shown once the terminal is back
            self.error = exc
        finally:
            self.done.set()

    def _reconnect(self, lost: ConnectionLost) -> None:
        from iotctl.receive import BACKOFF

        why = lost.why or lost.what
        attempt = 0
        while not self.stop.is_set():
            delay = BACKOFF[min(attempt, len(BACKOFF) - 1)]
            self.status = f"{why}; reconnecting in {delay:g} s"
            if self.stop.wait(delay):
                return
            attempt += 1
            try:
                self.source.reconnect()
            except IotctlError as exc:
                if exc.code not in (ConnectError.code, TimeoutError_.code):
                    raise
                why = exc.why or exc.what
                continue
            self.status = ""
            self.say("reconnected")
            return

    # ------------------------------------------------------------------ keys

    def say(self, text: str) -> None:
        self.message = text
        self.message_until = time.monotonic() + MESSAGE_SECONDS
        self.changes += 1

    def key(self, key: str) -> None:
        if self.prompt == "filter":
            return self._filter_key(key)
        if self.prompt == "clear":
            return self._confirm_key(key)
        action = KEYS.get(key)
        if action is None:
            return
        if action == "quit":
            self.quit = True
        elif action in ("up", "down", "pgup", "pgdn", "home", "end"):
            step = {"up": -1, "down": 1, "pgup": -self.page, "pgdn": self.page, "home": -10 ** 9, "end": 10 ** 9}
            self._move(step[action])
        elif action in ("right", "left", "toggle", "enter"):
            self._fold(action)
        elif action == "filter":
            self.prompt, self.before_filter, self.typed = "filter", self.filter, self.filter or ""
        elif action == "escape":
            if self.history:
                self.history = False
            elif self.filter:
                self.filter = None
                self.say("filter cleared")
        elif action == "pause":
            self.paused = not self.paused
            self.say("paused: messages are counted, not recorded" if self.paused else "recording again")
        elif action == "history":
            self.history = not self.history
        elif action == "copy":
            self._copy()
        elif action == "clear":
            self._ask_clear()

    def _rows(self) -> list[tuple[Node, int]]:
        return self.tree.rows(self.filter)

    def _move(self, step: int) -> None:
        with self.tree.lock:
            rows = self._rows()
            if not rows:
                return
            i = self._locate(rows)
            i = max(0, min(len(rows) - 1, i + step))
            self.index, self.selected = i, rows[i][0]

    def _locate(self, rows: list[tuple[Node, int]]) -> int:
        """The selected node's row now (it may have moved, been filtered out or evicted)."""
        selected = self.selected
        if selected is not None:
            i = self.index
            if i < len(rows) and rows[i][0] is selected:
                return i
            for j, (node, _) in enumerate(rows):
                if node is selected:
                    return j
        return max(0, min(self.index, len(rows) - 1))

    def _fold(self, action: str) -> None:
        with self.tree.lock:
            rows = self._rows()
            if not rows:
                return
            i = self._locate(rows)
            node = rows[i][0]
            self.index, self.selected = i, node
            opened = self._is_open(node)
            if not node.children:
                if action == "left" and node.parent is not None and node.parent.parent is not None:
                    self.selected = node.parent
                elif action in ("enter", "toggle"):
                    self.history = not self.history
                return
            if action == "right":
                node.expanded = True
            elif action == "left":
                if opened:
                    node.expanded = False
                elif node.parent is not None and node.parent.parent is not None:
                    self.selected = node.parent
            else:
                node.expanded = not opened

    def _is_open(self, node: Node) -> bool:
        if self.filter:
            return True
        if node.expanded is not None:
            return node.expanded
        return bool(node.children) and len(node.children) <= 10

    def _filter_key(self, key: str) -> None:
        if key in ("\r", "\n"):
            self.prompt = None
            self.filter = self.typed or None
        elif key == "\x1b":
            self.prompt = None
            self.filter = self.before_filter
        elif key in ("\x7f", "\x08"):
            self.typed = self.typed[:-1]
            self.filter = self.typed or None
        elif key == "\x15":
            self.typed = ""
            self.filter = None
        elif key == "\x03":
            self.quit = True
        elif len(key) == 1 and key.isprintable():
            self.typed += key
            self.filter = self.typed
        self.index, self.top = 0, 0

    def _current(self) -> Node | None:
        rows = self._rows()
        if not rows:
            return None
        i = self._locate(rows)
        self.index, self.selected = i, rows[i][0]
        return rows[i][0]

    def _copy(self) -> None:
        with self.tree.lock:
            node = self._current()
            if node is None or node.address is None:
                self.say("select an address with a message to copy its payload")
                return
            payload = node.ring[-1][1]
            address = node.address
        self.copied.append(bytes(payload))
        self.say(f"copied {len(payload)} B of {shown_name(address)}: printed when the view closes")

    def _ask_clear(self) -> None:
        if self.retained is None:
            self.say(f"{self.watched.protocol.name} has no retained messages")
            return
        with self.tree.lock:
            node = self._current()
            address = node.address if node is not None else None
            retained = node is not None and node.retained
        if address is None:
            self.say("select an address to clear its retained message")
        elif not retained:
            self.say(f"{shown_name(address)} has no retained message")
        elif self.clearing is not None:
            self.say(f"still clearing {shown_name(self.clearing)}")
        else:
            self.prompt, self.typed = "clear", address

    def _confirm_key(self, key: str) -> None:
        address = self.typed
        self.prompt, self.typed = None, ""
        if key not in ("y", "Y"):
            self.say("not cleared")
            return
        self.clearing = address
        self.say(f"clearing the retained message of {shown_name(address)}...")
        threading.Thread(target=self._clear, args=(address,), name="iotctl-watch-clear", daemon=True).start()

    def _clear(self, address: str) -> None:
        try:
            self.retained.clear(self.watched.arguments, address, 10.0)
        except Exception as exc:  # shown, the view goes on
            why = getattr(exc, "why", None) or getattr(exc, "what", None) or str(exc)
            self.say(f"clearing {shown_name(address)} failed: {why}")
        else:
            with self.tree.lock:
                node = self.tree.find(address)
                if node is not None:
                    node.retained = False
            self.say(f"cleared the retained message of {shown_name(address)}")
        finally:
            self.clearing = None

    # ------------------------------------------------------------------ drawing

    def draw(self) -> None:
        started = time.perf_counter()
        width, height = _size(self.out_fd)
        self._write(self.frame(width, height))
        self.frames += 1
        self.draw_seconds += time.perf_counter() - started

    def frame(self, width: int, height: int) -> str:
        """One whole screen as terminal output (home, rows, clear to the end)."""
        from rich.text import Text

        from iotctl.output import console

        width, height = max(20, width), max(6, height)
        side = width >= 120
        body = height - 2
        if side:
            tree_w = width * 11 // 20
            detail_w = width - tree_w - 1
            tree_h = detail_h = body
        else:
            tree_w = detail_w = width
            detail_h = max(1, min(body * 2 // 5, body - 3))
            tree_h = body - detail_h - 1
        self.page = max(1, tree_h - 1)
        now = time.time()
        with self.tree.lock:
            header = self._header(now)
            tree_lines = self._tree_lines(now, tree_w, tree_h)
            detail = self._detail_data(now)
        detail_lines = self._detail_lines(detail, detail_w, detail_h)
        rows = [header]
        if side:
            bar = Text("│", style="dim")
            for i in range(body):
                row = tree_lines[i].copy() if i < len(tree_lines) else Text()
                row.pad_right(tree_w - row.cell_len)
                row.append_text(bar)
                if i < len(detail_lines):
                    row.append_text(detail_lines[i])
                rows.append(row)
        else:
            rows += tree_lines + [Text()] * (tree_h - len(tree_lines))
            rows.append(Text("─" * width, style="dim"))
            rows += detail_lines + [Text()] * (detail_h - len(detail_lines))
        rows.append(self._footer(width))
        for row in rows:
            row.no_wrap = True
            row.overflow = "crop"
            row.truncate(width, overflow="crop")
        screen = console.stdout()
        screen.width = width  # the terminal's, whatever COLUMNS says (nothing else prints to stdout meanwhile)
        with screen.capture() as cap:
            screen.print(Text("\n").join(rows), width=width, no_wrap=True, overflow="crop", crop=False, end="",
                         soft_wrap=False, highlight=False, markup=False)
        text = cap.get()
        return "\x1b[?2026h\x1b[H" + text.replace("\n", "\x1b[K\r\n") + "\x1b[K\x1b[J\x1b[?2026l"

    def _header(self, now: float):
        """What must be seen first (paused, a lost connection), the counters, then the
        source's name, which a narrow screen cuts."""
        from rich.text import Text

        tree = self.tree
        text = Text(style="reverse")
        text.append(" iotctl watch ", style="bold reverse")
        if self.paused:
            text.append(f" PAUSED, {tree.dropped:,} not recorded ", style="bold reverse")
        if self.status:
            text.append(f" {self.status} ", style="bold reverse")
        text.append(f" {len(tree.topics):,} topics  {tree.root.count:,} msgs  {rate_text(tree.root.rate(now))}/s"
                    f"  mem {human_size(tree.used)}/{human_size(tree.budget)}")
        if tree.evicted:
            text.append(f"  evicted {tree.evicted:,}")
        if tree.dropped and not self.paused:
            text.append(f"  {tree.dropped:,} not recorded")
        if self.filter:
            text.append(f"  filter '{_clean(self.filter)}'")
        text.append(f"  {self.watched.where} ")
        return text

    def _tree_lines(self, now: float, width: int, height: int):
        from rich.text import Text

        rows = self._rows()
        if height <= 0:
            return []
        if not rows:
            waiting = "no address matches the filter" if self.filter else "waiting for messages..."
            return [Text(f"  {waiting}", style="dim")]
        i = self._locate(rows)
        self.index, self.selected = i, rows[i][0]
        if i < self.top:
            self.top = i
        elif i >= self.top + height:
            self.top = i - height + 1
        self.top = max(0, min(self.top, max(0, len(rows) - height)))
        shown = rows[self.top: self.top + height]
        cells = []
        for node, depth in shown:
            if node.children:
                glyph = "▾ " if self._is_open(node) else "▸ "
            else:
                glyph = "  "
            name = "  " * depth + glyph + shown_name(node.name, depth)
            if node.address is not None:
                summary = row_summary(node)
                line = one_line(node.ring[-1][1], width)
            else:
                summary = line = ""
            cells.append((node, name, _count(node.count), rate_text(node.rate(now)), ago(now - node.last), summary,
                          line))
        name_w = min(max(len(c[1]) for c in cells), max(12, width * 2 // 5))
        meta_w = min(max(len(c[5]) for c in cells), 16 if width < 100 else 24)
        lines = []
        for node, name, count, rate, age, summary, payload in cells:
            selected = node is self.selected
            text = Text(style="reverse" if selected else "")
            text.append("›" if selected else " ")
            if len(name) > name_w:
                name = name[: name_w - 1] + "…"
            text.append(f"{name:<{name_w}}", style="bold" if node.address is not None else "")
            text.append(f" {count:>6} {rate:>6}/s {age:>5} ", style="dim" if not selected else "")
            if meta_w:
                text.append(f"{summary[:meta_w]:<{meta_w}} ", style="yellow" if not selected else "")
            text.append(payload)
            lines.append(text)
        return lines

    def _detail_data(self, now: float):
        """What the detail pane shows, copied under the lock (the receiving thread
        changes the nodes)."""
        node = self.selected
        if node is None or (node.parent is None and node is not self.tree.root):
            return None
        tree = self.tree
        address = tree.address_of(node)
        data = {"address": address, "count": node.count, "rate": node.rate(now), "age": now - node.last,
                "children": len(node.children) if node.children else 0, "topic": node.address is not None}
        if node.address is not None:
            data.update(own=node.own, ring=list(node.ring), meta=dict(node.meta or {}),
                        content_type=node.content_type, size=node.size, retained=node.retained)
        return data

    def _detail_lines(self, data, width: int, height: int):
        from rich.text import Text

        if data is None or height <= 0:
            return []
        lines = [Text(shown_name(data["address"]), style="bold cyan")]
        facts = f"{data['count']:,} msgs  {rate_text(data['rate'])}/s  last {ago(data['age'])} ago"
        if data["children"]:
            facts += f"  {data['children']:,} below"
        if not data["topic"]:
            lines.append(Text(facts, style="dim"))
            return lines[:height]
        ring = data["ring"]
        ts, payload, summary = ring[-1]
        facts += f"  {data['size']:,} B"
        if data["retained"]:
            facts += "  retained"
        if data["content_type"]:
            facts += f"  {data['content_type']}"
        lines.append(Text(facts, style="dim"))
        if self.history:
            lines.append(Text(f"history, newest first ({len(ring)} kept):", style="bold"))
            for h_ts, h_payload, h_summary in reversed(ring):
                if len(lines) >= height:
                    break
                row = Text(clock(h_ts) + " ", style="dim")
                if h_summary:
                    row.append(h_summary + " ", style="yellow")
                row.append(one_line(h_payload, width))
                lines.append(row)
            return lines[:height]
        for key, value in data["meta"].items():
            if value in (None, {}, [], ""):
                continue
            lines.append(Text.assemble((f"{key}: ", "dim"), _short(value)))
            if len(lines) >= height:
                return lines[:height]
        lines.append(Text(f"{clock(ts)}  payload:", style="dim"))
        lines += self._payload_lines(payload, data["content_type"], width, height - len(lines))
        return lines[:height]

    def _payload_lines(self, payload: bytes, content_type, width: int, room: int):
        """The payload pretty-printed (JSON indented, CBOR, hex dump) in `room` lines;
        cached while the selected payload and the pane stay the same."""
        from rich.text import Text

        if room <= 0:
            return []
        key = (id(payload), len(payload), content_type, width, room)
        cache = self._detail_cache
        if cache is not None and cache[0] == key and cache[1] is payload:
            return cache[2]
        from iotctl.output import console
        from iotctl.output.pretty import render_payload

        screen = console.stdout()
        shown = payload[:DETAIL_BYTES]
        renderable = render_payload(bytes(shown), content_type)
        options = screen.options.update(width=max(10, width), no_wrap=False, height=None)
        out = []
        for segments in screen.render_lines(renderable, options, pad=False, new_lines=False):
            line = Text()
            for seg in segments:
                if not seg.control:
                    line.append(_clean(seg.text), seg.style)
            out.append(line)
            if len(out) >= room:
                break
        if isinstance(payload, Cut) or len(payload) > len(shown):
            size = payload.size if isinstance(payload, Cut) else len(payload)
            note = Text(f"(first {len(shown):,} of {size:,} B)", style="dim")
            out = out[: room - 1] + [note]
        self._detail_cache = (key, payload, out)
        return out

    def _footer(self, width: int):
        from rich.text import Text

        if self.prompt == "filter":
            return Text.assemble(("filter: ", "bold"), self.typed, ("█", ""), ("   Enter keeps, Esc drops", "dim"))
        if self.prompt == "clear":
            ask, end = "clear the retained message of ", "? (y/n)"
            address = _middle(shown_name(self.typed), width - len(ask) - len(end))
            return Text.assemble((ask, "bold"), (address, "bold cyan"), (end, "bold"))
        if self.message and time.monotonic() < self.message_until:
            return Text(_middle(self.message, width), style="bold")
        help = "↑↓ move  ←→ fold  / filter  p pause  h history  c copy"
        if self.retained is not None:
            help += "  d clear retained"
        help += "  q quit"
        return Text(help, style="dim")


def _middle(text: str, room: int) -> str:
    """`text` cut in its middle to `room` characters (the two ends say most)."""
    if len(text) <= room:
        return text
    room = max(room, 5)
    keep = room - 1
    return text[: keep - keep // 2] + "…" + text[len(text) - keep // 2:]


def _count(n: int) -> str:
    if n < 100_000:
        return str(n)
    if n < 10_000_000:
        return f"{n / 1000:.0f}k"
    return f"{n / 1_000_000:.0f}M"


def _clean(text: str) -> str:
    return text if text.isprintable() else "".join(c if c.isprintable() else "·" for c in text)


def _short(value) -> str:
    import json

    from iotctl.message import jsonable

    value = jsonable(value)
    if isinstance(value, str):
        return _clean(value)
    return _clean(json.dumps(value, ensure_ascii=False))


def _size(fd: int) -> tuple[int, int]:
    try:
        size = os.get_terminal_size(fd)
        return size.columns, size.lines
    except OSError:
        return 80, 24
