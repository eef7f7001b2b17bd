"""``/sophie lock`` and ``/sophie unlock``: deploys to a repo@environment wait while locked.

Who may lock and unlock is the constitution's (``deploys.lock_by``, default the
approvers; :func:`roles.approvals.may_lock`). Approved plans queue behind a lock and
start, in order, when it is lifted.
"""

from __future__ import annotations

from roles import approvals, jobs
from roles.flows.context import Context, Reply
from roles.flows.deciding import refused
from roles.records import Actor, DeployLock


def slot_of(repo: str, environment: str) -> str:
    return f"{repo}@{environment}"


def _target(ctx: Context, environment: str, repo: str) -> tuple[str, str] | str:
    constitution = ctx.constitution()
    if environment not in constitution.environments:
        known = ", ".join(constitution.environments)
        return f"'{environment[:40]}' is not an environment of the constitution ({known})"
    if not repo:
        return constitution.main_repo().name, environment
    for rule in constitution.repos:
        if repo.lower() in {rule.name.lower(), rule.name.split("/", 1)[1].lower()} | {
            a.lower() for a in rule.aliases
        }:
            return rule.name, environment
    return f"'{repo[:60]}' is not a repository of the constitution"


async def _may(ctx: Context, actor: Actor, environment: str) -> str | None:
    constitution = ctx.constitution()
    who = constitution.deploys.lock_by or constitution.approvers
    groups = await ctx.directory.groups_of(actor.user_id, list(who.groups))
    return approvals.may_lock(constitution, environment, actor, groups)


async def _allowed(
    ctx: Context, actor: Actor, environment: str, repo: str, verb: str
) -> tuple[str, str] | Reply:
    """(repo, environment) when ``actor`` may lock or unlock it; else the refusal."""
    target = _target(ctx, environment, repo)
    if isinstance(target, str):
        return Reply(False, target)
    why = await _may(ctx, actor, target[1])
    if why:
        await refused(ctx, "", actor, verb, why)
        return Reply(False, f"You can't {verb} {target[1]}: {why}.")
    return target


async def lock(ctx: Context, actor: Actor, environment: str, repo: str, reason: str) -> Reply:
    target = await _allowed(ctx, actor, environment, repo, "lock")
    if isinstance(target, Reply):
        return target
    name, env = target
    held = DeployLock(by=actor.user_id, reason=reason[:300], at=ctx.clock().timestamp())
    if not await ctx.store.lock(slot_of(name, env), held):
        return Reply(False, f"{name} → {env} is already locked.")
    await ctx.store.audit(
        "deploys.locked", "", actor.user_id, {"slot": slot_of(name, env), "reason": reason[:300]}
    )
    return Reply(True, f"Locked {name} → {env}: approved deploys wait until it is unlocked.")


async def unlock(ctx: Context, actor: Actor, environment: str, repo: str) -> Reply:
    target = await _allowed(ctx, actor, environment, repo, "unlock")
    if isinstance(target, Reply):
        return target
    name, env = target
    slot = slot_of(name, env)
    held = (await ctx.store.locks()).get(slot)
    if held is None:
        return Reply(False, f"{name} → {env} is not locked.")
    following = await ctx.store.unlock(slot)
    await ctx.store.audit("deploys.unlocked", "", actor.user_id, {"slot": slot})
    if following:
        await ctx.enqueue(
            jobs.OnPlan("dispatch", following),
            f"dispatch:{following}:unlocked:{ctx.clock().timestamp()}",
        )
    return Reply(
        True, f"Unlocked {name} → {env}." + (" The next queued deploy starts." if following else "")
    )
