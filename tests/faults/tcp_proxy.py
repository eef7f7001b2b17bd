"""A TCP proxy between SOPHIE and a real redis-server that breaks the link on cue.

It reads the client side of the Redis protocol (RESP arrays, as redis-py and arq send
them, and inline commands), so a fault lands at an exact command rather than at a
moment in time::

    proxy = RedisProxy(server.port).start()          # REDIS_URL = proxy.url
    proxy.cut_at(r"^EVALSHA \\S+ 1 sophie:plan:\\S+ dispatching ")   # before it runs
    proxy.cut_at(r"^HSET sophie:plan:\\S+ card_ts ", when="after")    # it ran; reply lost
    rule = proxy.hold_at(r"^LPUSH sophie:memory:")  # the sender waits; kill it, then
    proxy.release(rule, forward=False)              # ... drop what it was sending
    proxy.on_command(r"^EXEC$", server.kill)        # kill the server at that command
    proxy.cut_all(); proxy.refuse(2.0)              # every link, and new ones for 2 s

A command is matched by a regular expression (``re.search``) over its text: the
command name in capitals, then its arguments decoded as Latin-1, separated by
single spaces. ``nth`` skips the first ``nth - 1`` matching commands; ``times``
is how many matching commands the rule acts on from then on.

``when="before"``: the command never reaches the server (what was sent before it
on the same connection did; a transaction it was part of is discarded).
``when="after"``: the server runs it (inside MULTI: its EXEC), and the client never
sees the reply. A cut closes both sides with a reset; the client gets a
connection error on its pending command, exactly as when a network path breaks.

The proxy runs its own event loop on a thread, so a test (or an app under test on
the test's loop) can block or be killed without stalling it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

When = Literal["before", "after"]
Kind = Literal["cut", "hold", "call"]

# How long an "after" fault waits for the server's reply (proof that it ran the command).
REPLY_WAIT_SECONDS = 2.0
LOG_LENGTH = 5000


class RespError(ValueError):
    """The client sent something that is not the Redis protocol."""


def parse_command(buf: bytes | bytearray) -> tuple[list[bytes], int] | None:
    """The first complete command in ``buf``: (arguments, bytes used), or None if incomplete."""
    if not buf:
        return None
    if buf[:1] != b"*":  # an inline command: one line of words
        eol = buf.find(b"\n")
        if eol < 0:
            return None
        return bytes(buf[:eol]).strip().split(), eol + 1
    eol = buf.find(b"\r\n")
    if eol < 0:
        return None
    try:
        count = int(buf[1:eol])
    except ValueError as exc:
        raise RespError(f"bad array header {bytes(buf[:eol])!r}") from exc
    pos = eol + 2
    args: list[bytes] = []
    for _ in range(max(count, 0)):
        if pos >= len(buf):
            return None
        if buf[pos : pos + 1] != b"$":
            raise RespError(f"expected a bulk string at {pos}, got {bytes(buf[pos : pos + 1])!r}")
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(buf[pos + 1 : eol])
        begin = eol + 2
        end = begin + size
        if end + 2 > len(buf):
            return None
        args.append(bytes(buf[begin:end]))
        pos = end + 2
    return args, pos


def command_text(args: list[bytes]) -> str:
    """What rules match against: ``NAME arg1 arg2 …`` (name upper-cased, Latin-1)."""
    if not args:
        return ""
    return " ".join([args[0].decode("latin-1").upper(), *(a.decode("latin-1") for a in args[1:])])


@dataclass
class Rule:
    """One fault: where it lands, what it does, and how often it has."""

    pattern: re.Pattern[str]
    kind: Kind
    when: When
    nth: int = 1
    times: int = 1
    action: Callable[[], object] | None = None
    seen: int = 0  # matching commands seen (acted on or not)
    hits: int = 0  # matching commands acted on
    matched: list[str] = field(default_factory=list)  # the text of those (truncated)
    fired: threading.Event = field(default_factory=threading.Event)
    # Held links wait on these (one per held connection), on the proxy's loop.
    _waiting: list[asyncio.Future[bool]] = field(default_factory=list)

    async def landed(self, within: float = 30.0) -> bool:
        """Wait (without blocking the caller's loop) until the rule has acted once."""
        deadline = time.monotonic() + within
        # Short waits in a thread: an abandoned wait never holds a thread for long.
        while not await asyncio.to_thread(self.fired.wait, 0.1):
            if time.monotonic() > deadline:
                return False
        return True

    @property
    def holding(self) -> int:
        return sum(1 for f in self._waiting if not f.done())

    def _take(self, text: str) -> bool:
        if not self.pattern.search(text):
            return False
        self.seen += 1
        if self.seen < self.nth or self.hits >= self.times:
            return False
        self.hits += 1
        self.matched.append(text[:300])
        self.fired.set()
        return True


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a broken path or a dead peer does."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Link:
    """One client connection and its upstream connection."""

    def __init__(
        self,
        proxy: RedisProxy,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.proxy = proxy
        self.cr, self.cw = client
        self.ur, self.uw = upstream
        self.buffer = bytearray()
        self.intercept: bytearray | None = None  # replies withheld from the client
        self.reply_came = asyncio.Event()
        self.closed = False
        self.multi = False  # between MULTI and EXEC / DISCARD
        self.deferred: Rule | None = None  # an "after" fault waiting for its EXEC

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            _reset(self.cw)
            _reset(self.uw)

    async def run(self) -> None:
        up = asyncio.ensure_future(self._server_to_client())
        try:
            await self._client_to_server()
        except (OSError, RespError, asyncio.IncompleteReadError):
            pass
        finally:
            self.close()
            up.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await up

    async def _server_to_client(self) -> None:
        try:
            while True:
                data = await self.ur.read(65536)
                if not data:
                    break
                if self.intercept is not None:
                    self.intercept += data
                    self.reply_came.set()
                    continue
                self.cw.write(data)
                await self.cw.drain()
        except OSError:
            pass
        self.close()

    async def _send(self, data: bytes | bytearray) -> None:
        if data:
            self.uw.write(bytes(data))
            await self.uw.drain()

    async def _client_to_server(self) -> None:
        while not self.closed:
            data = await self.cr.read(65536)
            if not data:
                return
            self.buffer += data
            out = bytearray()
            while (parsed := parse_command(self.buffer)) is not None:
                args, used = parsed
                raw = bytes(self.buffer[:used])
                del self.buffer[:used]
                rule = self._transaction(args, self.proxy._rule_for(command_text(args)))
                if rule is None:
                    out += raw
                    continue
                if rule.when == "before":
                    await self._send(out)
                    out.clear()
                    if not await self._fault(rule, pending=raw):
                        return
                else:
                    await self._send(out + raw)
                    out.clear()
                    self.reply_came.clear()
                    self.intercept = bytearray()
                    if not await self._fault(rule, pending=b""):
                        return
            await self._send(out)

    def _transaction(self, args: list[bytes], rule: Rule | None) -> Rule | None:
        """Inside MULTI a command only queues: an "after" fault lands after its EXEC."""
        name = args[0].upper() if args else b""
        if name == b"MULTI":
            self.multi = True
        elif name in (b"EXEC", b"DISCARD"):
            self.multi = False
            deferred, self.deferred = self.deferred, None
            if rule is None and name == b"EXEC":
                return deferred
        elif self.multi and rule is not None and rule.when == "after":
            self.deferred = self.deferred or rule
            return None
        return rule

    async def _fault(self, rule: Rule, pending: bytes) -> bool:
        """Apply ``rule``; True when the link carries on (a hold released forward)."""
        if rule.when == "after":
            # The reply proves the server ran the command (it answers in order).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.reply_came.wait(), REPLY_WAIT_SECONDS)
            await asyncio.sleep(0.05)
        if rule.kind == "call":
            assert rule.action is not None
            try:
                rule.action()
            finally:
                self.close()
            return False
        if rule.kind == "cut":
            self.close()
            return False
        return await self._hold(rule, pending)

    async def _hold(self, rule: Rule, pending: bytes) -> bool:
        decision: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        rule._waiting.append(decision)
        self.proxy._held.add(decision)
        try:
            while True:
                # Keep reading the client while holding, to notice it die (SIGKILL).
                read = asyncio.ensure_future(self.cr.read(65536))
                waiting: set[asyncio.Future[Any]] = {decision, read}
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if read in done:
                    data = read.result()
                    if not data:  # the client is gone: what it was sending never arrives
                        self.close()
                        return False
                    self.buffer += data
                    if decision not in done:
                        continue
                else:
                    read.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await read
                if not decision.result():
                    self.close()
                    return False
                # Released forward: the held command (or the withheld replies) go on.
                if self.intercept is not None:
                    replies, self.intercept = self.intercept, None
                    self.cw.write(bytes(replies))
                    await self.cw.drain()
                await self._send(pending)
                return True
        finally:
            self.proxy._held.discard(decision)


class RedisProxy:
    """A fault-injecting TCP proxy in front of ``upstream_host:upstream_port``."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self.connections = 0  # accepted from clients
        self.refused = 0  # turned away by refuse() or because the server was down
        self.log: deque[str] = deque(maxlen=LOG_LENGTH)  # every command seen (truncated)
        self._rules: list[Rule] = []
        self._links: set[_Link] = set()
        self._held: set[asyncio.Future[bool]] = set()
        self._refuse_until = 0.0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="redis-proxy", daemon=True)

    # --- lifecycle ---------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisProxy:
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("the Redis proxy did not start")
        return self

    def stop(self) -> None:
        async def _stop() -> None:
            if self._server is not None:
                self._server.close()
            for link in list(self._links):
                link.close()
            for decision in list(self._held):
                if not decision.done():
                    decision.set_result(False)
            # Links end once their sockets are closed; give them a moment to unwind.
            others = {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}
            if others:
                await asyncio.wait(others, timeout=2)

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(_stop(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._accept, "127.0.0.1", 0)
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        self._started.set()
        self._loop.run_forever()

    # --- faults (call from any thread) -------------------------------------------

    def cut_at(self, pattern: str, *, when: When = "before", nth: int = 1, times: int = 1) -> Rule:
        """Reset the connection that sends a matching command (before or after it runs)."""
        return self._add(Rule(re.compile(pattern), "cut", when, nth, times))

    def hold_at(self, pattern: str, *, when: When = "before", nth: int = 1, times: int = 1) -> Rule:
        """Stall the connection at a matching command until :meth:`release` (or its
        client dies): the sender waits at that exact step, e.g. to be SIGKILLed there."""
        return self._add(Rule(re.compile(pattern), "hold", when, nth, times))

    def on_command(
        self,
        pattern: str,
        action: Callable[[], object],
        *,
        when: When = "before",
        nth: int = 1,
        times: int = 1,
    ) -> Rule:
        """Run ``action`` (e.g. ``RedisServer.kill``) at a matching command, then cut."""
        return self._add(Rule(re.compile(pattern), "call", when, nth, times, action))

    def release(self, rule: Rule, forward: bool = True) -> None:
        """Let held connections go on (``forward``) or cut them."""

        def _release() -> None:
            for decision in rule._waiting:
                if not decision.done():
                    decision.set_result(forward)

        self._loop.call_soon_threadsafe(_release)

    def remove(self, rule: Rule) -> None:
        with self._lock:
            if rule in self._rules:
                self._rules.remove(rule)

    def clear(self) -> None:
        """Remove every rule and let held connections go on."""
        with self._lock:
            rules, self._rules = self._rules, []
        for rule in rules:
            self.release(rule, forward=True)

    def cut_all(self) -> int:
        """Reset every open connection now; returns how many there were."""

        async def _cut() -> int:
            links = list(self._links)
            for link in links:
                link.close()
            return len(links)

        return int(asyncio.run_coroutine_threadsafe(_cut(), self._loop).result(10))

    def refuse(self, seconds: float) -> None:
        """Reset new connections for ``seconds`` (existing ones are untouched)."""
        with self._lock:
            self._refuse_until = time.monotonic() + seconds

    def commands(self, pattern: str = "") -> list[str]:
        """The commands seen so far (truncated), optionally only those matching."""
        found = re.compile(pattern)
        with self._lock:
            return [c for c in self.log if found.search(c)]

    # --- plumbing ----------------------------------------------------------------

    def _add(self, rule: Rule) -> Rule:
        if rule.nth < 1 or rule.times < 1:
            raise ValueError("nth and times start at 1")
        with self._lock:
            self._rules.append(rule)
        return rule

    def _rule_for(self, text: str) -> Rule | None:
        with self._lock:
            self.log.append(text[:300])
            for rule in self._rules:
                if rule._take(text):
                    return rule
        return None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._lock:
            refusing = time.monotonic() < self._refuse_until
        if refusing:
            self.refused += 1
            _reset(writer)
            return
        try:
            upstream = await asyncio.wait_for(asyncio.open_connection(*self.upstream), 5)
        except (OSError, TimeoutError):
            self.refused += 1  # the server is down: so is the proxy, to the client
            _reset(writer)
            return
        self.connections += 1
        link = _Link(self, (reader, writer), upstream)
        self._links.add(link)
        try:
            await link.run()
        finally:
            self._links.discard(link)
