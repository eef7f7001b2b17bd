"""The rollback rule, over deployment histories as GitHub records them (oldest first)."""

from __future__ import annotations

import pytest

from bot.github_gateway import Deployed, live_stack, rollback_choice

G1, G2, G3, BAD, NEVER = ("1" * 40, "2" * 40, "3" * 40, "b" * 40, "f" * 40)


def deploy(sha: str, ok: bool = True, ref: str = "main") -> Deployed:
    return Deployed(sha, ref, ok)


def back_to(sha: str) -> Deployed:
    """A rollback deployment: the template records it with ``ref: deploy_sha``."""
    return Deployed(sha, sha, True)


@pytest.mark.parametrize(
    ("history", "current", "expected"),
    [
        # Two good deploys then a bad one: back to the second.
        ([deploy(G1), deploy(G2), deploy(BAD)], BAD, G2),
        ([deploy(G1), deploy(G2), deploy(BAD)], None, G2),
        # Rolled back to G2, then again: one further back, never to the known-bad commit.
        ([deploy(G1), deploy(G2), deploy(BAD), back_to(G2)], None, G1),
        ([deploy(G1), deploy(G2), deploy(BAD), back_to(G2), back_to(G1)], None, None),
        # The failed run's deploy never went live: redeploy what runs now.
        ([deploy(G1), deploy(G2), deploy(NEVER, ok=False)], NEVER, G2),
        # Failed deployments are not history.
        ([deploy(G1), deploy(BAD, ok=False), deploy(G2)], None, G1),
        # A commit deployed again is a return to it, whoever made it.
        ([deploy(G1), deploy(G2), deploy(G3), deploy(G1)], None, None),
        ([deploy(G1), deploy(G2), deploy(G2)], None, G1),
        # Rolling back a plan below the top undoes what was built on it too.
        ([deploy(G1), deploy(G2), deploy(G3)], G2, G1),
        # A rollback whose commit is older than the history read: its branch is unknown.
        ([back_to(G1), deploy(G2)], None, G1),
        ([], None, None),
        ([deploy(G1)], None, None),
    ],
)
def test_rollback_choice(
    history: list[Deployed], current: str | None, expected: str | None
) -> None:
    found = rollback_choice(history, current)
    assert (found[0] if found else None) == expected


def test_the_branch_is_the_first_deployment_s_not_the_rollback_s() -> None:
    history = [deploy(G1, ref="release"), deploy(BAD), back_to(G1)]
    assert live_stack(history) == [(G1, "release")]
    assert rollback_choice([back_to(G1), deploy(G2)], G2) == (G1, "")  # the default branch
