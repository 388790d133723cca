"""`make resource name=widgets [singular=widget]`: scaffold a new resource.

Writes app/<name>/, tests/<name>/ and a migration from scripts/resource_template/ (the
shape of app/items), and wires the router into app/main.py and the packages into the
import-linter contract in pyproject.toml. What each file holds, and what to do next:
docs/adding-a-resource.md. Standard library only, Python 3.11 or newer: it runs on the
host, before any image.
"""

from __future__ import annotations

import argparse
import ast
import keyword
import re
import secrets
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from string import Template

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = Path(__file__).resolve().parent / "resource_template"
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
# Keeps every generated line within the 100 columns ruff allows.
NAME_MAX_LENGTH = 16
# Names the template itself uses for something else.
RESERVED = {"app", "core", "main", "tests", "alembic", "scripts", "migrations"}
# Plurals whose singular is not the name without its s (category, address, box, batch,
# wish), and words in -us or -sis that are not plurals at all (status, analysis): asked
# for rather than guessed. (A plural in -us, menus or skus, is asked for too.)
ASK_FOR_SINGULAR = re.compile(r"(ies|sses|xes|ches|shes|us|sis)$")
# Words that start with a vowel letter and a consonant sound: "a user", "a unit".
_CONSONANT_SOUND = ("uni", "use", "usu", "uti", "ure", "eu", "one")

# Template -> where it goes; "{name}" is the resource's plural.
FILES = {
    "models.py.tmpl": "app/{name}/models.py",
    "schemas.py.tmpl": "app/{name}/schemas.py",
    "exceptions.py.tmpl": "app/{name}/exceptions.py",
    "service.py.tmpl": "app/{name}/service.py",
    "router.py.tmpl": "app/{name}/router.py",
    "test_router.py.tmpl": "tests/{name}/test_router.py",
}
PACKAGES = ("app/{name}/__init__.py", "tests/{name}/__init__.py")


class ScaffoldError(Exception):
    """Refused: nothing has been written."""


@dataclass(frozen=True)
class Names:
    plural: str  # order_lines: package, table, test folder
    singular: str  # order_line: variables, functions, path parameters

    def substitutions(self) -> dict[str, str]:
        words = self.singular.replace("_", " ")  # order line
        vowel = words[0] in "aeiou" and not words.startswith(_CONSONANT_SOUND)
        article = "an" if vowel else "a"  # an order line, a widget, a user
        return {
            "plural": self.plural,
            "singular": self.singular,
            "Singular": "".join(part.capitalize() for part in self.singular.split("_")),
            "SINGULAR": self.singular.upper(),  # module constants: ORDER_LINE_PAGES
            "words": words,
            "a_words": f"{article} {words}",
            "A_words": f"{article.capitalize()} {words}",
            "plural_words": self.plural.replace("_", " "),
            "Title": words.capitalize(),
            # URLs use hyphens: /api/v1/order-lines.
            "path": self.plural.replace("_", "-"),
        }


def check_names(root: Path, plural: str, singular: str | None) -> Names:
    """The resource's names, or ScaffoldError saying what is wrong with them."""
    if not NAME_PATTERN.match(plural) or len(plural) > NAME_MAX_LENGTH:
        raise ScaffoldError(
            f"{plural!r}: use a lowercase identifier of at most {NAME_MAX_LENGTH} characters"
            " (letters, digits, single underscores), e.g. widgets or order_lines"
        )
    if singular is None:
        if not plural.endswith("s") or len(plural) < 2:  # "s" alone
            raise ScaffoldError(
                f"{plural!r} does not end in s: give its singular (singular=… with make,"
                " --singular with the script)"
            )
        if ASK_FOR_SINGULAR.search(plural):
            raise ScaffoldError(
                f"{plural!r}: give its singular (singular=… with make, --singular with the"
                f" script): it is not always {plural.removesuffix('s')!r}"
            )
        singular = plural.removesuffix("s")
    if not NAME_PATTERN.match(singular) or singular == plural or len(singular) > NAME_MAX_LENGTH:
        raise ScaffoldError(
            f"singular {singular!r}: a lowercase identifier of at most {NAME_MAX_LENGTH}"
            f" characters, other than {plural!r}"
        )
    class_name = Names(plural, singular).substitutions()["Singular"]
    for name in (plural, singular, class_name):  # the class: `nones` would make `None`
        if keyword.iskeyword(name) or name in RESERVED:
            raise ScaffoldError(f"{name!r} is reserved; choose another name")
    # The singular names the generated code's variables (the plural never stands alone).
    if singular in names_in_templates():
        raise ScaffoldError(
            f"singular {singular!r} is a name the generated code uses for something else"
            " (a variable, a parameter, a module): choose another name, or give a singular"
        )
    if table := existing_table(root, plural):
        raise ScaffoldError(f"{plural!r} is a table already ({table}); choose another name")
    taken = [
        path.relative_to(root).as_posix()
        for path in (root / "app" / plural, root / "app" / f"{plural}.py", root / "tests" / plural)
        if path.exists()
    ]
    if taken:
        raise ScaffoldError(f"{plural!r} exists already: {', '.join(taken)}")
    return Names(plural, singular)


def names_in_templates() -> set[str]:
    """Every identifier the generated modules use besides the resource's own: a resource
    named like one would shadow it (`session = Session(...); session.add(session)`)."""
    dummy = Names("zzplurals", "zzsingular")
    found: set[str] = set()
    for template in FILES:
        source = Template((TEMPLATES / template).read_text(encoding="utf-8"))
        for node in ast.walk(ast.parse(source.substitute(dummy.substitutions()))):
            if isinstance(node, ast.Name):
                found.add(node.id)
            elif isinstance(node, ast.arg):
                found.add(node.arg)
            elif isinstance(node, ast.alias):
                found.add((node.asname or node.name).split(".")[0])
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                found.add(node.name)
    return {name for name in found if "zz" not in name.lower()}


def existing_table(root: Path, plural: str) -> str | None:
    """The migration that creates a table named `plural`, if one does (core's api_keys,
    the job queue's pgqueuer…): the new model's table would clash with it."""
    creates = re.compile(
        rf"create_table\(\s*[\"']{plural}[\"']|CREATE TABLE (IF NOT EXISTS )?{plural}\b",
        re.IGNORECASE,
    )
    for path in sorted((root / "alembic" / "versions").glob("*.py")):
        if creates.search(path.read_text(encoding="utf-8")):
            return path.name
    return None


def render(template: str, names: Names, **extra: str) -> str:
    text = Template((TEMPLATES / template).read_text(encoding="utf-8"))
    return sort_app_imports(text.substitute(names.substitutions(), **extra))


def sort_app_imports(source: str) -> str:
    """Sort each run of consecutive `from app.… import …` statements by module, as
    ruff's isort does: where the new package goes among app.core's depends on its name."""
    out: list[str] = []
    run: list[list[str]] = []  # the current run's statements, each as its lines
    lines = iter([*source.splitlines(keepends=True), ""])  # "": the end ends the last run
    for line in lines:
        if line.startswith("from app."):
            statement = [line]
            if line.rstrip().endswith("("):  # a parenthesised import, up to its ")"
                while not statement[-1].startswith(")"):
                    statement.append(next(lines))
            run.append(statement)
        else:
            run.sort(key=lambda statement: statement[0].split()[1])  # by module
            out += [part for statement in run for part in statement] + [line]
            run = []
    return "".join(out)


def current_head(versions: Path) -> str | None:
    """The revision no other revision builds on; None if there are none yet."""
    assigned = re.compile(r"^(down_)?revision\b[^=]*=\s*(.+)$", re.MULTILINE)
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in versions.glob("*.py"):
        for down, value in assigned.findall(path.read_text(encoding="utf-8")):
            found = set(re.findall(r"[\"']([0-9A-Za-z_]+)[\"']", value))
            (parents if down else revisions).update(found)
    heads = sorted(revisions - parents)
    if len(heads) > 1:
        raise ScaffoldError(f"the migrations have several heads ({', '.join(heads)}); merge them")
    return heads[0] if heads else None


def migration(root: Path, names: Names, now: datetime) -> tuple[Path, str]:
    """The new migration's path and text, named like alembic.ini's file_template."""
    versions = root / "alembic" / "versions"
    head = current_head(versions)
    revision = secrets.token_hex(6)
    path = versions / f"{now:%Y_%m_%d_%H%M}-{revision}_create_{names.plural}.py"
    text = render(
        "migration.py.tmpl",
        names,
        revision=revision,
        down_revision=head or "",
        down_revision_repr=repr(head).replace("'", '"'),
        create_date=f"{now:%Y-%m-%d %H:%M:%S.%f%z}".replace("+0000", "+00:00"),
    )
    return path, text


def wire_router(main: str, names: Names) -> str:
    """app/main.py with the router imported (in sorted place) and added last to the
    `api_routers=[...]` list, one router per line."""
    alias = f"{names.plural}_router"
    if f"from app.{names.plural}.router import" in main:
        raise ScaffoldError(f"app/main.py imports app.{names.plural} already")
    lines = main.splitlines(keepends=True)
    start = next((n for n, line in enumerate(lines) if line.strip() == "api_routers=["), None)
    if start is None:
        raise ScaffoldError("app/main.py: no `api_routers=[` line to add the router to")
    end = next(n for n in range(start, len(lines)) if lines[n].strip() == "],")
    indent = lines[start][: len(lines[start]) - len(lines[start].lstrip())]
    if lines[end - 1].strip() == "# none yet":  # what `make init examples=no` leaves
        del lines[end - 1]
        end -= 1
    lines.insert(end, f"{indent}    {alias},\n")
    first_app_import = next(n for n, line in enumerate(lines) if line.startswith("from app."))
    lines.insert(first_app_import, f"from app.{names.plural}.router import router as {alias}\n")
    return sort_app_imports("".join(lines))


def add_to_contract(pyproject: str, names: Names) -> str:
    """pyproject.toml with the new packages in the import-linter contract that keeps
    core's tests free of domains (the list after the "make resource adds" comment)."""
    match = re.search(r"# `make resource` adds.*\nforbidden_modules = \[\n(.*?)\]", pyproject, re.S)
    if match is None:
        raise ScaffoldError("pyproject.toml: the import-linter domain list is missing")
    entries = set(re.findall(r'"([^"]+)"', match.group(1)))
    entries |= {f"app.{names.plural}", f"tests.{names.plural}"}
    body = "".join(f'    "{entry}",\n' for entry in sorted(entries))
    return pyproject[: match.start(1)] + body + pyproject[match.end(1) :]


def scaffold(root: Path, plural: str, singular: str | None, now: datetime) -> list[Path]:
    """Write the resource into the checkout at `root`; return the files written or changed.
    Everything is checked and rendered first, so a refusal writes nothing."""
    names = check_names(root, plural, singular)
    main, pyproject = root / "app" / "main.py", root / "pyproject.toml"
    writes = {
        root / target.format(name=names.plural): render(template, names)
        for template, target in FILES.items()
    }
    writes |= {root / package.format(name=names.plural): "" for package in PACKAGES}
    writes[main] = wire_router(main.read_text(encoding="utf-8"), names)
    writes[pyproject] = add_to_contract(pyproject.read_text(encoding="utf-8"), names)
    path, text = migration(root, names, now)
    writes[path] = text
    for target, content in writes.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content, encoding="utf-8")
    return sorted(writes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("name", help="the resource's plural: widgets, order_lines")
    parser.add_argument("--singular", help="default: the name without its final s")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout (default: this)")
    args = parser.parse_args(argv)
    try:
        written = scaffold(args.root.resolve(), args.name, args.singular, datetime.now(UTC))
    except ScaffoldError as exc:
        print(f"make resource: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(f"  wrote {path.relative_to(args.root.resolve()).as_posix()}")
    print(
        f"\nNext: give {args.name} its fields (docs/adding-a-resource.md), then make lint test;"
        " make migrate creates its table in the dev database."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
