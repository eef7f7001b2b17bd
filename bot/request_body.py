"""Read a request body whole, up to a limit, whatever the app-wide ``client_max_size``.

``request.content.read(n)`` returns what has arrived so far, not ``n`` bytes, so a large
body read that way is silently cut short; this reads to the end of the body.
"""

from __future__ import annotations

from aiohttp import web

CHUNK = 256 * 1024


class TooLarge(Exception):
    """The body is over the limit (declared in Content-Length or counted while reading)."""


async def read_whole(request: web.Request, limit: int) -> bytes:
    declared = request.content_length
    if declared is not None and declared > limit:
        raise TooLarge(f"{declared} bytes declared, limit {limit}")
    parts: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(CHUNK)
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"over {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


def close_after_response(request: web.Request) -> None:
    """Close the connection once the answer is sent, without reading the rest of the body.

    aiohttp otherwise keeps reading (and discarding) an unread body for up to 10 s after
    answering; for a body refused as too large that is bandwidth spent for nothing.
    """
    request.protocol.force_close()
