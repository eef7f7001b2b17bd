"""The constitution file, reloaded when it changes on disk."""

from __future__ import annotations

import logging
from pathlib import Path

from roles.constitution import Constitution, ConstitutionError, load_constitution

log = logging.getLogger("sophie.constitution")


class ConstitutionSource:
    """Callable returning the current constitution.

    An edit takes effect on the next call (and voids approvals given under the
    old digest). An invalid edit is logged and the last valid version stays in
    force, so a typo cannot silently relax the rules.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._current = load_constitution(path)
        self._mtime = self._stamp()

    def _stamp(self) -> tuple[int, ...]:
        """The file's mtime and its policies' (adding, editing or removing one counts)."""
        stamps = [self.path.stat().st_mtime_ns]
        if self._current.policies_dir:
            folder = self.path.parent / self._current.policies_dir
            if folder.is_dir():
                stamps.append(folder.stat().st_mtime_ns)
                stamps += [p.stat().st_mtime_ns for p in sorted(folder.glob("*.rego"))]
        return tuple(stamps)

    def __call__(self) -> Constitution:
        try:
            mtime = self._stamp()
        except OSError:
            log.error(
                "constitution %s disappeared; keeping version %s", self.path, self._current.version
            )
            return self._current
        if mtime != self._mtime:
            self._mtime = mtime
            try:
                self._current = load_constitution(self.path)
                log.info("constitution reloaded: version %s", self._current.version)
            except ConstitutionError as exc:
                log.error("constitution edit rejected, keeping the last valid one: %s", exc)
        return self._current
