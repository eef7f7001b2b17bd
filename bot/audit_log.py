"""The audit log in Redis: keyed appends, signed checkpoints, verification, export.

Layout (the rules are in :mod:`roles.audit_chain`):

- ``sophie:audit``: a stream; each entry has ``body``, ``prev``, ``hash``, ``mac``, ``k``;
- ``sophie:audit:head``: a hash ``seq``, ``hash``, ``mac``, ``k``, ``id`` (the newest entry);
- ``sophie:audit:checkpoints``: a list of signed checkpoint envelopes (JSON), in order;
- ``$SOPHIE_DATA_DIR/audit-checkpoints.jsonl``: every checkpoint this host took, appended,
  so a log (and its checkpoints) deleted from Redis is still found missing.

The MAC key is derived from the signing seed and never sent to Redis: entries are
sealed here and appended by a Lua script that accepts them only if the head is
still the one they were sealed after (one round trip; on a race it answers the
current head and we seal again).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import redis.asyncio as aioredis
from nacl.signing import SigningKey

from bot.signer import KeyRing
from roles.attestation import EnvelopeError, sign_statement
from roles.audit_chain import (
    EXPORT_FORMAT,
    GENESIS,
    Checkpoint,
    CheckpointSet,
    Entry,
    Head,
    Replay,
    Report,
    StoredPlan,
    audit_key,
    checkpoint_statement,
    finish,
    open_checkpoint,
    open_checkpoints,
    seal,
)

log = logging.getLogger("sophie.audit")

STREAM = "sophie:audit"
HEAD = "sophie:audit:head"
CHECKPOINTS = "sophie:audit:checkpoints"
CHECKPOINT_FILE = "audit-checkpoints.jsonl"
PLAN_PREFIX = "sophie:plan:"
BATCH = 1000
MAX_APPEND_ATTEMPTS = 100
# A status change is written to the plan first and audited just after: a plan that
# disagrees with the log is looked at again before it is reported.
SETTLE_ROUNDS = 3
SETTLE_SECONDS = 0.2
_RACY = {"plan-status", "plan-missing", "plan-unlogged"}

_APPEND = """
local t = redis.call('TYPE', KEYS[2])['ok']
if t ~= 'hash' and t ~= 'none' then
  return redis.error_reply('sophie:audit:head is a ' .. t .. ', not a hash: an audit log ' ..
    'from before the keyed chain. Export it (XRANGE sophie:audit), then delete ' ..
    'sophie:audit and sophie:audit:head')
end
local cur = redis.call('HMGET', KEYS[2], 'seq', 'hash')
local seq = cur[1] or '0'
local h = cur[2] or ''
if seq ~= ARGV[1] or h ~= ARGV[2] then return {0, seq, h} end
local id = redis.call('XADD', KEYS[1], '*', 'body', ARGV[3], 'prev', ARGV[2],
  'hash', ARGV[4], 'mac', ARGV[5], 'k', ARGV[6])
redis.call('HSET', KEYS[2], 'seq', ARGV[7], 'hash', ARGV[4], 'mac', ARGV[8], 'k', ARGV[6],
  'id', id)
return {1, id, ''}
"""

_STORE_CHECKPOINT = """
if redis.call('LLEN', KEYS[1]) ~= tonumber(ARGV[1]) then return 0 end
redis.call('RPUSH', KEYS[1], ARGV[2])
return 1
"""


class AuditBroken(RuntimeError):
    """The log does not verify, so no checkpoint is signed over it."""


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _fields(raw: dict[Any, Any]) -> dict[str, str]:
    return {_s(k): _s(v) for k, v in raw.items()}


def _json_or_raw(raw: Any) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return _s(raw)  # open_checkpoint reports it as malformed


def _append_line(path: Path, line: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_lines(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [line for line in path.read_text().splitlines() if line.strip()]


class AuditLog:
    """Implements the audit half of :class:`roles.ports.PlanStore` (``store.audit``)."""

    def __init__(
        self,
        client: aioredis.Redis,
        keyring: KeyRing,
        data_dir: Path | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.r = client
        self.keyring = keyring
        self.key = audit_key(bytes(keyring.signing))
        self.key_id = keyring.keyid
        self.file = data_dir / CHECKPOINT_FILE if data_dir is not None else None
        self.clock = clock
        self._append = client.register_script(_APPEND)
        self._store_checkpoint = client.register_script(_STORE_CHECKPOINT)
        self._lock = asyncio.Lock()
        self._head: tuple[int, str] = (0, GENESIS)  # last head seen; a guess, Lua checks it

    @classmethod
    def ephemeral(cls, client: aioredis.Redis) -> AuditLog:
        """For stores built without the bot's key (tests, tools): appends work, but
        under a throw-away key, so `sophie audit verify` with the real key reports them."""
        log.warning(
            "audit log without the bot's signing key: entries get a throw-away MAC key "
            "and will not verify later (pass audit_log=AuditLog(client, keyring, data_dir))"
        )
        return cls(client, KeyRing(SigningKey.generate(), {}))

    # -- append ----------------------------------------------------------------

    async def append(self, kind: str, plan_id: str, actor: str, detail: dict[str, Any]) -> str:
        """Seal an entry after the head and append it atomically; returns its hash."""
        async with self._lock:
            seq, prev = self._head
            for _ in range(MAX_APPEND_ATTEMPTS):
                sealed = seal(seq, prev, kind, plan_id, actor, detail, self.clock(), self.key)
                result = await self._append(
                    keys=[STREAM, HEAD],
                    args=[
                        str(seq),
                        prev,
                        sealed.body,
                        sealed.hash,
                        sealed.mac,
                        self.key_id,
                        str(sealed.seq),
                        sealed.head_mac,
                    ],
                )
                if int(result[0]) == 1:
                    self._head = (sealed.seq, sealed.hash)
                    return sealed.hash
                try:  # another writer got there first: seal again after the real head
                    seq, prev = int(_s(result[1])), _s(result[2])
                except ValueError as exc:
                    raise AuditBroken(f"the audit head's seq is {_s(result[1])!r}") from exc
        raise AuditBroken(f"could not append to the audit log in {MAX_APPEND_ATTEMPTS} tries")

    # -- reading -----------------------------------------------------------------

    async def _entries(self, after: str = "-", limit: int | None = None) -> AsyncIterator[Entry]:
        """Entries in order, after stream id ``after`` (exclusive), at most ``limit``."""
        low, got = after if after == "-" else "(" + after, 0
        while limit is None or got < limit:
            want = BATCH if limit is None else min(BATCH, limit - got)
            batch = await self.r.xrange(STREAM, min=low, count=want)
            if not batch:
                return
            for entry_id, fields in batch:
                yield Entry.from_fields(_s(entry_id), _fields(fields))
            got += len(batch)
            low = "(" + _s(batch[-1][0])

    async def _snapshot(self) -> tuple[Head | None, int]:
        """The head and the stream's length at one instant (appends move both at once)."""
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.hgetall(HEAD)
            pipe.xlen(STREAM)
            raw, length = await pipe.execute()
        return (Head.from_fields(_fields(raw)) if raw else None), int(length)

    async def _stored_checkpoints(self) -> list[Any]:
        raw: list[Any] = await cast(Awaitable[list[Any]], self.r.lrange(CHECKPOINTS, 0, -1))
        return [_json_or_raw(item) for item in raw]

    async def _file_checkpoints(self) -> list[Any]:
        if self.file is None:
            return []
        return [_json_or_raw(line) for line in await asyncio.to_thread(_read_lines, self.file)]

    async def _plans(self) -> list[StoredPlan]:
        keys: list[str] = []
        async for raw in self.r.scan_iter(match=PLAN_PREFIX + "*", count=500):
            key = _s(raw)
            if ":" not in key[len(PLAN_PREFIX) :]:  # not …:decisions, …:order, …
                keys.append(key)
        plans = []
        for start in range(0, len(keys), 200):
            chunk = keys[start : start + 200]
            async with self.r.pipeline(transaction=False) as pipe:
                for key in chunk:
                    pipe.hmget(key, ["doc", "digest", "status"])
                rows = await pipe.execute(raise_on_error=False)
            for key, row in zip(chunk, rows, strict=True):
                if isinstance(row, Exception):  # not a hash: someone wrote it
                    row = [None, None, None]
                doc, digest, status = (None if v is None else _s(v) for v in row)
                plans.append(StoredPlan(key[len(PLAN_PREFIX) :], doc, digest, status))
        return plans

    # -- verify ------------------------------------------------------------------------

    async def verify(self, *, plans: bool = True) -> Report:
        """The whole log with the key: MACs, chain, head, checkpoints (Redis and the
        file), and every stored plan against what the log says about it."""
        for attempt in range(SETTLE_ROUNDS):
            report = await self._verify_once(plans)
            if report.ok or attempt == SETTLE_ROUNDS - 1 or report.codes() - _RACY:
                return report
            await asyncio.sleep(SETTLE_SECONDS)
        raise AssertionError("unreachable")

    async def _verify_once(self, with_plans: bool) -> Report:
        # Order matters: checkpoints before the head (a checkpoint never counts entries
        # the head we read does not have), the head before the entries (we stop there).
        checkpoints = open_checkpoints(
            await self._stored_checkpoints(),
            await self._file_checkpoints(),
            self.keyring,
            str(self.file),
        )
        head, length = await self._snapshot()
        replay = Replay(mac_key=self.key, key_id=self.key_id, watch=checkpoints.counts)
        async for entry in self._entries(limit=head.seq if head is not None else None):
            replay.feed(entry)
        plans = await self._plans() if with_plans else None
        return finish(replay, head=head, checkpoints=checkpoints, stream_length=length, plans=plans)

    # -- checkpoints -------------------------------------------------------------------

    async def checkpoint(self, *, force: bool = True) -> Checkpoint | None:
        """Check the entries since the last checkpoint (keyed), then sign and store a new
        checkpoint over the head. ``force=False``: skip when nothing was appended since.
        Raises :class:`AuditBroken` (and signs nothing) when the log does not verify."""
        for _ in range(5):
            async with self.r.pipeline(transaction=True) as pipe:
                pipe.llen(CHECKPOINTS)
                pipe.lindex(CHECKPOINTS, -1)
                pipe.hgetall(HEAD)
                pipe.xlen(STREAM)
                n, last_raw, head_raw, length = await pipe.execute()
            n = int(n)
            prev = self._open(last_raw, f"checkpoint {n}") if last_raw else None
            await self._check_file_mirror(n)
            head = Head.from_fields(_fields(head_raw)) if head_raw else None
            await self._check_since(prev, head, int(length))
            count = head.seq if head is not None else 0
            if not force and prev is not None and prev.count == count:
                return None
            statement = checkpoint_statement(
                index=n + 1,
                count=count,
                last_entry_id=head.id if head is not None else "",
                head_hash=head.hash if head is not None else "",
                taken_at=datetime.fromtimestamp(self.clock(), UTC),
                previous=prev.digest if prev is not None else "",
            )
            envelope = sign_statement(statement, self.keyring)
            line = json.dumps(envelope, separators=(",", ":"))
            if await self._store_checkpoint(keys=[CHECKPOINTS], args=[str(n), line]):
                if self.file is not None:
                    await asyncio.to_thread(_append_line, self.file, line)
                cp = open_checkpoint(envelope, self.keyring)
                log.info("audit checkpoint %d at entry %d", cp.index, cp.count)
                return cp
        raise AuditBroken("another checkpoint was being taken at the same time; try again")

    def _open(self, raw: Any, what: str) -> Checkpoint:
        try:
            return open_checkpoint(_json_or_raw(raw), self.keyring)
        except EnvelopeError as exc:
            raise AuditBroken(f"{what} does not verify: {exc}") from exc

    async def _check_file_mirror(self, stored: int) -> None:
        """The newest checkpoint in the file must still be in Redis."""
        if self.file is None:
            return
        lines = await asyncio.to_thread(_read_lines, self.file)
        if not lines:
            return
        mine = self._open(lines[-1], f"the newest checkpoint in {self.file}")
        there = None
        if mine.index <= stored:
            there = await cast(Awaitable[Any], self.r.lindex(CHECKPOINTS, mine.index - 1))
        if there is None or self._open(there, f"checkpoint {mine.index}").digest != mine.digest:
            raise AuditBroken(
                f"{mine.describe()} in {self.file} is missing from Redis: "
                "checkpoints (and perhaps the log) were deleted"
            )

    async def _check_since(self, prev: Checkpoint | None, head: Head | None, length: int) -> None:
        start_count, start_hash, after = 0, GENESIS, "-"
        if prev is not None and prev.count > 0:
            found = await self.r.xrange(
                STREAM, min=prev.last_entry_id, max=prev.last_entry_id, count=1
            )
            fields = _fields(found[0][1]) if found else {}
            if fields.get("hash") != prev.head_hash:
                raise AuditBroken(
                    f"entry #{prev.count} ({prev.last_entry_id}) named by {prev.describe()} "
                    "is gone or changed: the log was truncated, deleted or rewritten"
                )
            start_count, start_hash, after = prev.count, prev.head_hash, prev.last_entry_id
        replay = Replay(
            mac_key=self.key, key_id=self.key_id, start_count=start_count, start_hash=start_hash
        )
        if head is not None:
            async for entry in self._entries(after, limit=max(0, head.seq - start_count)):
                replay.feed(entry)
        report = finish(replay, head=head, checkpoints=CheckpointSet([], []), stream_length=length)
        if not report.ok:
            raise AuditBroken("; ".join(p.message for p in report.problems))

    # -- export ------------------------------------------------------------------------

    async def export(self) -> dict[str, Any]:
        """Entries up to the head, the head, every checkpoint (Redis and file) and the
        public keys: what `sophie audit verify --file` checks offline."""
        stored = await self._stored_checkpoints()
        mirrored = await self._file_checkpoints()
        head, _ = await self._snapshot()
        entries = [
            e.to_json() async for e in self._entries(limit=head.seq if head is not None else None)
        ]
        return {
            "format": EXPORT_FORMAT,
            "exportedAt": datetime.fromtimestamp(self.clock(), UTC).isoformat(),
            "stream": STREAM,
            "entries": entries,
            "head": head.to_json() if head is not None else None,
            "checkpoints": stored,
            "fileCheckpoints": mirrored,
            "keys": self.keyring.public_keys(),
        }


async def take_checkpoint(audit_log: AuditLog) -> Checkpoint | None:
    """The periodic job: a checkpoint if anything was appended since the last one.
    Raises :class:`AuditBroken` (logged by the job runner) when the log does not verify."""
    try:
        return await audit_log.checkpoint(force=False)
    except AuditBroken as exc:
        log.error("audit log does not verify; no checkpoint signed: %s", exc)
        raise
