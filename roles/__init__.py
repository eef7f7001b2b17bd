"""The constitutional core of SOPHIE: plan model, Φ Σ Δ Ω Ψ and the executor loop.

Nothing here knows about Slack, Redis or HTTP; the outside world is reached
only through the protocols in :mod:`roles.ports`.
"""
