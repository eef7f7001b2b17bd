"""Fault injection from outside: a Redis-aware TCP proxy, fake services that fail on cue,
and the fault suite that drives SOPHIE through them (see ``tcp_proxy`` and ``test_*``)."""
