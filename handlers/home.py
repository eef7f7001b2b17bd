"""The App Home tab: what concerns the viewer, kept fresh, and Approve without the card.

Sections (handlers/home_blocks.py lays them out): the last 7 days' headline figures
(deploys, success rate, median lead time: :mod:`roles.headline`), "Waiting on you"
(Approve / View plan), "Your requests", "From your channels and decisions", "Recent
deploys", "Locks and queues" and "Trust".

Privacy: a viewer sees only plans waiting on them (they may decide on them under
the constitution, :func:`roles.approvals.may_decide`), their own requests, plans
they decided on, and plans from conversations they share with the bot (Slack's
``users.conversations`` with the viewer as ``user``: public and private channels
and group DMs; https://api.slack.com/methods/users.conversations). A plan from a
direct message is shown only to its requester and to the people asked to decide
on it, never through channel membership. Plans from another workspace are never
shown. Recent deploys follow the same rule (:func:`may_see`); a slot held by a plan
the viewer may not see says only that a plan runs there; the headline figures
count the viewer's workspace only. Everything after the event's ack runs in the
background.

Fresh: opening the tab publishes it, and SOPHIE remembers who opened it
(``REMEMBER_SECONDS``). When a plan changes (``Context.home_changed``, called by the
flows), the Homes of the remembered people it concerns — its requester, those who
decided on it, and approvers who may decide on it — are published again, at most
once per person every ``DEBOUNCE_SECONDS`` (a Redis lease shared by every replica;
a change inside the window is published when it ends). Failures are logged: the
Home is cosmetic and never holds up a flow.

Buttons: a Home click has no card message to be bound to (handlers/actions.py binds
card buttons to the card), so the Home has its own action ids. A click is accepted
only from a Home view (``container.type`` "view", ``view.type`` "home", the
container's ``view_id`` the view's ``id``) whose ``private_metadata`` — set by us
when we published it, returned by Slack with the click — names the person who
clicked (team/user): their own Home. The button carries ``plan_id|full digest`` like
the card's; the plan must be from the clicker's workspace, have its card posted,
need approvals (not a notification-level plan), and the flow then judges the
digest, the status, expiry and :func:`roles.approvals.may_decide` exactly as for a
card click. Block actions from a Home tab carry no ``response_url``
(https://docs.slack.dev/reference/interaction-payloads/block_actions-payload), so the
answer is shown at the top of the republished Home. Refusals are audited.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from handlers import blocks, home_blocks
from handlers.actions import OTHER_WORKSPACE, actor_from
from handlers.background import spawn
from handlers.home_blocks import DeployLine, HomePage, SlotLine, TrustLine
from roles import approvals, memory
from roles.constitution import Constitution
from roles.flows.deciding import card_binding_problem
from roles.flows.locking import slot_of
from roles.headline import DAYS, headline
from roles.outcomes import Outcome
from roles.plan import ApprovalLevel
from roles.records import Actor, DeployLock, PlanRecord, PlanStatus
from roles.sophie import Sophie

log = logging.getLogger("sophie.handlers")

# The newest plans looked at for one Home tab, and the most shown per section.
WINDOW = 100
PER_SECTION = home_blocks.PER_SECTION
# users.conversations pages (200 conversations each) read for one viewer.
MAX_PAGES = 10
CHANNEL_TYPES = "public_channel,private_channel,mpim"
# repo@environments looked at for recent deploys, locks and queues; outcomes read for
# the headline figures; plans loaded to find where a recent deploy was asked.
MAX_SLOTS = 50
HEADLINE_LIMIT = 2000
MAX_LOOKUPS = 40
# Who opened the Home (a Redis hash, its TTL renewed on every open; older entries are
# ignored), and at most one republish per person per DEBOUNCE_SECONDS on changes.
VIEWERS = "home:viewers"
REMEMBER_SECONDS = 30 * 86400
DEBOUNCE_SECONDS = 5.0

_PLAN_ID = re.compile(r"^plan_[a-z0-9]{8,40}$")

NOT_HOME = "That button is not on your SOPHIE Home tab; nothing was done."
NO_PLAN = "That button names no plan; nothing was done."
NO_RECORD = "That button does not match a plan I know; nothing was done."
NO_CARD = "This plan's card is still being posted; try again in a moment."
NOTHING_TO_APPROVE = "This plan runs unless vetoed: there is nothing to approve."
NOT_YOURS_TO_SEE = "You can only open plans waiting on you, yours, or those you decided."


@dataclass(frozen=True)
class Viewer:
    actor: Actor
    groups: frozenset[str] = frozenset()
    # Conversations the viewer shares with the bot (never DMs); None if unknown.
    channels: frozenset[str] | None = None


@dataclass
class Sections:
    waiting: list[PlanRecord] = field(default_factory=list)
    mine: list[PlanRecord] = field(default_factory=list)
    others: list[PlanRecord] = field(default_factory=list)


def is_direct(record: PlanRecord) -> bool:
    """A plan from a 1:1 direct message (Slack's DM ids start with D)."""
    return record.thread.channel.startswith("D")


def _act(record: PlanRecord) -> approvals.Act:
    level = record.plan.approval.level
    return "approve" if level in (ApprovalLevel.APPROVAL, ApprovalLevel.SUPERVISION) else "veto"


def waiting_on(record: PlanRecord, viewer: Viewer, constitution: Constitution) -> bool:
    """The plan is pending and the viewer may decide on it now."""
    if record.status != PlanStatus.PENDING:
        return False
    why = approvals.may_decide(
        constitution, record.plan, record.decisions, viewer.actor, set(viewer.groups), _act(record)
    )
    return why is None


def decided_by(record: PlanRecord, viewer: Viewer) -> bool:
    return any(
        d.actor.user_id == viewer.actor.user_id and d.actor.team_id == viewer.actor.team_id
        for d in record.decisions
    )


def is_requester(record: PlanRecord, viewer: Viewer) -> bool:
    return record.plan.requester.user_id == viewer.actor.user_id


def in_their_channels(record: PlanRecord, viewer: Viewer) -> bool:
    """From a conversation the viewer shares with the bot (never a DM)."""
    return (
        not is_direct(record)
        and viewer.channels is not None
        and record.thread.channel in viewer.channels
    )


def may_see(record: PlanRecord, viewer: Viewer, constitution: Constitution) -> bool:
    """The one rule for every section: what this viewer may see of ``record``."""
    if not approvals.same_workspace(record.plan, viewer.actor):
        return False
    return (
        waiting_on(record, viewer, constitution)
        or is_requester(record, viewer)
        or decided_by(record, viewer)
        or in_their_channels(record, viewer)
    )


def may_open(record: PlanRecord, viewer: Viewer, constitution: Constitution) -> bool:
    """View plan from the Home: only plans with a View plan button there (no channels)."""
    if not approvals.same_workspace(record.plan, viewer.actor):
        return False
    return (
        waiting_on(record, viewer, constitution)
        or is_requester(record, viewer)
        or decided_by(record, viewer)
    )


def sections(records: Iterable[PlanRecord], viewer: Viewer, constitution: Constitution) -> Sections:
    """What this viewer may see, newest first, in three sections."""
    out = Sections()
    for record in records:
        if not approvals.same_workspace(record.plan, viewer.actor):
            continue
        if waiting_on(record, viewer, constitution):
            out.waiting.append(record)
        elif is_requester(record, viewer):
            out.mine.append(record)
        elif decided_by(record, viewer) or in_their_channels(record, viewer):
            out.others.append(record)  # they were asked and answered, or it is their channel
    out.waiting, out.mine, out.others = (
        out.waiting[:PER_SECTION],
        out.mine[:PER_SECTION],
        out.others[:PER_SECTION],
    )
    return out


def is_shown_deploy(outcome: Outcome) -> bool:
    """A run that deployed (or tried to), rollbacks included, dry runs marked."""
    return outcome.action in ("deploy", "rollback") and (
        outcome.result in ("succeeded", "failed", "rolled_back")
        or (outcome.result == "error" and outcome.dispatched_at > 0)
    )


def recent_deploys(
    outcomes: Iterable[Outcome],
    records: dict[str, PlanRecord],
    viewer: Viewer,
    constitution: Constitution,
) -> list[DeployLine]:
    """Deploys the viewer may see (:func:`may_see` of their plan), newest first."""
    out: list[DeployLine] = []
    for outcome in sorted(outcomes, key=lambda o: o.ended_at, reverse=True):
        record = records.get(outcome.plan_id)
        if record is None or not is_shown_deploy(outcome):
            continue
        if may_see(record, viewer, constitution):
            out.append(DeployLine(outcome, record.thread.channel))
            if len(out) >= PER_SECTION:
                break
    return out


def slot_line(
    slot: str,
    lock: DeployLock | None,
    holder: str | None,
    waiting: int,
    holder_record: PlanRecord | None,
    viewer: Viewer,
    constitution: Constitution,
) -> SlotLine | None:
    """A locked or busy slot as the viewer may see it (None when it is neither)."""
    if lock is None and holder is None and not waiting:
        return None
    shown: str | None = None
    if holder is not None:
        visible = holder_record is not None and may_see(holder_record, viewer, constitution)
        shown = holder if visible and _PLAN_ID.match(holder) else ""
    return SlotLine(slot, lock, shown, waiting)


def trust_lines(
    scores: dict[str, float],
    viewer: Actor,
    targets: Iterable[str],
    initial: float,
) -> list[TrustLine]:
    """The viewer's own scores (as requester and approver), then each repo@environment
    they see; a score never kept yet is the constitution's initial one."""
    who = f"{viewer.team_id}/{viewer.user_id}"
    mine = memory.requester_key(who), memory.approver_key(who)
    out = [
        TrustLine("requester", "", scores.get(mine[0], initial), mine[0] in scores),
        TrustLine("approver", "", scores.get(mine[1], initial), mine[1] in scores),
    ]
    for target in sorted(set(targets)):
        out.append(TrustLine("target", target, scores.get(target, initial), target in scores))
    return out[:12]


def viewer_from(body: dict[str, Any]) -> Actor:
    """The person who opened the tab, in the workspace the event came from."""
    event = body.get("event")
    user = event.get("user") if isinstance(event, dict) else None
    team, enterprise = body.get("team_id"), body.get("enterprise_id")
    return Actor(
        team_id=team if isinstance(team, str) else "",
        user_id=user if isinstance(user, str) else "",
        enterprise_id=enterprise if isinstance(enterprise, str) else "",
    )


def owner_tag(actor: Actor) -> str:
    """Who a Home view is published to (its private_metadata)."""
    return f"{actor.team_id}/{actor.user_id}"


async def shared_channels(client: AsyncWebClient, user_id: str) -> frozenset[str] | None:
    """Conversations ``user_id`` shares with the bot, or None if Slack would not say."""
    found: set[str] = set()
    cursor = ""
    for _ in range(MAX_PAGES):
        try:
            resp = await client.users_conversations(
                user=user_id, types=CHANNEL_TYPES, limit=200, cursor=cursor or None
            )
        except SlackApiError as exc:
            log.warning(
                "cannot list the conversations of %s: %s", user_id, exc.response.get("error")
            )
            return None
        for channel in resp.get("channels") or []:
            if isinstance(channel, dict) and isinstance(channel.get("id"), str):
                if not channel["id"].startswith("D"):
                    found.add(channel["id"])
        cursor = str((resp.get("response_metadata") or {}).get("next_cursor") or "")
        if not cursor:
            break
    return frozenset(found)


def candidate_groups(constitution: Constitution, record: PlanRecord | None = None) -> list[str]:
    groups = list(constitution.approvers.groups)
    if record is not None:
        groups += record.plan.approval.distinct_groups
    return list(dict.fromkeys(groups))


def _pairs(constitution: Constitution) -> list[tuple[str, str]]:
    pairs = [(r.name, env) for r in constitution.repos for env in r.environments]
    return pairs[:MAX_SLOTS]


async def build(
    sophie: Sophie, client: AsyncWebClient, actor: Actor, flash: str = ""
) -> dict[str, Any]:
    """The Home view of ``actor``, from the store as it is now."""
    constitution = sophie.constitution()
    store = sophie.store
    groups = await sophie.directory.groups_of(actor.user_id, candidate_groups(constitution))
    channels = await shared_channels(client, actor.user_id)
    viewer = Viewer(actor, frozenset(groups), channels)
    records = await store.recent(WINDOW)
    known = {r.plan.id: r for r in records}
    shown = sections(records, viewer, constitution)
    now = sophie.clock().timestamp()

    async def record_of(plan_id: str, budget: list[int]) -> PlanRecord | None:
        if plan_id in known:
            return known[plan_id]
        if budget[0] <= 0 or not _PLAN_ID.match(plan_id):
            return None
        budget[0] -= 1
        found = await store.load(plan_id)
        if found is not None:
            known[plan_id] = found
        return found

    pairs = _pairs(constitution)
    candidates: list[Outcome] = []
    for repo, env in pairs:
        candidates += await store.outcomes_in(repo, env, PER_SECTION * 2)
    candidates = sorted(
        (o for o in candidates if is_shown_deploy(o)), key=lambda o: o.ended_at, reverse=True
    )[: PER_SECTION * 4]
    budget = [MAX_LOOKUPS]
    for outcome in candidates:
        await record_of(outcome.plan_id, budget)
    deploys = recent_deploys(candidates, known, viewer, constitution)

    locks = await store.locks()
    slots: list[SlotLine] = []
    names = [slot_of(repo, env) for repo, env in pairs]
    for slot in [*names, *sorted(set(locks) - set(names))][:MAX_SLOTS]:
        holder, queue = await store.slot(slot)
        held = await record_of(holder, budget) if holder else None
        line = slot_line(slot, locks.get(slot), holder, len(queue), held, viewer, constitution)
        if line is not None:
            slots.append(line)

    outcomes = await store.outcomes_between(now - DAYS * 86400, now + 1, HEADLINE_LIMIT)
    figures = headline(outcomes, actor.team_id, now, partial=len(outcomes) >= HEADLINE_LIMIT)
    seen = [r.plan for r in (*shown.waiting, *shown.mine, *shown.others)]
    targets = [memory.trust_key(p.target.repo, p.target.environment) for p in seen]
    targets += [memory.trust_key(d.outcome.repo, d.outcome.environment) for d in deploys]
    targets += [s.slot for s in slots]
    trust = trust_lines(await store.trusts(), actor, targets, constitution.trust.initial)
    page = HomePage(
        owner=owner_tag(actor),
        waiting=shown.waiting,
        mine=shown.mine,
        others=shown.others,
        headline=figures,
        deploys=deploys,
        slots=slots,
        trust=trust,
        floor=constitution.trust.minimum_for_autonomous,
        note="" if channels is not None else home_blocks.HOME_NO_CHANNELS,
        flash=flash,
    )
    return home_blocks.home(page)


# -- who opened the Home, and republishing it when something changes ----------------------


async def remember(sophie: Sophie, actor: Actor) -> None:
    value = json.dumps({"at": time.time(), "enterprise": actor.enterprise_id})
    await sophie.store.set_memo(VIEWERS, owner_tag(actor), value, REMEMBER_SECONDS)


def remembered(memo: dict[str, str], now: float) -> list[Actor]:
    """People who opened the Home within ``REMEMBER_SECONDS`` (malformed entries skipped)."""
    out = []
    for key, raw in memo.items():
        team, _, user = key.partition("/")
        try:
            doc = json.loads(raw)
            at, enterprise = float(doc["at"]), str(doc.get("enterprise") or "")
        except (ValueError, KeyError, TypeError):
            continue
        if team and user and now - at <= REMEMBER_SECONDS:
            out.append(Actor(team_id=team, user_id=user, enterprise_id=enterprise))
    return out


def concerns(record: PlanRecord, viewer: Viewer, constitution: Constitution) -> bool:
    """A change to ``record`` concerns its requester, those who decided on it, and the
    approvers who may decide on it (whatever its status: it left their list)."""
    if not approvals.same_workspace(record.plan, viewer.actor):
        return False
    if is_requester(record, viewer) or decided_by(record, viewer):
        return True
    why = approvals.may_decide(
        constitution, record.plan, record.decisions, viewer.actor, set(viewer.groups), _act(record)
    )
    return why is None


class HomeRefresher:
    """``Context.home_changed``: republish the Home of the people a change concerns.

    Called from the flows; returns at once (the work runs in the background) and never
    raises."""

    def __init__(
        self,
        sophie: Sophie,
        client: AsyncWebClient,
        debounce_seconds: float = DEBOUNCE_SECONDS,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.sophie = sophie
        self.client = client
        self.debounce_seconds = debounce_seconds
        self.sleep = sleep
        self._pending: set[str] = set()
        # Its own tasks, not handlers.background's: shutting down waits for Slack calls
        # after an ack, not for a cosmetic publish waiting for its window to end.
        self._tasks: set[asyncio.Task[Any]] = set()

    def _start(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def __call__(self, record: PlanRecord) -> None:
        self._start(self.changed(record))

    async def changed(self, record: PlanRecord) -> list[Actor]:
        """Republish (or schedule) the Homes ``record`` concerns; who they are."""
        try:
            people = await self.concerned(record)
        except Exception:
            log.warning("cannot tell whose Home %s concerns", record.plan.id, exc_info=True)
            return []
        for actor in people:
            self._start(self.republish(actor))
        return people

    async def concerned(self, record: PlanRecord) -> list[Actor]:
        memo = await self.sophie.store.memo(VIEWERS)
        constitution = self.sophie.constitution()
        out = []
        for actor in remembered(memo, time.time()):
            if not approvals.same_workspace(record.plan, actor):
                continue
            groups = await self.sophie.directory.groups_of(
                actor.user_id, candidate_groups(constitution, record)
            )
            if concerns(record, Viewer(actor, frozenset(groups)), constitution):
                out.append(actor)
        return out

    async def publish(self, actor: Actor, flash: str = "") -> None:
        view = await build(self.sophie, self.client, actor, flash)
        await self.client.views_publish(user_id=actor.user_id, view=view)

    async def claim(self, actor: Actor) -> bool:
        """The person's debounce window: free (now taken), or another publish holds it."""
        key = f"home:{owner_tag(actor)}"
        return await self.sophie.store.claim_lease(key, uuid.uuid4().hex, self.debounce_seconds)

    async def republish(self, actor: Actor) -> bool:
        """Publish now if this person's window is free; else once when it ends (one
        pending publish per person in this process). True if published."""
        key = owner_tag(actor)
        try:
            if await self.claim(actor):
                await self.publish(actor)
                return True
            if key in self._pending:
                return False  # the publish already waiting will show this change too
            self._pending.add(key)
            try:
                await self.sleep(self.debounce_seconds + 0.05)
                # Held again: someone published after this change (and so showed it).
                if not await self.claim(actor):
                    return False
                await self.publish(actor)
                return True
            finally:
                self._pending.discard(key)
        except Exception:
            log.warning("could not republish the Home of %s", actor.user_id, exc_info=True)
            return False

    async def opened(self, actor: Actor, flash: str = "") -> None:
        """The person opened the tab or clicked in it: publish now, and take the window
        so that changes right after are published once, when it ends."""
        await self.claim(actor)
        await self.publish(actor, flash)


# -- clicks in the Home -------------------------------------------------------------------


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def home_binding_problem(body: dict[str, Any], actor: Actor) -> str | None:
    """Why this click is not from ``actor``'s own Home view (None when it is)."""
    container, view = _obj(body.get("container")), _obj(body.get("view"))
    if container.get("type") != "view" or view.get("type") != "home":
        return NOT_HOME
    view_id = _text(container.get("view_id"))
    if not view_id or view_id != _text(view.get("id")):
        return NOT_HOME
    if not actor.team_id or not actor.user_id:
        return NOT_HOME
    if _text(view.get("private_metadata")) != owner_tag(actor):
        return NOT_HOME  # a view published to someone else
    return None


def home_click(body: dict[str, Any]) -> tuple[str, str] | str:
    """The ``(plan_id, digest)`` a Home button carries, or why it carries none."""
    actions = body.get("actions")
    if not isinstance(actions, list) or not actions or not isinstance(actions[0], dict):
        return NO_PLAN
    plan_id, digest = blocks.parse_button_value(_text(actions[0].get("value")))
    if not _PLAN_ID.match(plan_id) or not digest:
        return NO_PLAN
    # The action id names the plan too ("{id}.{plan_id}"): both must agree.
    _, dot, named = _text(actions[0].get("action_id")).partition(".")
    if dot and named != plan_id:
        return NO_PLAN
    return plan_id, digest


async def _refuse(
    sophie: Sophie, body: dict[str, Any], actor: Actor, plan_id: str, what: str, why: str
) -> str:
    log.warning("refused Home %s on %s by %s: %s", what, plan_id or "?", actor.user_id, why)
    if what == "approve":
        detail = {
            "decision": what,
            "reason": why,
            "surface": "home",
            "team": actor.team_id,
            "view_id": _text(_obj(body.get("container")).get("view_id")),
        }
        await sophie.store.audit("decision.refused", plan_id or "-", actor.user_id, detail)
    return why


async def home_approve(sophie: Sophie, body: dict[str, Any], actor: Actor) -> str:
    """Approve from the Home tab: what the clicker is told."""
    click = home_click(body)
    plan_id = click[0] if isinstance(click, tuple) else ""
    why = home_binding_problem(body, actor)
    if why is None and isinstance(click, str):
        why = click
    if why is not None:
        return await _refuse(sophie, body, actor, plan_id, "approve", why)
    assert isinstance(click, tuple)
    plan_id, digest = click
    record = await sophie.store.load(plan_id)
    if record is None or card_binding_problem(record, digest) is not None:
        # Unknown plan or not its digest: the same answer, so ids cannot be probed.
        return await _refuse(sophie, body, actor, plan_id, "approve", NO_RECORD)
    if not approvals.same_workspace(record.plan, actor):
        return await _refuse(sophie, body, actor, plan_id, "approve", OTHER_WORKSPACE)
    if record.plan.approval.level not in (ApprovalLevel.APPROVAL, ApprovalLevel.SUPERVISION):
        return await _refuse(sophie, body, actor, plan_id, "approve", NOTHING_TO_APPROVE)
    if not record.card_ts:
        return await _refuse(sophie, body, actor, plan_id, "approve", NO_CARD)
    # The flow judges the digest again, the status, expiry and who may decide, as for a
    # card click (and audits a refusal).
    reply = await sophie.decide(plan_id, digest, actor, "approve")
    return f"{plan_id}: {reply.text}"


async def home_view_plan(
    sophie: Sophie, body: dict[str, Any], actor: Actor
) -> tuple[dict[str, Any] | None, str]:
    """View plan from the Home tab: the modal to open, or what the clicker is told."""
    click = home_click(body)
    why = home_binding_problem(body, actor) or (click if isinstance(click, str) else None)
    if why is not None or not isinstance(click, tuple):
        log.warning("refused Home view by %s: %s", actor.user_id, why)
        return None, why or NO_PLAN
    record = await sophie.store.load(click[0])
    if record is None or card_binding_problem(record, click[1]) is not None:
        return None, NO_RECORD
    constitution = sophie.constitution()
    groups = await sophie.directory.groups_of(actor.user_id, candidate_groups(constitution, record))
    if not may_open(record, Viewer(actor, frozenset(groups)), constitution):
        log.warning("refused Home view of %s by %s", click[0], actor.user_id)
        return None, NOT_YOURS_TO_SEE
    return blocks.plan_modal(record.plan), ""


def register(app: AsyncApp, sophie: Sophie) -> None:
    def refresher(client: AsyncWebClient) -> HomeRefresher:
        hook = sophie.home_changed
        return hook if isinstance(hook, HomeRefresher) else HomeRefresher(sophie, client)

    @app.event("app_home_opened")
    async def on_home(body: dict[str, Any], event: dict[str, Any], client: AsyncWebClient) -> None:
        if event.get("tab") not in (None, "home"):
            return
        actor = viewer_from(body)
        if not actor.user_id:
            return

        async def publish() -> None:
            try:
                await remember(sophie, actor)
            except Exception:
                log.warning("cannot remember that %s opened Home", actor.user_id, exc_info=True)
            await refresher(client).opened(actor)

        spawn(publish())

    @app.action(home_blocks.HOME_APPROVE_ACTION)
    async def on_home_approve(ack: AsyncAck, body: dict[str, Any], client: AsyncWebClient) -> None:
        await ack()
        actor = actor_from(body)
        told = await home_approve(sophie, body, actor)
        if actor.user_id:
            spawn(refresher(client).opened(actor, told))

    @app.action(home_blocks.HOME_VIEW_PLAN_ACTION)
    async def on_home_view(ack: AsyncAck, body: dict[str, Any], client: AsyncWebClient) -> None:
        await ack()
        actor = actor_from(body)
        modal, told = await home_view_plan(sophie, body, actor)
        if modal is not None:
            spawn(client.views_open(trigger_id=_text(body.get("trigger_id")), view=modal))
        elif actor.user_id:
            spawn(refresher(client).opened(actor, told))
