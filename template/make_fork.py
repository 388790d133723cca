"""`make init name=acme-orders [targets=vm,swarm,k8s] [examples=no]`, on the template's
own checkout, once: makes it a fork. Deleted with template/, which it deletes itself.

- Names the service: pyproject.toml's [project] name, the one place the name lives
  (the Makefile, the Compose files, the image and the app read it from there),
  uv.lock's entry for it and the README's title.
- Deletes what proves only the template (template/, .ci/, its workflow, its
  CHANGELOG, its measured runs), the deploy targets not in `targets` (default: vm)
  and, with `examples=no`, the example resources (items, orders) and their tests.
- Records the template's address and revision, and what it deleted, in
  .template.toml: `make update` merges the template's later changes from there.

scripts/init.py then writes .env. Standard library only, Python 3.11 or newer.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Collection
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from scripts.update import without_credentials  # noqa: E402  # the fork's own updater's

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
NAME_MAX_LENGTH = 50
# Written here, read and rewritten by `make update` (scripts/update.py).
RECORD = ".template.toml"

# What proves only the template: never part of a fork, never merged by `make update`.
TEMPLATE_ONLY = [
    "template",
    ".ci",
    ".github/workflows/template.yml",
    "CHANGELOG.md",
]
# Each deploy target: its files, docs, checks and nightly workflow.
TARGETS = {
    "vm": [
        "mk/vm.mk",
        "scripts/deploy.sh",
        "docs/deploy.md",
        ".github/workflows/vm.yml",
    ],
    "swarm": [
        "mk/swarm.mk",
        "deploy/swarm",
        "scripts/swarm",
        "scripts/swarm-e2e.sh",
        "docs/swarm.md",
        ".github/workflows/swarm.yml",
    ],
    "k8s": [
        "mk/k8s.mk",
        "deploy/k8s",
        "scripts/k8s_policy.py",
        "scripts/k8s_validate.py",
        "docs/kubernetes.md",
        ".github/workflows/kubernetes.yml",
    ],
}
# The example resources and everything that exists only for them.
EXAMPLES = ["items", "orders"]
# Lean by default: Swarm and Kubernetes only when asked for (targets=vm,swarm,k8s).
DEFAULT_TARGETS = "vm"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """Run a command in the checkout; arguments are ours, never user input to a shell."""
    program = shutil.which(args[0]) or args[0]
    return subprocess.run(  # noqa: S603  # a fixed program with arguments built here
        [program, *args[1:]], cwd=ROOT, capture_output=True, text=True, check=False
    )


def project_name() -> str:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return str(data["project"]["name"])


def substitute(relative: str, pattern: str, replacement: str, count: int = 0) -> None:
    path = ROOT / relative
    if path.is_file():
        text = path.read_text(encoding="utf-8")
        new = re.sub(pattern, replacement, text, count=count, flags=re.MULTILINE)
        path.write_text(new, encoding="utf-8")


def rename(current: str, name: str) -> None:
    """The name's one place, the lock's copy of it, and the README's title."""
    title = name.replace("-", " ").capitalize()
    substitute("pyproject.toml", rf'^name = "{re.escape(current)}"$', f'name = "{name}"', 1)
    # What `uv lock` would write: the project's own entry is the one line that changes.
    substitute("uv.lock", rf'^name = "{re.escape(current)}"$', f'name = "{name}"', 1)
    substitute("README.md", r"^# .*$", f"# {title}", 1)
    substitute("README.md", re.escape(current), name)


def remove(paths: list[str]) -> list[str]:
    """Delete each path that exists (file or directory); return those deleted."""
    removed = []
    for relative in paths:
        path = ROOT / relative
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(relative)
    return removed


def is_examples_mark(decorator: ast.expr) -> bool:
    return ast.unparse(decorator) == "pytest.mark.examples"


def names_used(tree: ast.AST) -> set[str]:
    """Every name the code reads. A string that parses as an expression counts too
    (string annotations, `cast("T", x)`, `__all__`, type aliases); a docstring or a
    comment does not: a word there is not a use."""
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    used: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            used.add(node.id)
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
        ):
            try:
                used |= names_used(ast.parse(node.value.strip(), mode="eval"))
            except (SyntaxError, ValueError):  # prose, or not text at all (a surrogate)
                continue
    return used


def unused_imports(tree: ast.Module, lines: list[str]) -> None:
    """Drop the names a module imports but no longer uses (after tests were cut)."""
    used = names_used(tree)
    imports = [s for s in tree.body if isinstance(s, ast.Import | ast.ImportFrom)]
    for statement in reversed(imports):
        start, end = statement.lineno - 1, statement.end_lineno or statement.lineno
        future = isinstance(statement, ast.ImportFrom) and statement.module == "__future__"
        if future or any("noqa: F401" in line for line in lines[start:end]):
            continue  # kept for its side effect, as its noqa says
        kept = [
            alias for alias in statement.names if (alias.asname or alias.name).split(".")[0] in used
        ]
        if len(kept) == len(statement.names):
            continue
        if isinstance(statement, ast.ImportFrom) and kept:
            names = ", ".join(ast.unparse(alias) for alias in kept)
            lines[start:end] = [f"from {'.' * statement.level}{statement.module} import {names}\n"]
        elif kept:
            lines[start:end] = [f"import {ast.unparse(alias)}\n" for alias in kept]
        else:
            del lines[start:end]


def drop_example_tests(path: Path) -> bool:
    """Delete the tests marked `examples` from a module; True if there were any."""
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source)
    marked = [
        node
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and any(is_examples_mark(d) for d in node.decorator_list)
    ]
    if not marked:
        return False
    lines = source.splitlines(keepends=True)
    for node in reversed(marked):
        start = min(d.lineno for d in node.decorator_list) - 1
        del lines[start : node.end_lineno]
    tree = ast.parse("".join(lines))
    unused_imports(tree, lines)
    text = re.sub(r"\n{3,}(?=\S)", "\n\n\n", "".join(lines)).rstrip("\n") + "\n"
    # A group of imports emptied leaves two blank lines where isort wants one.
    imports = [s for s in ast.parse(text).body if isinstance(s, ast.Import | ast.ImportFrom)]
    if imports:
        head, tail = text.split("\n")[: imports[-1].lineno], text.split("\n")[imports[-1].lineno :]
        text = re.sub(r"\n{3,}", "\n\n", "\n".join(head)) + "\n" + "\n".join(tail)
    path.write_text(text, encoding="utf-8")
    return True


DOWN_REVISION = re.compile(r'^(down_revision: .* = )"(\w+)"$', re.MULTILINE)
REVISION = re.compile(r'^revision: .* = "(\w+)"$', re.MULTILINE)


def relink_migrations(dropped: list[Path]) -> None:
    """A kept migration that follows a dropped one (core's, after the examples') now
    follows the nearest kept migration before it, so the chain stays one line."""
    parents: dict[str, str | None] = {}
    for path in (ROOT / "alembic" / "versions").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        revision, parent = REVISION.search(text), DOWN_REVISION.search(text)
        if revision:
            parents[revision.group(1)] = parent.group(2) if parent else None
    gone = set()
    for path in dropped:
        revision = REVISION.search(path.read_text(encoding="utf-8"))
        if revision:
            gone.add(revision.group(1))
    for path in (ROOT / "alembic" / "versions").glob("*.py"):
        if path in dropped:
            continue
        text = path.read_text(encoding="utf-8")
        parent = DOWN_REVISION.search(text)
        if not parent or parent.group(2) not in gone:
            continue
        kept = parents.get(parent.group(2))
        while kept is not None and kept in gone:
            kept = parents.get(kept)
        value = f'"{kept}"' if kept else "None"
        text = DOWN_REVISION.sub(rf"\g<1>{value}", text, count=1)
        text = re.sub(r"^Revises: \w+$", f"Revises: {kept or ''}".rstrip(), text, flags=re.M)
        path.write_text(text, encoding="utf-8")


def drop_examples() -> list[str]:
    """Delete the example resources (code, tests, migrations) and their wiring."""
    paths = [f"{top}/{example}" for example in EXAMPLES for top in ("app", "tests")]
    paths += [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / "alembic" / "versions").glob("*.py"))
        if re.search(r"\b(items|orders)\b", path.read_text(encoding="utf-8"))
    ]
    paths += ["scripts/seed.py", "mk/seed.mk", "api.http"]
    relink_migrations([ROOT / path for path in paths if path.startswith("alembic/")])
    removed = remove(paths)
    (ROOT / "alembic" / "versions" / ".gitkeep").touch()
    for test in sorted((ROOT / "tests").rglob("test_*.py")):
        drop_example_tests(test)
    for example in EXAMPLES:
        substitute("app/main.py", rf"^from app\.{example}\.router import .*\n", "")
        substitute("app/main.py", rf"^\s*{example}_router,\n", "")
        substitute("app/worker.py", rf"^from app\.{example}\.jobs import .*\n", "")
        substitute("app/worker.py", rf"^\s*register_{example}\(jobs\)\n", "")
        substitute("pyproject.toml", rf'^\s*"(app|tests)\.{example}",\n', "")
    # An empty list would be formatted onto one line, where `make resource` looks for two.
    pattern = r"^( *)api_routers=\[\n *\],$"
    substitute("app/main.py", pattern, r"\1api_routers=[\n\1    # none yet\n\1],")
    return removed


def record(revision: str, url: str, removed: list[str]) -> None:
    lines = [
        "# The template this service was made from. `make update` merges the template's",
        "# changes since `revision` and rewrites it; `removed` lists what `make init`",
        "# deleted on purpose, which updates leave out.",
        f"url = {json.dumps(url)}",
        f"revision = {json.dumps(revision)}",
        "removed = [",
        *(f"    {json.dumps(path)}," for path in sorted(removed)),
        "]",
    ]
    (ROOT / RECORD).write_text("\n".join(lines) + "\n", encoding="utf-8")


# Text about one deploy target, or about the example resources (`examples`), sits inside
# marks, so a fork without them has no link or check aimed at what it lacks. In the docs:
# a line ending in ` <!-- only:swarm -->`, or whole lines between `<!-- only:k8s -->` and
# `<!-- /only:k8s -->`, invisible in the rendered page. In shell scripts: the same with
# comments, a line ending in ` # only:examples`, or lines between `# only:examples` and
# `# /only:examples`. `make init` deletes the marked text of what it drops, marks and all,
# with the functions below.
DOC_MARKS = (
    re.compile(
        r"^(\n?)<!-- only:(\w+) -->\n(.*?)^<!-- /only:\2 -->\n(\n?)", re.MULTILINE | re.DOTALL
    ),
    re.compile(r"^(.*?) <!-- only:(\w+) -->\n", re.MULTILINE),
)
SCRIPT_MARKS = (
    re.compile(r"^(\n?)# only:(\w+)\n(.*?)^# /only:\2\n(\n?)", re.MULTILINE | re.DOTALL),
    re.compile(r"^(.*?) # only:(\w+)\n", re.MULTILINE),
)


def is_doc(path: str) -> bool:
    return path == "README.md" or (path.startswith("docs/") and path.endswith(".md"))


def marks_of(path: str) -> tuple[re.Pattern[str], re.Pattern[str]] | None:
    """The marks a file may hold: a doc's, a shell script's, or none."""
    if is_doc(path):
        return DOC_MARKS
    if path.startswith("scripts/") and path.endswith(".sh"):
        return SCRIPT_MARKS
    return None


def keep_marked(
    text: str, kept: Collection[str], marks: tuple[re.Pattern[str], ...] = DOC_MARKS
) -> str:
    """`text` without the marked text of any mark but `kept`: only lines deleted."""
    marked_block, marked_line = marks

    def block(match: re.Match[str]) -> str:
        before, mark, _, after = match.groups()
        if mark in kept:
            return match.group(0)
        return "\n" if before and after else ""

    def line(match: re.Match[str]) -> str:
        return match.group(0) if match.group(2) in kept else ""

    return marked_line.sub(line, marked_block.sub(block, text))


def drop_marked_text(kept: list[str]) -> None:
    """Delete the docs' and scripts' text about what is not kept: the other deploy
    targets, the examples."""
    for path in (
        sorted(ROOT.glob("*.md"))
        + sorted(ROOT.glob("docs/*.md"))
        + sorted(ROOT.glob("scripts/*.sh"))
    ):
        marks = marks_of(str(path.relative_to(ROOT)))
        if marks is not None:
            text = path.read_text(encoding="utf-8")
            path.write_text(keep_marked(text, kept, marks), encoding="utf-8")


def make_fork(name: str, targets: list[str], examples: bool) -> None:
    current = project_name()
    revision = run("git", "rev-parse", "HEAD").stdout.strip() or "unknown"
    # Committed in .template.toml: never a token a clone URL may carry.
    url = without_credentials(run("git", "remote", "get-url", "origin").stdout.strip())
    rename(current, name)
    removed = remove(TEMPLATE_ONLY)
    for target, paths in TARGETS.items():
        if target not in targets:
            removed += remove(paths)
    drop_marked_text([*targets, "examples"] if examples else targets)
    if not examples:
        removed += drop_examples()
    record(revision, url, removed)
    print(f"init: named the service {name} (pyproject.toml, uv.lock, README.md)")
    print(f"init: deploy targets kept: {', '.join(targets) or 'none'}")
    print("init: deleted the template's own files, the other deploy targets' and any examples:")
    print("".join(f"  {path}\n" for path in removed), end="")
    print(f"init: {RECORD} records template revision {revision[:12]} for `make update`")


def parse_targets(value: str | None) -> list[str]:
    targets = [t.strip() for t in (value or DEFAULT_TARGETS).split(",") if t.strip()]
    unknown = sorted(set(targets) - set(TARGETS))
    if unknown:
        sys.exit(f"init: unknown targets {', '.join(unknown)}; choose from {', '.join(TARGETS)}")
    return targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", required=True, help="your service's name, e.g. acme-orders")
    parser.add_argument(
        "--targets", help=f"deploy targets to keep: vm,swarm,k8s ({DEFAULT_TARGETS})"
    )
    parser.add_argument("--examples", choices=["yes", "no"], help="keep items and orders (yes)")
    args = parser.parse_args()
    if not NAME_PATTERN.match(args.name) or len(args.name) > NAME_MAX_LENGTH:
        sys.exit(
            f"init: {args.name!r} is not a valid name: lower-case letters, digits and "
            f"single hyphens, starting with a letter, at most {NAME_MAX_LENGTH} characters"
        )
    make_fork(args.name, parse_targets(args.targets), args.examples != "no")
    print(f'next: review `git status`, then `git add -A && git commit -m "{args.name}"`')


if __name__ == "__main__":
    main()
