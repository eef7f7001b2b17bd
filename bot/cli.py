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

from aiohttp import web

from bot import logs
from bot.settings import Settings

log = logging.getLogger("sophie")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sophie", description="SOPHIE: constitutional ChatOps.")
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the Slack app (HTTP, or Socket Mode)")
    serve.add_argument("--socket", action="store_true", help="use Socket Mode (SLACK_APP_TOKEN)")
    serve.add_argument("--no-worker", action="store_true", help="do not run jobs in-process")
    serve.add_argument("--host", default="0.0.0.0")
    serve.add_argument("--port", type=int, default=None, help="default $PORT or 3000")
    sub.add_parser("worker", help="run background jobs only")
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
    verify = sub.add_parser("verify", help="verify signed decisions for a plan")
    verify.add_argument("envelopes", help="file (or base64 text) with one envelope or a list")
    verify.add_argument("--plan", required=True, help="plan file (YAML/JSON) or base64 text")
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
    audit = sub.add_parser("audit", help="audit log tools")
    audit.add_argument("action", choices=["verify"])
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
            return asyncio.run(_worker(settings))
        if args.command == "plan":
            return asyncio.run(_plan(settings, args.directive, args.json))
        if args.command == "keygen":
            return _keygen(settings, args.out, args.rotate)
        if args.command == "pubkey":
            return _pubkey(settings)
        if args.command == "verify":
            return _verify(settings, args)
        if args.command == "audit":
            return asyncio.run(_audit_verify(settings))
        if args.command == "doctor":
            from bot.doctor import run_doctor

            return asyncio.run(run_doctor(settings))
    except KeyboardInterrupt:
        return 130
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


async def _serve(settings: Settings, socket: bool, worker: bool, host: str, port: int) -> int:
    from bot.app import build_runtime, connect_socket_mode, web_app

    rt = await build_runtime(settings)
    _describe_mode(settings)
    if worker:
        await rt.start_worker()
    runner = web.AppRunner(web_app(rt), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info("listening on http://%s:%d (POST /slack/events)", host, port)
    handler = None
    if (socket or settings.slack_app_token) and rt.bolt is not None:
        if settings.slack_app_token is None:
            log.error("--socket needs SLACK_APP_TOKEN (an xapp- token with connections:write)")
            return 2
        handler = await connect_socket_mode(rt)
        log.info("connected to Slack over Socket Mode")
    try:
        await _wait_for_signal()
    finally:
        log.info("shutting down")
        if handler is not None:
            await handler.close_async()
        await runner.cleanup()
        await rt.close()
    return 0


async def _worker(settings: Settings) -> int:
    from bot.app import build_runtime

    rt = await build_runtime(settings)
    _describe_mode(settings)
    await rt.start_worker()
    log.info("worker running")
    try:
        await _wait_for_signal()
    finally:
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
    from bot.verify import PublicKeys, load_keys, read_json_or_base64, verify
    from roles.constitution import ConstitutionError, from_bundle, load_constitution
    from roles.plan import Plan

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
    if reason:
        print(f"REJECTED: {reason}", file=sys.stderr)
        return 1
    print(
        f"OK: {len(envelopes)} decision(s) authorise plan {plan.id} "
        f"(sha256:{plan.digest}) at level {plan.approval.level.value}"
    )
    return 0


async def _audit_verify(settings: Settings) -> int:
    import redis.asyncio as aioredis

    from bot.embedded_redis import EmbeddedRedis
    from bot.redis_store import RedisStore

    embedded = None
    url = settings.redis_url
    if url is None:
        embedded = EmbeddedRedis(settings.data_dir)
        url = await embedded.start()
    client = aioredis.from_url(url)
    try:
        count, problem = await RedisStore(client).verify_audit()
    finally:
        await client.aclose()
        if embedded is not None:
            await embedded.stop()
    if problem:
        print(f"audit log BROKEN after {count} entries: {problem}", file=sys.stderr)
        return 1
    print(f"audit log OK: {count} entries, hash chain intact")
    return 0
