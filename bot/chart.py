"""The digest's chart: deploys per day (bars) and the median lead time (a line), as a PNG.

Drawn with Pillow (no plotting stack, no fonts to install: Pillow's built-in font),
deterministic: the same days give the same bytes (no timestamps or metadata in the PNG).
"""

from __future__ import annotations

import io
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

from roles.digest import Day

WIDTH, HEIGHT = 640, 260
_MARGIN_LEFT, _MARGIN_RIGHT, _MARGIN_TOP, _MARGIN_BOTTOM = 44, 56, 34, 30
_BACKGROUND = (255, 255, 255)
_AXIS = (120, 120, 120)
_GRID = (232, 232, 232)
_BAR = (54, 123, 214)
_LINE = (230, 126, 34)
_TEXT = (40, 40, 40)


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default()


def _nice_top(value: float) -> float:
    """A round axis maximum at or above ``value`` (1, 2, 5 × 10^n)."""
    if value <= 0:
        return 1.0
    step = 1.0
    while step * 10 <= value:
        step *= 10
    for m in (1, 2, 5, 10):
        if m * step >= value:
            return m * step
    return 10 * step


def _count_top(value: int) -> int:
    """The deploys axis' maximum: a multiple of 4 (whole numbers at each of the 4 lines)."""
    return max(4, -(-value // 4) * 4)


def render(days: Sequence[Day]) -> bytes:
    """A WIDTH × HEIGHT PNG: one bar per day (deploys, left axis) and the median lead time
    in minutes (points joined by a line, right axis; days without deploys have no point)."""
    image = Image.new("RGB", (WIDTH, HEIGHT), _BACKGROUND)
    draw = ImageDraw.Draw(image)
    font = _font()
    left, right = _MARGIN_LEFT, WIDTH - _MARGIN_RIGHT
    top, bottom = _MARGIN_TOP, HEIGHT - _MARGIN_BOTTOM
    draw.text((left, 8), "Deploys per day (bars)", fill=_BAR, font=font)
    draw.text((left + 170, 8), "Median lead time, minutes (line)", fill=_LINE, font=font)

    most = _count_top(max((d.deploys for d in days), default=0))
    leads = [d.lead_p50_seconds for d in days if d.lead_p50_seconds is not None]
    slowest = _nice_top(max(leads, default=0.0) / 60)
    for i in range(5):  # grid and both axes' labels
        y = bottom - (bottom - top) * i / 4
        draw.line([(left, y), (right, y)], fill=_GRID)
        count = most * i / 4
        draw.text((6, y - 6), f"{count:g}", fill=_BAR, font=font)
        draw.text((right + 6, y - 6), f"{slowest * i / 4:g}", fill=_LINE, font=font)
    draw.line([(left, top), (left, bottom), (right, bottom), (right, top)], fill=_AXIS)

    n = max(1, len(days))
    slot = (right - left) / n
    points: list[tuple[float, float]] = []
    for i, day in enumerate(days):
        x0 = left + i * slot
        centre = x0 + slot / 2
        if day.deploys:
            height = (bottom - top) * day.deploys / most
            draw.rectangle(
                [(x0 + slot * 0.2, bottom - height), (x0 + slot * 0.8, bottom - 1)], fill=_BAR
            )
            draw.text((centre - 4, bottom - height - 14), str(day.deploys), fill=_TEXT, font=font)
        draw.text((centre - 8, bottom + 8), day.day.strftime("%a"), fill=_TEXT, font=font)
        if day.lead_p50_seconds is not None:
            y = bottom - (bottom - top) * (day.lead_p50_seconds / 60) / slowest
            points.append((centre, y))
    if len(points) > 1:
        draw.line(points, fill=_LINE, width=2)
    for x, y in points:
        draw.ellipse([(x - 3, y - 3), (x + 3, y + 3)], fill=_LINE)

    out = io.BytesIO()
    image.save(out, format="PNG", optimize=False)
    return out.getvalue()


def filename(days: Sequence[Day]) -> str:
    last = days[-1].day.isoformat() if days else "digest"
    return f"sophie-digest-{last}.png"
