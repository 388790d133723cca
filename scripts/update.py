"""`make update [ref=<tag or commit>] [from=<url>]`: merge the template's newer changes.

It merges, file by file with `git merge-file`, what the template changed since the
revision .template.toml records; what it does and why not `git merge`:
docs/development.md, "Keeping up with the template". Both template versions are first
made into this fork as `make init` would make them (the template's own
template/make_fork.py at each, with this fork's name and options), so what `make init`
changed or deleted never conflicts and never comes back. Nothing is committed. Standard
library and git only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import tomllib
import urllib.parse
from collections import Counter
from collections.abc import Collection
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parent.parent
GIT = shutil.which("git") or "git"
RECORD = ROOT / ".template.toml"
# Never part of a fork (template/make_fork.py: TEMPLATE_ONLY), whatever the template adds there.
TEMPLATE_ONLY = [
    "template",
    ".ci",
    ".github/workflows/template.yml",
    "CHANGELOG.md",
    RECORD.name,
]


# Each deploy target, by the doc `make init` removes with it (template/make_fork.py).
TARGET_DOCS = {"vm": "docs/deploy.md", "swarm": "docs/swarm.md", "k8s": "docs/kubernetes.md"}
# The example resources' code: deleted by `make init examples=no`, and by nothing else.
EXAMPLES_CODE = "app/items"


def without_credentials(url: str) -> str:
    """The address with no user or token in it (`https://user:token@host/...`): recorded in
    a committed file and printed, so it must not carry a secret. git asks its credential
    helper for them instead."""
    parts = urllib.parse.urlsplit(url)
    # Over SSH the user (`git@`) is no secret, and the key is elsewhere.
    if "@" not in parts.netloc or parts.scheme not in ("http", "https"):
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def git(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(  # noqa: S603  # git, with arguments built here
        [GIT, *args], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if check and result.returncode != 0:
        shown = " ".join(map(without_credentials, args))
        sys.exit(f"update: git {shown} failed:\n{result.stderr.strip()}")
    return result


def show(revision: str, path: str) -> bytes | None:
    """A file's bytes at a revision, or None where it does not exist."""
    result = subprocess.run(  # noqa: S603  # git, with arguments built here
        [GIT, "show", f"{revision}:{path}"], cwd=ROOT, capture_output=True, check=False
    )
    return result.stdout if result.returncode == 0 else None


def name_at(revision: str) -> str:
    pyproject = show(revision, "pyproject.toml") or b""
    return str(tomllib.loads(pyproject.decode())["project"]["name"])


def init_options(removed: Collection[str], base_revision: str) -> list[str]:
    """The `make init` options this fork was made with, from what it deleted (a target
    newer than the fork's revision was not chosen: it stays out)."""
    targets = [
        target
        for target, doc in TARGET_DOCS.items()
        if doc not in removed and show(base_revision, doc) is not None
    ]
    options = [f"--targets={','.join(targets) or ','}"]
    return [*options, "--examples=no"] if EXAMPLES_CODE in removed else options


def generated(revision: str, name: str, options: list[str], scratch: Path) -> dict[str, Path]:
    """The fork `make init name=<name> <options>` makes at `revision`, by its own
    template/make_fork.py on an export of it: each file by its path."""
    tree = scratch / revision
    tree.mkdir()
    archive = subprocess.run(  # noqa: S603  # git, with arguments built here
        [GIT, "archive", "--format=tar", revision], cwd=ROOT, capture_output=True, check=True
    ).stdout
    tar = shutil.which("tar") or "tar"
    subprocess.run([tar, "-x", "-C", str(tree)], input=archive, check=True)  # noqa: S603
    maker = tree / "template" / "make_fork.py"
    if not maker.is_file():
        # Before template/make_fork.py (the first releases with `make update`),
        # scripts/init.py made the fork; the .env here keeps it from writing one.
        maker = tree / "scripts" / "init.py"
        if b"def make_fork(" not in (maker.read_bytes() if maker.is_file() else b""):
            sys.exit(f"update: {revision[:12]} has no template/make_fork.py: not the template")
        (tree / ".env").touch()
    made = subprocess.run(  # noqa: S603  # the template's own script, as `make init` runs it
        # -B: it imports this file's copy in the export, and a __pycache__ left there
        # would be merged into the fork as the template's.
        [sys.executable, "-B", str(maker), f"--name={name}", *options],
        cwd=tree, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if made.returncode != 0:
        sys.exit(f"update: making the fork at {revision[:12]} failed:\n{made.stderr.strip()}")
    (tree / ".env").unlink(missing_ok=True)
    files = (path for path in tree.rglob("*") if path.is_symlink() or path.is_file())
    return {
        str(path.relative_to(tree)): path
        for path in files
        if path.relative_to(tree).parts[0] not in TEMPLATE_ONLY
    }


# A file as git sees it: its mode ("100644", "100755" or "120000", a symlink) and its
# bytes (a symlink's: where it points). Read without following symlinks, so a link is
# merged as a link and nothing is ever written through one.
Version = tuple[str, bytes]
LINK = "120000"


def version(path: Path) -> Version | None:
    if path.is_symlink():
        return LINK, os.readlink(path).encode()
    if path.is_file():
        return ("100755" if os.access(path, os.X_OK) else "100644"), path.read_bytes()
    return None


def write(target: Path, new: Version) -> None:
    if target.is_symlink() or target.exists():
        target.unlink()
    target.parent.mkdir(parents=True, exist_ok=True)
    mode, data = new
    if mode == LINK:
        target.symlink_to(data.decode())
    else:
        target.write_bytes(data)
        target.chmod(0o755 if mode == "100755" else 0o644)


# A TypeVar, not PEP 695's syntax: this file runs on the host's Python, 3.11 or newer.
Side = TypeVar("Side", bytes, str)


def three_way(ours: Side, base: Side | None, theirs: Side) -> Side | None:  # noqa: UP047
    """One side's change, or None when both sides changed it differently."""
    if theirs in (ours, base):
        return ours
    if ours == base:
        return theirs
    return None


def remove_empty_parents(removed: Path) -> None:
    """As git does: no empty directory left behind by a file removed or moved."""
    for parent in removed.parents:
        if parent == ROOT or not parent.is_dir() or any(parent.iterdir()):
            break
        parent.rmdir()


def in_the_way(path: str, tracked: set[str]) -> str | None:
    """Something of the fork's that nothing may be written into or deleted through: a
    directory where `path` needs a file, a file or symlink where it needs a directory,
    or a file git ignores (it could not be restored)."""
    target = ROOT / path
    if target.is_dir() and not target.is_symlink():
        return path
    for parent in Path(path).parents:
        if str(parent) != "." and ((ROOT / parent).is_symlink() or (ROOT / parent).is_file()):
            return str(parent)
    if (target.is_symlink() or target.exists()) and path not in tracked:
        return f"{path}, which git ignores"
    return None


def merge(
    path: str,
    base: Version | None,
    theirs: Version | None,
    gone: set[str],
    ours_at: str | None = None,
) -> str:
    """Merge one file into the working tree; return what happened. `gone`: directories
    the fork deleted. `ours_at`: where the fork has it, when the template renamed it."""
    target = ROOT / path
    ours = version(ROOT / (ours_at or path))
    if ours == theirs:
        return "same"
    if theirs is None:  # the template deleted it
        if ours != base:
            return "kept (changed here, deleted in the template)"
        target.unlink()
        remove_empty_parents(target)
        return "deleted"
    # Changed in the template, or new in a directory this fork deleted (its resource).
    folder_gone = any(str(parent) in gone for parent in Path(path).parents)
    if ours is None and (base is not None or folder_gone):
        return "skipped (deleted here, or its directory)"
    if ours is None or ours == base:  # only the template changed it: take its version
        write(target, theirs)
        return "added" if ours is None else "updated"
    return merge_both(path, ours, base, theirs)


def merge_both(path: str, ours: Version, base: Version | None, theirs: Version) -> str:
    """Both sides changed it: the mode and the bytes each take the side that changed."""
    mode = three_way(ours[0], base and base[0], theirs[0])
    data = three_way(ours[1], base and base[1], theirs[1])
    merged: tuple[bytes, str] | None = (data, "merged") if data is not None else None
    if LINK in (ours[0], theirs[0], base and base[0]):  # a link: one side whole, or neither
        merged = (ours[1], "merged") if theirs == base else None
        mode = ours[0]
    elif merged is None:  # both changed the text
        merged = merge_file(ours[1], base[1] if base else b"", theirs[1])
    if merged is None:  # binary (git cannot merge it line by line) or a symlink
        beside = Path(f"{path}.template")
        write(ROOT / beside, theirs)
        unmerged(path, base, ours, theirs)
        return f"CONFLICT (binary or symlink: yours kept, the template's in {beside})"
    write(ROOT / path, (mode or ours[0], merged[0]))
    if merged[1] == "CONFLICT":
        unmerged(path, base, ours, theirs)
    return merged[1]


def unmerged(path: str, base: Version | None, ours: Version, theirs: Version) -> None:
    """Record the three versions in git's index, as `git merge` does: `git status` lists
    the file as unmerged and `git commit` refuses until `git add` marks it resolved (so
    conflict markers are not committed by mistake); `git checkout --theirs` and
    `git mergetool` work on it."""
    entries = []
    for stage, side in ((1, base), (2, ours), (3, theirs)):
        if side is not None:
            blob = subprocess.run(  # noqa: S603  # git, with arguments built here
                [GIT, "hash-object", "-w", "--stdin"],
                cwd=ROOT, input=side[1], capture_output=True, check=True,
            ).stdout.decode().strip()  # fmt: skip
            entries.append(f"{side[0]} {blob} {stage}\t{path}\0")
    # A mode-0 entry first removes the path's resolved entry (the fork's committed one).
    info = f"0 {'0' * len(blob)}\t{path}\0" + "".join(entries)
    subprocess.run(  # noqa: S603  # git, with arguments built here
        [GIT, "update-index", "-z", "--index-info"],
        cwd=ROOT, input=info.encode(), capture_output=True, check=True,
    )  # fmt: skip


def merge_file(ours: bytes, base: bytes, theirs: bytes) -> tuple[bytes, str] | None:
    """Both sides changed the text: merge the template's change into it, line by line.
    None for files git finds binary."""
    with tempfile.TemporaryDirectory() as scratch:
        files = [Path(scratch, side) for side in ("ours", "base", "theirs")]
        for file, data in zip(files, (ours, base, theirs), strict=True):
            file.write_bytes(data)
        labels = ["-L", "yours", "-L", "template (base)", "-L", "template"]
        result = git("merge-file", *labels, *map(str, files), check=False)
        if "Cannot merge binary files" in result.stderr:
            return None
        if not 0 <= result.returncode < 128:  # an error, not a count of conflicts
            sys.exit(f"update: git merge-file failed:\n{result.stderr.strip()}")
        return files[0].read_bytes(), ("merged" if result.returncode == 0 else "CONFLICT")


def fetch(url: str, ref: str) -> str:
    """The template's commit for a tag, branch or commit, fetched into refs/template/*."""
    print(f"update: fetching the template from {without_credentials(url)}")
    git("fetch", "--quiet", "--no-tags", "--force", url, "HEAD:refs/template/HEAD",
        "refs/heads/*:refs/template/heads/*", "refs/tags/*:refs/template/tags/*")  # fmt: skip
    candidates = [f"refs/template/{kind}{ref}" for kind in ("tags/", "heads/", "")] + [ref]
    for candidate in candidates:
        found = git("rev-parse", "--verify", "--quiet", f"{candidate}^{{commit}}", check=False)
        commit = found.stdout.strip()
        # A bare commit id must be the template's, not this fork's own tag or branch.
        if (
            found.returncode == 0
            and git("for-each-ref", "--contains", commit, "refs/template").stdout.strip()
        ):
            return commit
    sys.exit(f"update: no tag, branch or commit {ref!r} in the template")


def in_template(revision: str, target: str) -> str:
    """The template's commit for the recorded revision. A fork made from a copy of the
    template ("Use this template") recorded its own first commit: the template's commit
    is then the one with the same tree."""
    if git("for-each-ref", "--contains", revision, "refs/template", check=False).stdout.strip():
        return revision
    tree = git("rev-parse", "--verify", "--quiet", f"{revision}^{{tree}}", check=False).stdout
    listed = git("log", "--format=%H %T", "--glob=refs/template/*").stdout.split("\n")
    found = [line.split()[0] for line in listed if tree.strip() and line.endswith(tree.strip())]
    if not found:
        # The fork's own commits before `make init` (a CODEOWNERS on a GitHub fork): the
        # template's commit is the newest one they share.
        shared = git("merge-base", revision, target, check=False).stdout.strip()
        if shared:
            print(f"update: {revision[:12]} is not the template's; it was made from {shared[:12]}")
            return shared
        sys.exit(f"update: the recorded revision {revision[:12]} is not in the template")
    print(
        f"update: {revision[:12]} is not the template's; its tree is the template's {found[0][:12]}"
    )
    return found[0]


def self_update(base_revision: str, target: str) -> None:
    """Run the template's newer updater: it may merge better than this one. Only while
    this file is as the recorded revision had it (a fork's own changes win)."""
    me = Path(__file__).resolve()
    mine, newer = me.read_bytes(), show(target, "scripts/update.py")
    if newer is None or newer == mine or not templates_own(mine, target):
        return
    me.write_bytes(newer)
    print(f"update: running the template's scripts/update.py at {target[:12]}")
    os.execv(sys.executable, [sys.executable, str(me), *sys.argv[1:], "--self-updated"])  # noqa: S606


def templates_own(data: bytes, target: str) -> bool:
    """Whether scripts/update.py is a copy the template has had (the recorded revision's,
    or another taken by hand as an upgrade note says), not one the fork changed."""
    blob = (
        subprocess.run(  # noqa: S603  # git, with arguments built here
            [GIT, "hash-object", "--stdin"], cwd=ROOT, input=data, capture_output=True, check=True
        )
        .stdout.decode()
        .strip()
    )
    history = git(
        "log", "--format=", "--raw", "--no-abbrev", target, "--glob=refs/template/*",
        "--", "scripts/update.py",
    )  # fmt: skip
    return any(blob in line.split()[2:4] for line in history.stdout.splitlines() if line)


ALEMBIC_ID = re.compile(r"^(down_)?revision(?:: [^=]+)? = (.+)$", re.MULTILINE)


def alembic_heads() -> list[str]:
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (ROOT / "alembic" / "versions").glob("*.py"):
        for down, value in ALEMBIC_ID.findall(path.read_text(encoding="utf-8")):
            (parents if down else revisions).update(re.findall(r'"([0-9a-zA-Z_]+)"', value))
    return sorted(revisions - parents)


def merge_heads() -> str | None:
    """The template's new migrations and the fork's own both follow the same revision:
    two heads, which `alembic upgrade head` refuses. Join them, as `alembic merge heads`
    would, with an empty migration after both."""
    heads = alembic_heads()
    if len(heads) < 2:  # one head is a straight line
        return None
    revision, now = secrets.token_hex(6), datetime.now(UTC)
    parents = "(" + ", ".join(f'"{head}"' for head in heads) + ")"
    versions = ROOT / "alembic" / "versions"
    path = versions / f"{now:%Y_%m_%d_%H%M}-{revision}_merge_template_update.py"
    path.write_text(
        f'''"""merge the template's migrations with this service's

Revision ID: {revision}
Revises: {", ".join(heads)}
Create Date: {now.isoformat(sep=" ")}
"""

from collections.abc import Sequence

revision: str = "{revision}"
down_revision: str | Sequence[str] | None = {parents}
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
''',
        encoding="utf-8",
    )
    return str(path.relative_to(ROOT))


def renames(base_revision: str, target: str) -> dict[str, str]:
    """The files the template renamed (moved, perhaps changed a little): old path by new."""
    fields = iter(
        git("diff", "--name-status", "-M", "-z", base_revision, target).stdout.split("\0")
    )
    found: dict[str, str] = {}
    for status in fields:  # a status, then one path, or two for a rename or copy
        if status.startswith(("R", "C")):
            old, new = next(fields), next(fields)
            if status.startswith("R"):
                found[new] = old
        elif status:
            next(fields)
    return found


def merge_all(
    base_revision: str, target: str, removed: list[str], args: argparse.Namespace
) -> tuple[dict[str, list[str]], int]:
    """Merge every file the template changed; the outcomes, and how many were left out."""
    name, options = name_at("HEAD"), init_options(removed, base_revision)
    tracked = set(filter(None, git("ls-files", "-z").stdout.split("\0")))
    outcomes: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        base = {
            path: version(file)
            for path, file in generated(base_revision, name, options, Path(scratch)).items()
        }
        theirs = {
            path: version(file)
            for path, file in generated(target, name, options, Path(scratch)).items()
        }
        # The template's directories this fork no longer tracks: it deleted them.
        gone = {str(parent) for path in base for parent in Path(path).parents} - {
            str(parent) for path in tracked for parent in Path(path).parents
        }
        moved = renamed(base_revision, target, base, theirs, tracked)
        args.writing = True
        # Deletions first: a directory the template replaces with a file is gone by then.
        paths = sorted(set(base) | set(theirs), key=lambda path: (path in theirs, path))
        for path in paths:
            old = moved.get(path)
            before, after = base.get(old or path), theirs.get(path)
            if path == RECORD.name or path in moved.values() or (before == after and not old):
                continue
            clash = in_the_way(path, tracked)
            ours_at = old if old in tracked else None
            outcome = (
                merge(path, before, after, gone, ours_at=ours_at)
                if clash is None
                else f"CONFLICT (yours in the way: {clash})"
            )
            shown = path
            if old is not None:
                if ours_at and outcome.startswith("CONFLICT (binary"):
                    (ROOT / old).rename(ROOT / path)  # yours at the new path, beside the template's
                    remove_empty_parents(ROOT / old)
                elif ours_at and outcome in ("same", "updated", "merged", "CONFLICT"):
                    if outcome == "same" and after is not None:
                        write(ROOT / path, after)
                    (ROOT / old).unlink()  # moved: the fork's copy is at `path` now
                    remove_empty_parents(ROOT / old)
                shown, outcome = f"{old} -> {path}", f"{outcome} (renamed in the template)"
            outcomes.setdefault(outcome, []).append(shown)
    changed = git("diff", "--name-only", "--no-renames", "-z", base_revision, target).stdout
    merged = sum(len(paths) for paths in outcomes.values()) + len(moved)
    return outcomes, max(0, len(list(filter(None, changed.split("\0")))) - merged)


def renamed(
    base_revision: str,
    target: str,
    base: dict[str, Version | None],
    theirs: dict[str, Version | None],
    tracked: set[str],
) -> dict[str, str]:
    """The files the template renamed, old path by new, that merge as renames here: from
    the old path (the fork's changes move with it), or from the new one when the fork
    made the same rename, or not at all (skipped) when the fork deleted it. Not when the
    fork has files at both paths, or something in the way of either."""
    return {
        new: old
        for new, old in renames(base_revision, target).items()
        if old in base and new in theirs and new not in base and old not in theirs
        and not (old in tracked and new in tracked)
        and in_the_way(old, tracked) is None and in_the_way(new, tracked) is None
    }  # fmt: skip


def changelog_entries(text: bytes | None) -> list[str]:
    """CHANGELOG.md's entries, whole: each release heading, and each top-level item with
    the lines under it (an entry changed since is shown whole, not as changed lines)."""
    entries: list[str] = []
    for line in (text or b"").decode().splitlines():
        if line.startswith(("## ", "- ")) or not entries:
            entries.append(line)
        elif line.strip():
            entries[-1] += "\n" + line
    return [entry for entry in entries if entry.startswith(("## ", "- "))]


def report(base_revision: str, target: str, outcomes: dict[str, list[str]], left_out: int) -> None:
    print(f"update: merged the template's changes {base_revision[:12]}..{target[:12]}")
    for outcome, paths in sorted(outcomes.items()):
        print(f"  {outcome}: {len(paths)}")
        if outcome != "same":
            print("".join(f"    {path}\n" for path in paths), end="")
    print(f"  left out (the template's own, or removed by make init): {left_out}")
    # Counted, not a set: a note the template repeats in a later release is new there.
    seen = Counter(changelog_entries(show(base_revision, "CHANGELOG.md")))
    notes = []
    for entry in changelog_entries(show(target, "CHANGELOG.md"))[::-1]:  # oldest first
        if seen[entry] > 0:
            seen[entry] -= 1
        else:
            notes.append(entry)
    notes.reverse()
    if notes:
        print(
            "update: the template's CHANGELOG entries since then, new or changed (upgrade notes):"
        )
        print("".join(f"  {line}\n" for entry in notes for line in entry.splitlines()), end="")
    print(f"update: {RECORD.name} now records {target[:12]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref", help="the template's tag, branch or commit (default: its HEAD)")
    parser.add_argument("--from", dest="url", help="the template's address (default: recorded)")
    parser.add_argument("--self-updated", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.writing = False  # set once the merge writes its first file
    try:
        update(args)
    except BaseException:  # an exit, an error, Ctrl-C: whatever ends the run
        # Before the merge wrote anything: back to this fork's own copy, or a new run
        # would be refused. After, the newer copy is part of the update (merged "same").
        if args.self_updated and not args.writing:
            git("checkout", "HEAD", "--", "scripts/update.py", check=False)
        raise


def update(args: argparse.Namespace) -> None:
    if not RECORD.is_file():
        sys.exit(f"update: no {RECORD.name}: this checkout was not made with `make init name=…`")
    recorded = tomllib.loads(RECORD.read_text(encoding="utf-8"))
    url = args.url or recorded.get("url") or ""
    if not url:
        sys.exit("update: the template's address is unknown: make update from=<url>")
    # Untracked files too: the update writes new files, and would write into one of
    # yours (or a migration of yours would be joined to the template's by merge_heads).
    dirty = git("status", "--porcelain", "--untracked-files=all").stdout.splitlines()
    if [line for line in dirty if not (args.self_updated and line.endswith("scripts/update.py"))]:
        if git("diff", "--quiet", "HEAD", "--", RECORD.name, check=False).returncode != 0:
            sys.exit(
                "update: an update is in progress (.template.toml is changed): resolve its"
                " conflicts (git status),\n        `git add -A` and commit it; or abandon it:"
                " git reset --hard && git clean -fd"
            )
        listed = "".join(f"\n  {line}" for line in dirty[:10])
        more = f"\n  ... and {len(dirty) - 10} more" if len(dirty) > 10 else ""
        sys.exit(
            f"update: commit, stash (git stash -u) or remove your changes first:{listed}{more}"
        )
    # Markers an earlier update left, committed with `git add -A`: resolve them first.
    markers = git("grep", "-l", "-I", "-e", "^<<<<<<< yours$", check=False).stdout.split()
    if markers:
        listed = "".join(f"\n  {path}" for path in markers)
        sys.exit(f"update: conflict markers left by an earlier update; resolve them first:{listed}")
    target = fetch(url, args.ref or "HEAD")
    if show(target, RECORD.name) is not None:
        sys.exit(
            f"update: {without_credentials(url)} is a fork (it has {RECORD.name}), not the "
            "template: make update from=<the template's address>"
        )
    base_revision = in_template(str(recorded["revision"]), target)
    if git("merge-base", "--is-ancestor", target, base_revision, check=False).returncode == 0:
        # The same revision, or an older one: an update never takes a fork back.
        where = "at it" if target == base_revision else f"at {base_revision[:12]}, which has it"
        print(f"update: up to date with {target[:12]} (this fork is {where}); nothing to do")
        # Except two migration heads an earlier updater left (one that did not join them).
        joined = merge_heads()
        if joined:
            print(f"update: your migrations had two heads; joined by {joined}: commit it")
        return
    if git("merge-base", "--is-ancestor", base_revision, target, check=False).returncode != 0:
        sys.exit(f"update: {target[:12]} does not follow {base_revision[:12]}: not an update")
    if not args.self_updated:
        self_update(base_revision, target)

    removed = [str(path) for path in recorded["removed"]]
    outcomes, left_out = merge_all(base_revision, target, removed, args)
    record(target, base_revision, removed, url)
    report(base_revision, target, outcomes, left_out)
    finish(outcomes, f"{args.ref or 'HEAD'} ({target[:12]})")


def record(target: str, base_revision: str, removed: list[str], url: str) -> None:
    """.template.toml, rewritten for the revision the fork is now at."""
    text = RECORD.read_text(encoding="utf-8")
    text = re.sub(r"^revision = .*$", f"revision = {json.dumps(target)}", text, flags=re.M)
    # A deploy target newer than the fork's revision was left out: recorded as removed,
    # so the next update leaves it out too.
    newer = [doc for doc in TARGET_DOCS.values() if show(base_revision, doc) is None]
    if newer and not set(newer) <= set(removed):
        listed = "".join(f"    {json.dumps(path)},\n" for path in sorted({*removed, *newer}))
        text = re.sub(r"^removed = \[.*?^\]", f"removed = [\n{listed}]", text, flags=re.M | re.S)
    # The address the next update uses too (from= changes it). A token an older `make
    # init` recorded goes (a committed file): git's credential helper supplies it now.
    if without_credentials(url) != url:
        print(f"update: {RECORD.name}'s url no longer carries the credentials it had")
    address = json.dumps(without_credentials(url))
    text = re.sub(r"^url = .*$", f"url = {address}", text, flags=re.M)
    RECORD.write_text(text, encoding="utf-8")


def finish(outcomes: dict[str, list[str]], to: str) -> None:
    """Join the migrations if need be, and say what is left to do."""
    merged = merge_heads()
    if merged:
        print(f"update: the template's migrations and yours both followed one; joined by {merged}")
    conflicts = [p for o, paths in outcomes.items() if o.startswith("CONFLICT") for p in paths]
    if outcomes.get("kept (changed here, deleted in the template)"):
        print("update: decide on each kept file: the template no longer has it (git rm it,")
        print("        or keep it as yours)")
    review = "`git status` and `git diff` (new files are untracked until `git add -A`)"
    commit = f'`git add -A && git commit -m "Update from the template to {to}"`'
    if conflicts:
        print(f"update: {len(conflicts)} conflicts, unmerged in git's index until resolved:")
        print("".join(f"    {path}\n" for path in conflicts), end="")
        print("        resolve the <<<<<<< markers (a binary or symlink: the template's version")
        print("        is beside it, .template: delete that copy once resolved), review")
        print(f"        {review}, then {commit};")
        print("        to abandon the update: git reset --hard && git clean -fd")
        if any(path == "Makefile" or path.startswith("mk/") for path in conflicts):
            print("        make cannot read a Makefile with markers: until they are resolved,")
            print("        run the updater as python3 scripts/update.py")
        sys.exit(1)
    print(f"next: review {review}, then {commit}")


if __name__ == "__main__":
    main()
