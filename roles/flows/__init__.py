"""The flows of the SOPHIE loop, one per module.

    intake      a directive arrives once (dedup, rate limits) and becomes a planning job
    planning    Φ Σ Δ: read, propose, evaluate, post the card (and revisions)
    deciding    Ω: approvals, vetoes, request changes, expiry, reminders, veto windows
    dispatching Σ: the signed plan to GitHub exactly once
    tracking    the run until it ends, then Ψ and the result in the thread
    rollback    the Rollback button and /sophie rollback

Each flow is a set of functions over a :class:`~roles.flows.context.Context` (the
ports); state lives in the store, so any replica can run any step.
"""
