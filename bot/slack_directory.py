"""Slack user-group membership for approver checks, cached briefly."""

from __future__ import annotations

import logging
import time

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

log = logging.getLogger("sophie.slack")


class SlackDirectory:
    """Implements :class:`roles.ports.Directory` with ``usergroups.users.list``."""

    def __init__(self, client: AsyncWebClient, ttl_seconds: float = 60.0) -> None:
        self.client = client
        self.ttl = ttl_seconds
        self._cache: dict[str, tuple[float, frozenset[str]]] = {}

    async def members(self, group: str) -> frozenset[str]:
        cached = self._cache.get(group)
        if cached and time.monotonic() - cached[0] < self.ttl:
            return cached[1]
        try:
            resp = await self.client.usergroups_users_list(usergroup=group)
            users = frozenset(resp.get("users") or [])
        except SlackApiError as exc:
            # Fail closed: an unreadable group grants nobody anything.
            log.warning("cannot read user group %s: %s", group, exc.response.get("error"))
            users = frozenset()
        self._cache[group] = (time.monotonic(), users)
        return users

    async def groups_of(self, user_id: str, candidate_groups: list[str]) -> set[str]:
        return {g for g in candidate_groups if user_id in await self.members(g)}
