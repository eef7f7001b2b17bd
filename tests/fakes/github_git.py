"""The fake GitHub's repositories: commits, branches and GitHub's compare, in memory.

Tests push commits (a tree of path → content per commit) and the fake answers "Compare
two commits" (``GET /repos/{owner}/{repo}/compare/{base}...{head}``) from them, with
what GitHub documents of it:

- "This endpoint is equivalent to running the ``git log BASE..HEAD`` command"; the files
  are the diff from the merge base to head (the three-dot diff), with ``status`` one of
  ``ahead``, ``behind``, ``identical``, ``diverged``
  (https://docs.github.com/en/rest/commits/commits#compare-two-commits);
- "The list of changed files is only shown on the first page of results, and it includes
  up to 300 changed files for the entire comparison" (the same page), and "The maximum
  number of files in a single diff is limited to 300"
  (https://docs.github.com/en/repositories/creating-and-managing-repositories/repository-limits);
- "No single file's diff may exceed 20,000 lines that you can load or 500 KB of raw diff
  data" (the limits page): such a file is listed without its ``patch``, and so is a
  binary one ("Diffs with binary data will have no ``patch`` property", the compare
  page). Stricter where unsure: a pure rename is listed with no ``patch`` either.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field

MAX_FILES = 300
MAX_PATCH_LINES = 20_000
MAX_PATCH_BYTES = 500 * 1024


@dataclass(frozen=True)
class GitCommit:
    sha: str
    parents: tuple[str, ...]
    tree: dict[str, bytes]
    message: str
    order: int  # when it was pushed (chronological order of commit lists)


@dataclass(frozen=True)
class FileDiff:
    """One entry of a comparison's ``files``."""

    filename: str
    status: str
    additions: int
    deletions: int
    blob_sha: str
    patch: str | None
    previous_filename: str | None = None


@dataclass(frozen=True)
class Comparison:
    status: str  # ahead | behind | identical | diverged
    base: GitCommit
    merge_base: GitCommit
    ahead: list[GitCommit]  # in head, not in base: oldest first
    behind_by: int
    files: list[FileDiff]  # every file; the reply lists at most MAX_FILES


class NotFound(LookupError):
    """An unknown ref, or two histories with no common ancestor (GitHub answers 404)."""


def _blob_sha(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _text(content: bytes) -> list[str] | None:
    """The lines of a text file; None for binary content (NUL bytes or not UTF-8)."""
    if b"\0" in content:
        return None
    try:
        return content.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        return None


def _patch(old: bytes | None, new: bytes | None) -> tuple[str | None, int, int]:
    """(patch or None, additions, deletions): git's hunks, no file headers."""
    before = [] if old is None else _text(old)
    after = [] if new is None else _text(new)
    if before is None or after is None:
        return None, 0, 0  # binary: GitHub counts no lines and sends no patch
    lines = list(difflib.unified_diff(before, after, n=3, lineterm=""))[2:]
    additions = sum(1 for line in lines if line.startswith("+"))
    deletions = sum(1 for line in lines if line.startswith("-"))
    patch = "\n".join(lines)
    if not lines or len(lines) > MAX_PATCH_LINES or len(patch.encode()) > MAX_PATCH_BYTES:
        return None, additions, deletions  # nothing to show (an empty file), or too large
    return patch, additions, deletions


def diff_trees(old: dict[str, bytes], new: dict[str, bytes]) -> list[FileDiff]:
    """What changed from ``old`` to ``new``, by path; identical content moved is a rename."""
    removed = {p: c for p, c in old.items() if p not in new}
    added = {p: c for p, c in new.items() if p not in old}
    files: list[FileDiff] = []
    for path in sorted(added):
        source = next((p for p, c in sorted(removed.items()) if c == added[path]), None)
        if source is not None:
            del removed[source]
            files.append(
                FileDiff(
                    path, "renamed", 0, 0, _blob_sha(added[path]), None, previous_filename=source
                )
            )
            continue
        patch, plus, minus = _patch(None, added[path])
        files.append(FileDiff(path, "added", plus, minus, _blob_sha(added[path]), patch))
    for path in sorted(p for p in old if p in new and old[p] != new[p]):
        patch, plus, minus = _patch(old[path], new[path])
        files.append(FileDiff(path, "modified", plus, minus, _blob_sha(new[path]), patch))
    for path in sorted(removed):
        patch, plus, minus = _patch(removed[path], None)
        files.append(FileDiff(path, "removed", plus, minus, _blob_sha(removed[path]), patch))
    return sorted(files, key=lambda f: f.filename)


@dataclass
class GitHistory:
    """Commits and branch heads of every repository the fake serves."""

    commits: dict[str, dict[str, GitCommit]] = field(default_factory=dict)  # repo → sha →
    heads: dict[tuple[str, str], str] = field(default_factory=dict)  # (repo, branch) → sha
    _order: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def push(
        self,
        repo: str,
        files: Mapping[str, str | bytes | None],
        branch: str = "main",
        parent: str | None = None,
        message: str = "",
        merge: str | None = None,
    ) -> str:
        """A new commit on ``branch`` (created if new) on top of ``parent`` (default: the
        branch's head; none for a new branch): ``files`` maps a path to its new content,
        or None to delete it. With ``merge``, a merge commit whose second parent is that
        commit (its tree is the first parent's with ``merge``'s files, then ``files``).
        Returns the commit's sha."""
        shas = self.commits.setdefault(repo, {})
        parent = parent if parent is not None else self.heads.get((repo, branch))
        tree = dict(shas[parent].tree) if parent else {}
        if merge is not None:
            tree.update(shas[merge].tree)
        for path, content in files.items():
            if content is None:
                tree.pop(path, None)
            else:
                tree[path] = content.encode() if isinstance(content, str) else content
        order = next(self._order)
        parents = tuple(p for p in (parent, merge) if p)
        seed = f"{repo}\0{parents}\0{message}\0{order}".encode()
        sha = hashlib.sha1(seed + repr(sorted(tree.items())).encode()).hexdigest()
        shas[sha] = GitCommit(sha, parents, tree, message, order)
        self.heads[(repo, branch)] = sha
        return sha

    def resolve(self, repo: str, ref: str) -> GitCommit:
        """A branch name, a full sha or an unambiguous prefix of at least 7 characters."""
        shas = self.commits.get(repo, {})
        ref = ref.removeprefix("refs/heads/")
        if (repo, ref) in self.heads:
            return shas[self.heads[(repo, ref)]]
        if ref in shas:
            return shas[ref]
        found = [c for s, c in shas.items() if len(ref) >= 7 and s.startswith(ref)]
        if len(found) != 1:
            raise NotFound(ref)
        return found[0]

    def _ancestors(self, repo: str, sha: str) -> dict[str, int]:
        """Every commit reachable from ``sha`` (itself included) → its distance."""
        shas = self.commits[repo]
        seen = {sha: 0}
        todo = [sha]
        while todo:
            current = todo.pop()
            for parent in shas[current].parents:
                if parent not in seen:
                    seen[parent] = seen[current] + 1
                    todo.append(parent)
        return seen

    def compare(self, repo: str, base_ref: str, head_ref: str) -> Comparison:
        base = self.resolve(repo, base_ref)
        head = self.resolve(repo, head_ref)
        of_base = self._ancestors(repo, base.sha)
        of_head = self._ancestors(repo, head.sha)
        common = set(of_base) & set(of_head)
        if not common:
            raise NotFound("no common ancestor")
        merge_sha = min(common, key=lambda s: (of_head[s], of_base[s]))
        merge_base = self.commits[repo][merge_sha]
        ahead = sorted(
            (self.commits[repo][s] for s in of_head if s not in of_base), key=lambda c: c.order
        )
        behind_by = sum(1 for s in of_base if s not in of_head)
        if base.sha == head.sha:
            status = "identical"
        elif not behind_by:
            status = "ahead"
        elif not ahead:
            status = "behind"
        else:
            status = "diverged"
        files = diff_trees(merge_base.tree, head.tree)
        return Comparison(status, base, merge_base, ahead, behind_by, files)
