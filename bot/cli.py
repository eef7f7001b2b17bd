"""The `sophie` command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from bot import logs, startup_checks
from bot.settings import Settings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from bot.audit_log import AuditLog
    from bot.signer import KeyRing
    from roles.audit_chain import Report

log = logging.getLogger("sophie")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sophie", description="SOPHIE: constitutional ChatOps.")
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the Slack app (HTTP, or Socket Mode)")
    serve.add_argument("--socket", action="store_true", help="use Socket Mode (SLACK_APP_TOKEN)")
    serve.add_argument("--no-worker", action="store_true", help="do not run jobs in-process")
    serve.add_argument(
        "--host", default=None, help="address to bind (default $HOST or 127.0.0.1, loopback)"
    )
    serve.add_argument("--port", type=int, default=None, help="default $PORT or 3000")
    worker = sub.add_parser("worker", help="run background jobs only")
    worker.add_argument(
        "--port",
        type=int,
        default=None,
        help="serve /healthz, /readyz and /metrics on this port (default $SOPHIE_WORKER_PORT; "
        "unset: no HTTP)",
    )
    worker.add_argument(
        "--host", default=None, help="address to bind (default $HOST or 127.0.0.1, loopback)"
    )
    plan = sub.add_parser("plan", help="plan a directive in the terminal (nothing runs)")
    plan.add_argument("directive")
    plan.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    keygen = sub.add_parser("keygen", help="create an Ed25519 signing key")
    keygen.add_argument("--out", type=Path, default=None)
    keygen.add_argument(
        "--rotate",
        action="store_true",
        help="retire the current key (still served for verifying old decisions) and replace it",
    )
    sub.add_parser("pubkey", help="print the public key (PEM, base64, OpenSSH)")
    verify = sub.add_parser(
        "verify",
        help="verify signed decisions for a plan, or with --chain a run's whole sophie-chain",
    )
    verify.add_argument(
        "envelopes",
        nargs="?",
        default=None,
        help="file (or base64 text) with one envelope or a list",
    )
    verify.add_argument(
        "--plan",
        default=None,
        help="plan file (YAML/JSON) or base64 text (required without --chain)",
    )
    verify.add_argument(
        "--constitution",
        default=None,
        help="constitution YAML, or the JSON from /.well-known/sophie/constitution "
        "(default $SOPHIE_CONSTITUTION)",
    )
    verify.add_argument(
        "--expect-digest",
        default=None,
        help="fail unless the plan's sha256 digest is this (the plan_digest workflow input)",
    )
    verify.add_argument(
        "--keys",
        default=None,
        help="/.well-known/sophie/keys JSON file or a base64 public key (default: local key)",
    )
    verify.add_argument(
        "--change",
        default=None,
        help="also check this signed change statement (file or base64): Δ checked the diff "
        "that produced --commit for this plan",
    )
    verify.add_argument(
        "--commit", default=None, help="with --change: the full sha about to be deployed"
    )
    verify.add_argument(
        "--chain",
        default=None,
        help="verify a run's chain.json (the sophie-chain artifact) offline: plan, approvals, "
        "change statement, commit and artifact digests (with --keys, and --artifact)",
    )
    verify.add_argument(
        "--artifact",
        action="append",
        default=[],
        metavar="FILE",
        help="with --chain: this file's sha256 must be one of the chain's artifact digests "
        "(repeatable)",
    )
    audit = sub.add_parser(
        "audit",
        help="audit log: verify (online, or an export offline), checkpoint, export",
    )
    audit.add_argument("action", choices=["verify", "checkpoint", "export"])
    audit.add_argument(
        "--file",
        type=Path,
        default=None,
        help="verify: check this export offline with public keys only (no Redis, no key)",
    )
    audit.add_argument(
        "--keys",
        default=None,
        help="verify --file: /.well-known/sophie/keys JSON file or a base64 public key "
        "(default: the local key if there is one, else the keys inside the export)",
    )
    audit.add_argument("--out", type=Path, default=None, help="export: file to write")
    audit.add_argument(
        "--no-checkpoint",
        action="store_true",
        help="export: do not sign a checkpoint over the log first",
    )
    implement = sub.add_parser(
        "implement",
        help="implement a plan's change steps in this checkout (the pipeline's implement job): "
        "a bounded model loop, then a commit on sophie/<plan-id>; never pushes",
    )
    implement.add_argument("--plan", required=True, help="plan file (YAML/JSON) or base64 text")
    implement.add_argument(
        "--constitution",
        default=None,
        help="constitution YAML, its bundle JSON (file, base64 or data: URL) "
        "(default $SOPHIE_CONSTITUTION)",
    )
    implement.add_argument("--expect-digest", default=None, help="fail unless the plan has it")
    implement.add_argument("--repo-dir", default=".", help="the checkout (default: here)")
    implement.add_argument("--out", type=Path, default=None, help="write the result JSON here")
    implement.add_argument("--patch", type=Path, default=None, help="write the diff here")
    implement.add_argument("--model", default=None, help="default: first of SOPHIE_LLM_MODELS")
    implement.add_argument("--max-steps", type=int, default=30, help="model turns (30)")
    implement.add_argument("--max-tokens", type=int, default=200_000, help="in all (200000)")
    implement.add_argument("--max-seconds", type=float, default=900, help="wall time (900)")
    implement.add_argument("--test-timeout", type=float, default=300, help="per test run (300)")
    implement.add_argument("--model-timeout", type=float, default=120, help="per call (120)")
    implement.add_argument(
        "--pass-env",
        action="append",
        metavar="NAME",
        help="let the tests see this variable too (credential-like names are never passed)",
    )
    digest = sub.add_parser(
        "digest",
        help="the digest now: posted to the constitution's digest.channel (and remembered as "
        "the last digest), or printed when Slack or the channel is not configured",
    )
    digest.add_argument("--now", action="store_true", required=True, help="build it now")
    digest.add_argument(
        "--print", dest="print_only", action="store_true", help="print it; post nothing"
    )
    sub.add_parser("doctor", help="check configuration and reachability")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = Settings.from_env()
    logs.setup(settings.secrets())
    try:
        if args.command == "serve":
            return asyncio.run(
                _serve(
                    settings, args.socket, not args.no_worker, args.host, args.port or settings.port
                )
            )
        if args.command == "worker":
            return asyncio.run(_worker(settings, args.host, args.port or settings.worker_port))
        if args.command == "plan":
            return asyncio.run(_plan(settings, args.directive, args.json))
        if args.command == "keygen":
            return _keygen(settings, args.out, args.rotate)
        if args.command == "pubkey":
            return _pubkey(settings)
        if args.command == "verify":
            return _verify(settings, args)
        if args.command == "audit":
            return _audit(settings, args)
        if args.command == "implement":
            return _implement(settings, args)
        if args.command == "digest":
            return asyncio.run(_digest(settings, args.print_only))
        if args.command == "doctor":
            from bot.doctor import run_doctor

            return asyncio.run(run_doctor(settings))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from roles.constitution import ConstitutionError  # pydantic: only when needed

        if not isinstance(exc, ConstitutionError):
            raise
        # Fail closed with what to fix, not a traceback: nothing has started.
        log.error("refusing to start: %s (in %s)", exc, settings.constitution_path)
        return 2
    return 2


async def _wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def _describe_mode(settings: Settings) -> None:
    log.info(
        "planner: %s",
        "offline"
        if settings.offline_planner
        else f"LLM {', '.join(settings.llm_models)} at {settings.llm_base_url}",
    )
    log.info(
        "execution: %s",
        "DRY RUN (GITHUB_TOKEN not set)"
        if settings.dry_run
        else f"GitHub at {settings.github_api_url}",
    )
    if settings.slack_bot_token is None:
        log.warning(
            "Slack is not configured: set SLACK_BOT_TOKEN and SLACK_SIGNING_SECRET (HTTP) "
            "or SLACK_APP_TOKEN (Socket Mode). Health, metrics and keys are served meanwhile; "
            'try `sophie plan "…"` in the terminal.'
        )


def _refused(settings: Settings, process: startup_checks.Process, socket: bool = False) -> bool:
    """Log every refused setting (each names what to set); True when the process must not start."""
    problems = startup_checks.refusals(settings, process, socket=socket)
    for problem in problems:
        log.error("refusing to start: %s", problem.message)
    return bool(problems)


async def _serve(
    settings: Settings, socket: bool, worker: bool, host: str | None, port: int
) -> int:
    # Checked before anything starts (no embedded Redis, no port): fail closed, exit 2.
    if _refused(settings, "serve", socket):
        return 2
    from roles.constitution import load_constitution

    load_constitution(settings.constitution_path)  # refused before any port or Redis
    from bot.app import build_runtime, connect_socket_mode, web_app

    host = host or settings.host
    rt = await build_runtime(settings)
    _describe_mode(settings)
    if worker:
        await rt.start_worker()
    runner = web.AppRunner(web_app(rt), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    for finding in startup_checks.describe(settings, host, port, socket):
        log.info("%s: %s", finding.name, finding.detail)
    log.info("listening on http://%s:%d", host, port)
    handler = None
    try:
        if startup_checks.slack_mode(settings, socket) == "socket":
            handler = await connect_socket_mode(rt)
            log.info("connected to Slack over Socket Mode")
        await _wait_for_signal()
    finally:
        log.info("shutting down")
        if handler is not None:
            await handler.close_async()
        await runner.cleanup()
        await rt.close()
    return 0


async def _worker(settings: Settings, host: str | None, port: int | None) -> int:
    if _refused(settings, "worker"):  # startup_checks: the same rules as serve
        return 2
    from roles.constitution import load_constitution

    load_constitution(settings.constitution_path)
    from bot.app import build_runtime
    from bot.health import worker_web_app

    rt = await build_runtime(settings)
    _describe_mode(settings)
    await rt.start_worker()
    assert rt.supervisor is not None
    runner: web.AppRunner | None = None
    if port:
        host = host or settings.host
        runner = web.AppRunner(worker_web_app(rt.redis, rt.supervisor), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        log.info("worker health on http://%s:%d (/healthz, /readyz, /metrics)", host, port)
    log.info("worker %s running", rt.supervisor.id)
    try:
        await _wait_for_signal()
    finally:
        log.info("shutting down")
        if runner is not None:
            await runner.cleanup()
        await rt.close()
    return 0


async def _plan(settings: Settings, text: str, as_json: bool) -> int:
    from bot.app import _planner
    from roles import diff_engine, integrator, navigator
    from roles.constitution import ConstitutionError, load_constitution
    from roles.ports import PlanningFailed
    from roles.records import Actor

    try:
        constitution = load_constitution(settings.constitution_path)
    except ConstitutionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    reading = navigator.interpret(text, constitution)
    planner = _planner(settings)
    try:
        proposal = await planner.propose(reading, constitution, [])
    except PlanningFailed as exc:
        print(f"error: could not plan: {exc}", file=sys.stderr)
        return 1
    verdict = diff_engine.evaluate(
        proposal.draft, reading, constitution, proposal.confidence, proposal.disagreements
    )
    plan = integrator.assemble(
        integrator.plan_id_for(f"cli:{uuid.uuid4()}"),
        datetime.now(UTC).replace(microsecond=0),
        reading,
        Actor(team_id="local", user_id="cli"),
        proposal,
        verdict,
        constitution,
    )
    if as_json:
        print(
            json.dumps(
                {
                    "plan": plan.document(),
                    "digest": plan.digest,
                    "allowed": verdict.allowed,
                    "approval": plan.approval.model_dump(mode="json"),
                    "risk": plan.risk.model_dump(mode="json"),
                    "denials": [d.model_dump() for d in verdict.denials],
                    "warnings": [w.model_dump() for w in verdict.warnings],
                },
                indent=2,
            )
        )
        return 0 if verdict.allowed else 1
    print(plan.to_yaml())
    print(f"# digest: sha256:{plan.digest}")
    print(f"# planner: {plan.provenance.planner} ({', '.join(plan.provenance.models)})")
    print(f"# risk: {plan.risk.level.value} (score {plan.risk.score:.2f})")
    for f in plan.risk.factors:
        print(f"#   - {f.id}: {f.message}")
    print(f"# approval: {plan.approval.level.value} (quorum {plan.approval.quorum})")
    for hit in plan.approval.reasons:
        print(f"#   - {hit.id}: {hit.message}")
    for hit in verdict.warnings:
        print(f"# warning {hit.id}: {hit.message}")
    if verdict.denials:
        print("# BLOCKED by the constitution:")
        for hit in verdict.denials:
            print(f"#   - {hit.id}: {hit.message}")
        return 1
    return 0


async def _digest(settings: Settings, print_only: bool) -> int:
    """`sophie digest --now`: post the digest to digest.channel, or print it."""
    from redis.exceptions import RedisError
    from slack_sdk.errors import SlackClientError

    from bot.app import build_runtime
    from handlers.digest_blocks import as_text
    from roles.constitution import ConstitutionError

    try:
        rt = await build_runtime(settings)
    except (OSError, RedisError, ConstitutionError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        channel = rt.sophie.constitution().digest.channel
        post = not print_only and settings.slack_bot_token is not None and bool(channel)
        report, ts = await rt.sophie.digest(post=post)
    except (OSError, RedisError, ConstitutionError, SlackClientError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        await rt.close()
    if ts is not None:
        print(f"posted the digest to {channel} (ts {ts})")
        return 0
    if not print_only:
        why = "Slack is not configured (SLACK_BOT_TOKEN)" if channel else "no digest.channel"
        print(f"note: {why}: printing the digest instead of posting it", file=sys.stderr)
    sys.stdout.write(as_text(report))
    return 0


def _keygen(settings: Settings, out: Path | None, rotate: bool = False) -> int:
    from nacl.signing import SigningKey

    from bot.signer import generate_seed_file, keyid_for, load_keyring, retire_current

    path = out or settings.signing_key_file or settings.data_dir / "signing.key"
    if path.exists():
        if not rotate:
            print(
                f"error: {path} exists; refusing to overwrite a signing key (use --rotate)",
                file=sys.stderr,
            )
            return 1
        old = load_keyring(None, path, settings.data_dir)
        retire_current(old, settings.data_dir)
        path.unlink()
        print(f"retired keyid {old.keyid} (still published for verifying old decisions)")
    seed = generate_seed_file(path)
    public = bytes(SigningKey(seed).verify_key)
    print(f"wrote {path} (mode 0600); keyid {keyid_for(public)}")
    return 0


def _pubkey(settings: Settings) -> int:
    import base64

    from bot.signer import load_keyring, public_openssh, public_pem

    ring = load_keyring(settings.signing_key, settings.signing_key_file, settings.data_dir)
    print(f"keyid: {ring.keyid}")
    print(f"base64: {base64.b64encode(ring.public).decode()}")
    print(public_openssh(ring.public, ring.keyid))
    print(public_pem(ring.public), end="")
    return 0


def _verify(settings: Settings, args: argparse.Namespace) -> int:
    from bot.signer import load_keyring
    from bot.verify import PublicKeys, load_keys, read_json_or_base64, verify, verify_change
    from roles.constitution import ConstitutionError, from_bundle, load_constitution
    from roles.plan import Plan

    if args.chain is not None:
        return _verify_chain(args)
    if args.artifact:
        print("error: --artifact goes with --chain", file=sys.stderr)
        return 2
    if args.envelopes is None or args.plan is None:
        print("error: give ENVELOPES and --plan (or --chain CHAIN.json)", file=sys.stderr)
        return 2
    if (args.change is None) != (args.commit is None):
        print("error: --change and --commit go together", file=sys.stderr)
        return 2

    def text_of(value: str) -> str:
        path = Path(value)
        return path.read_text() if len(value) < 4096 and path.exists() else value

    try:
        envelopes = read_json_or_base64(text_of(args.envelopes))
        if isinstance(envelopes, dict):
            envelopes = [envelopes]
        plan = Plan.from_document(read_json_or_base64(text_of(args.plan)))
        source = args.constitution or settings.constitution_path
        if str(source).endswith(".json"):
            constitution = from_bundle(json.loads(Path(source).read_text()))
        else:
            constitution = load_constitution(source)
        change = read_json_or_base64(text_of(args.change)) if args.change else None
        if change is not None and not isinstance(change, dict):
            raise ValueError("--change must be one envelope (a JSON object)")
        if args.keys:
            keys = load_keys(args.keys)
        else:
            keys = [
                load_keyring(
                    settings.signing_key, settings.signing_key_file, settings.data_dir
                ).public
            ]
    except (OSError, ValueError, ConstitutionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    expected = (args.expect_digest or "").removeprefix("sha256:")
    if expected and expected != plan.digest:
        print(
            f"REJECTED: the plan's digest is sha256:{plan.digest}, not the expected {expected}",
            file=sys.stderr,
        )
        return 1
    reason = verify(envelopes, plan, constitution, PublicKeys(keys))
    if reason is None and change is not None:
        reason = verify_change(change, plan, constitution, PublicKeys(keys), args.commit)
    if reason:
        print(f"REJECTED: {reason}", file=sys.stderr)
        return 1
    print(
        f"OK: {len(envelopes)} decision(s) authorise plan {plan.id} "
        f"(sha256:{plan.digest}) at level {plan.approval.level.value}"
    )
    if change is not None:
        print(f"OK: the change of plan {plan.id} to commit {args.commit} was checked")
    return 0


def _verify_chain(args: argparse.Namespace) -> int:
    from bot.chain import command

    given = {
        "ENVELOPES": args.envelopes,
        "--plan": args.plan,
        "--constitution": args.constitution,
        "--expect-digest": args.expect_digest,
        "--change": args.change,
        "--commit": args.commit,
    }
    others = [flag for flag, value in given.items() if value is not None]
    if others:
        print(
            f"error: --chain carries the plan, approvals and change; drop {', '.join(others)}",
            file=sys.stderr,
        )
        return 2
    if not args.keys:
        print(
            "error: --chain needs --keys (the bot's /.well-known/sophie/keys JSON or a base64 key)",
            file=sys.stderr,
        )
        return 2
    return command(args.chain, args.keys, args.artifact)


def _implement(settings: Settings, args: argparse.Namespace) -> int:
    from bot.implement import run_command

    return run_command(settings, args)


def _audit(settings: Settings, args: argparse.Namespace) -> int:
    if args.action != "verify" and (args.file is not None or args.keys):
        print("error: --file and --keys go with `sophie audit verify`", file=sys.stderr)
        return 2
    if args.action != "export" and (args.out is not None or args.no_checkpoint):
        print("error: --out and --no-checkpoint go with `sophie audit export`", file=sys.stderr)
        return 2
    if args.file is not None:
        return _audit_verify_file(settings, args.file, args.keys)
    if args.keys:
        print("error: --keys goes with --file (online, the bot's own key is used)", file=sys.stderr)
        return 2
    if args.action == "checkpoint":
        return asyncio.run(_audit_checkpoint(settings))
    if args.action == "export":
        return asyncio.run(_audit_export(settings, args.out, not args.no_checkpoint))
    return asyncio.run(_audit_verify(settings))


def _local_keyring(settings: Settings) -> KeyRing | None:
    """The bot's signing key if one is configured or exists (never generated here)."""
    from bot.signer import load_keyring

    configured = settings.signing_key or settings.signing_key_file
    if not configured and not (settings.data_dir / "signing.key").exists():
        return None
    return load_keyring(settings.signing_key, settings.signing_key_file, settings.data_dir)


@contextlib.asynccontextmanager
async def _open_audit_log(settings: Settings) -> AsyncIterator[AuditLog]:
    import redis.asyncio as aioredis

    from bot.audit_log import AuditLog
    from bot.embedded_redis import EmbeddedRedis

    keyring = _local_keyring(settings)
    if keyring is None:
        raise ValueError(
            "no signing key: the audit log's MAC key comes from it. Set SOPHIE_SIGNING_KEY "
            f"or SOPHIE_SIGNING_KEY_FILE, or run where {settings.data_dir / 'signing.key'} is"
        )
    embedded = None
    url = settings.redis_url
    if url is None:
        embedded = EmbeddedRedis(settings.data_dir)
        url = await embedded.start()
    client = aioredis.from_url(url)
    try:
        yield AuditLog(client, keyring, settings.data_dir)
    finally:
        await client.aclose()
        if embedded is not None:
            await embedded.stop()


def _print_audit_report(what: str, report: Report) -> int:
    if report.problems:
        print(
            f"{what} BROKEN: {len(report.problems)} problem(s), {report.count} entries read:",
            file=sys.stderr,
        )
        for problem in report.problems:
            print(f"  - [{problem.code}] {problem.message}", file=sys.stderr)
        return 1
    print(f"{what} OK: {report.summary()}")
    return 0


async def _audit_verify(settings: Settings) -> int:
    from redis.exceptions import RedisError

    try:
        async with _open_audit_log(settings) as audit_log:
            report = await audit_log.verify()
    except (OSError, ValueError, RedisError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return _print_audit_report("audit log", report)


async def _audit_checkpoint(settings: Settings) -> int:
    from redis.exceptions import RedisError

    from bot.audit_log import AuditBroken

    try:
        async with _open_audit_log(settings) as audit_log:
            cp = await audit_log.checkpoint()
            mirror = audit_log.file
    except AuditBroken as exc:
        print(f"audit log BROKEN; no checkpoint signed: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError, RedisError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    assert cp is not None  # forced: always taken
    print(
        f"checkpoint {cp.index} signed (keyid {cp.keyid}): {cp.count} entries, "
        f"head sha256:{cp.head_hash or '-'}; copied to {mirror}"
    )
    return 0


async def _audit_export(settings: Settings, out: Path | None, checkpoint_first: bool) -> int:
    from redis.exceptions import RedisError

    from bot.audit_log import AuditBroken

    broken = ""
    try:
        async with _open_audit_log(settings) as audit_log:
            if checkpoint_first:
                try:
                    await audit_log.checkpoint(force=False)
                except AuditBroken as exc:
                    broken = str(exc)
            doc = await audit_log.export()
    except (OSError, ValueError, RedisError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(doc, indent=1) + "\n"
    if out is None:
        sys.stdout.write(text)
    else:
        await asyncio.to_thread(out.write_text, text)
        print(
            f"wrote {out}: {len(doc['entries'])} entries, "
            f"{len(doc['checkpoints'])} checkpoint(s), {len(doc['keys']['keys'])} public key(s)"
        )
    if broken:
        print(
            f"warning: the log does not verify, so no checkpoint covers it: {broken}",
            file=sys.stderr,
        )
        return 1
    return 0


def _audit_verify_file(settings: Settings, path: Path, keys_source: str | None) -> int:
    import base64

    from bot.verify import PublicKeys, load_keys
    from roles.attestation import Verifier
    from roles.audit_chain import verify_export

    verifier: Verifier
    try:
        export = json.loads(path.read_text())
        if keys_source:
            verifier = PublicKeys(load_keys(keys_source))
        else:
            ring = _local_keyring(settings)
            if ring is not None:
                verifier = ring
            else:
                print(
                    "warning: no --keys and no local key: trusting the public keys inside the "
                    "export, which whoever edited it could have replaced; pass --keys with "
                    "/.well-known/sophie/keys from the bot",
                    file=sys.stderr,
                )
                keys = export["keys"]["keys"]
                verifier = PublicKeys([base64.b64decode(k["public_key_base64"]) for k in keys])
        report = verify_export(export, verifier)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"error: {path}: {exc}", file=sys.stderr)
        return 2
    code = _print_audit_report(f"audit export {path}", report)
    newest = max((c.count for c in report.checkpoints), default=0)
    if code == 0 and newest < report.count:
        print(
            f"note: entries {newest + 1}-{report.count} come after the newest checkpoint; "
            "offline only the unkeyed hash chain covers them (`sophie audit verify` online "
            "checks their keyed MACs)"
        )
    return code
