"""How long planning may take, added up from the model settings (no client imported)."""

from __future__ import annotations

import math

# The OpenAI client's backoff between retries: 0.5 s doubling, at most 8 s (openai._constants).
RETRY_DELAY_FIRST, RETRY_DELAY_MAX = 0.5, 8.0


def planning_deadline(timeout: float, retries: int, models: int, parallel: int = 0) -> float:
    """The longest Σ may take with these settings, added up: per model call the timeout on
    every try plus the client's backoff between tries; per model an answer and one repair;
    the models in waves of ``parallel`` at once (0: all at once).

    Past it the planning flow stops waiting and tells the thread; a job must outlive it
    (``bot.startup_checks.deadline_refusals``)."""
    backoff = sum(min(RETRY_DELAY_FIRST * 2.0**n, RETRY_DELAY_MAX) for n in range(retries))
    per_call = (retries + 1) * timeout + backoff
    waves = math.ceil(models / parallel) if 0 < parallel < models else 1
    return waves * 2 * per_call
