"""The package's shape, checked: no function over 80 lines, no module over 500, no import cycles, and
every module, folder and file of the package, and every example, notebook and benchmark, named in the
Layout block of docs/architecture.md (read from the tree, so a new file fails until it is named).

Each check lists every offender, so one run says everything there is to fix. The checks read the
source with :mod:`ast` (nothing is imported), and are tested on small synthetic packages too.
"""

from __future__ import annotations

import ast
import re
import textwrap
from pathlib import Path

import networkx as nx

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "mnist_cnn"
LAYOUT_DOC = PACKAGE.parents[1] / "docs" / "architecture.md"  # its "## Layout" block names every module
LISTED_FOLDERS = ("examples", "notebooks", "benchmarks")  # beside the package: the Layout names each of their files
# A file named in an entry (pad.js, robustness.py), not a path into another folder (tests/test_examples.py).
FILE_NAME = re.compile(r"(?<![\w/.-])[\w-]+\.(?:py|ipynb|js|css|html|svg|json|md|safetensors)\b")
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 500


def modules(package: Path) -> dict[str, Path]:
    """Every module of the package by dotted name (``pkg.sub.mod``; a package's ``__init__`` is ``pkg.sub``)."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def long_functions(package: Path, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """``path:line name (n lines)`` for every function or method, nested ones included, longer than ``limit``."""
    out = []
    for name, path in modules(package).items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > limit:
                    out.append(f"{path.relative_to(package.parent)}:{node.lineno} {name}.{node.name} ({length} lines)")
    return out


def long_modules(package: Path, limit: int = MAX_MODULE_LINES) -> list[str]:
    """``path (n lines)`` for every module longer than ``limit`` lines."""
    out = []
    for path in modules(package).values():
        length = len(path.read_text().splitlines())
        if length > limit:
            out.append(f"{path.relative_to(package.parent)} ({length} lines)")
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(tree: ast.AST):
    """Every import statement that runs at some point (module level or inside a function), not under TYPE_CHECKING."""
    for child in ast.iter_child_nodes(tree):
        statements = child.orelse if isinstance(child, ast.If) and _is_type_checking(child) else [child]
        for node in statements:
            if isinstance(node, ast.Import | ast.ImportFrom):
                yield node
            else:
                yield from _runtime_imports(node)


def _known_prefix(dotted: str, known: set[str]) -> str | None:
    """The longest start of ``dotted`` that is one of the package's modules (``import pkg.a.b`` loads ``pkg.a.b``)."""
    parts = dotted.split(".")
    return next((m for k in range(len(parts), 0, -1) if (m := ".".join(parts[:k])) in known), None)


def _targets(node: ast.Import | ast.ImportFrom, name: str, is_package: bool, known: set[str]) -> set[str]:
    """The package's modules that one import statement in module ``name`` loads."""
    if isinstance(node, ast.Import):
        return {m for alias in node.names if (m := _known_prefix(alias.name, known))}
    base = node.module or ""
    if node.level:  # relative: from the module's package, one level up per extra dot
        anchor = name.split(".") if is_package else name.split(".")[:-1]
        base = ".".join(anchor[: len(anchor) - (node.level - 1)] + ([node.module] if node.module else []))
    submodules = {f"{base}.{alias.name}" for alias in node.names} & known
    if len(submodules) < len(node.names) and (module := _known_prefix(base, known)):
        submodules.add(module)  # a name defined in the module (or the package's __init__) itself
    return submodules


def import_graph(package: Path) -> nx.DiGraph:
    """Which of the package's modules imports which, function-level imports included (TYPE_CHECKING ones are not)."""
    found = modules(package)
    graph = nx.DiGraph()
    graph.add_nodes_from(found)
    for name, path in found.items():
        tree = ast.parse(path.read_text(), str(path))
        for node in _runtime_imports(tree):
            for target in _targets(node, name, path.name == "__init__.py", set(found)):
                if target != name:
                    graph.add_edge(name, target)
    return graph


def import_cycles(package: Path) -> list[str]:
    """Each group of modules that import each other, directly or round a loop, with the imports that close it."""
    graph = import_graph(package)
    out = []
    for group in nx.strongly_connected_components(graph):
        if len(group) > 1:
            edges = sorted(f"{a} -> {b}" for a, b in graph.subgraph(group).edges)
            out.append(f"{', '.join(sorted(group))}: " + "; ".join(edges))
    return sorted(out)


def _report(offenders: list[str], what: str) -> str:
    return f"{len(offenders)} {what}:\n  " + "\n  ".join(offenders)


def layout_entries(page: str, top: bool = False) -> dict[str, str]:
    """The entries of a page's Layout block: name (``data.py``, ``serve/``) -> its text, continuation lines
    included; those under ``src/mnist_cnn/`` (indented two spaces), or with ``top`` those beside it (``examples/``)."""
    block = page.split("## Layout", 1)[1].split("```", 2)[1]
    entries: dict[str, str] = {}
    name = None
    for line in block.splitlines():
        indent = len(line) - len(line.lstrip())
        if line.strip() and indent == (0 if top else 2):
            name, _, text = line.strip().partition(" ")
            entries[name] = text.strip()
        elif indent > 2 and name:  # an entry's continuation line
            entries[name] += " " + line.strip()
        else:  # an entry of the other level
            name = None
    return entries


def _unnamed_files(folder: Path, text: str) -> list[Path]:
    """The files of ``folder`` (not ``_private`` ones) whose name, less its suffix, is not a word of ``text``."""
    words = set(re.findall(r"\w+", text))
    return [path for path in sorted(folder.iterdir())
            if path.is_file() and not path.name.startswith("_") and path.suffix != ".pyc" and path.stem not in words]  # fmt: skip


def unlisted_modules(package: Path, page: str, folders: tuple[str, ...] = LISTED_FOLDERS) -> list[str]:
    """What the Layout block does not say, read from the tree: each module or folder of ``package`` (not
    ``_private`` ones) it does not name, each file of a folder (a package's modules, the web page's files) its
    entry does not name, each file of the repository's ``folders`` (examples, benchmarks) not named in theirs,
    and each entry, or file an entry of ``folders`` names, that is not there."""
    entries, top = layout_entries(page), layout_entries(page, top=True)
    out = []
    for path in sorted(package.iterdir()):
        if path.name.startswith("_"):
            continue
        if path.suffix == ".py" and path.name not in entries:
            out.append(f"{path.name} is not in the Layout block")
        elif path.is_dir():
            text = entries.get(path.name + "/")
            if text is None:
                out.append(f"{path.name}/ is not in the Layout block")
                continue
            out += [f"{path.name}/{sub.name} is not named in its folder's entry" for sub in _unnamed_files(path, text)]
            out += [f"{path.name}/{name} is in the Layout block but not in the package"
                    for name in FILE_NAME.findall(text) if not (path / name).exists()]  # fmt: skip
    out += [
        f"{name} is in the Layout block but not in the package" for name in entries if not (package / name).exists()
    ]
    root = package.parents[1]
    for folder in folders:
        text = top.get(folder + "/")
        if text is None:
            out.append(f"{folder}/ is not in the Layout block")
            continue
        out += [
            f"{folder}/{path.name} is not named in its folder's entry" for path in _unnamed_files(root / folder, text)
        ]
        out += [f"{folder}/{name} is in the Layout block but not in the repository"
                for name in FILE_NAME.findall(text) if not (root / folder / name).exists()]  # fmt: skip
    return out


def test_no_function_over_80_lines():
    offenders = long_functions(PACKAGE)
    assert not offenders, _report(offenders, f"functions over {MAX_FUNCTION_LINES} lines")


def test_no_module_over_500_lines():
    offenders = long_modules(PACKAGE)
    assert not offenders, _report(offenders, f"modules over {MAX_MODULE_LINES} lines")


def test_no_import_cycles():
    offenders = import_cycles(PACKAGE)
    assert not offenders, _report(offenders, "import cycles")


def test_every_module_is_named_in_the_layout_of_the_architecture_guide():
    offenders = unlisted_modules(PACKAGE, LAYOUT_DOC.read_text())
    assert not offenders, _report(offenders, "modules missing from (or stale in) the Layout of docs/architecture.md")


def test_the_checks_read_the_real_package():
    graph = import_graph(PACKAGE)
    assert {"mnist_cnn", "mnist_cnn.models", "mnist_cnn.cli", "mnist_cnn.cli.training"} <= set(graph)
    assert graph.has_edge("mnist_cnn.cli", "mnist_cnn.cli.training")
    assert graph.has_edge("mnist_cnn.cli.training", "mnist_cnn.config")


# The checks themselves, on a small package written for each test.


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def test_long_functions_are_found_with_their_place_and_length(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(80))
    method = "\n".join(f"        y{i} = {i}" for i in range(79))
    root = _package(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": f"def long():\n{body}\n\n\ndef short():\n    return 1\n",
            "sub/__init__.py": "",
            "sub/b.py": f"class C:\n    async def fits(self):\n{method}\n",
        },
    )
    assert long_functions(root) == ["pkg/a.py:1 pkg.a.long (81 lines)"]
    assert long_functions(root, limit=79) == [
        "pkg/a.py:1 pkg.a.long (81 lines)",
        "pkg/sub/b.py:2 pkg.sub.b.fits (80 lines)",
    ]


def test_long_modules_are_found(tmp_path):
    root = _package(tmp_path, {"__init__.py": "", "a.py": "x = 1\n" * 501, "b.py": "x = 1\n" * 500})
    assert long_modules(root) == ["pkg/a.py (501 lines)"]


def test_cycles_through_function_level_and_relative_imports_are_found(tmp_path):
    root = _package(
        tmp_path,
        {
            "__init__.py": "from .a import f\n",
            "a.py": "from . import b\n\ndef f():\n    return b.g()\n",
            "b.py": "def g():\n    from .sub.c import h\n    return h()\n",
            "sub/__init__.py": "",
            "sub/c.py": "import pkg.a\n\ndef h():\n    return 1\n",
            "d.py": "from .a import f\n",  # imports into the cycle, is not part of it
        },
    )
    assert import_cycles(root) == ["pkg.a, pkg.b, pkg.sub.c: pkg.a -> pkg.b; pkg.b -> pkg.sub.c; pkg.sub.c -> pkg.a"]


def test_type_checking_imports_and_one_way_imports_are_not_cycles(tmp_path):
    root = _package(
        tmp_path,
        {
            "__init__.py": "from .a import f\nfrom .b import g\n",
            "a.py": "from .b import g\n\ndef f():\n    return g()\n",
            "b.py": (
                "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from .a import f\n"
                "else:\n    import os\n\ndef g():\n    import json\n    return json\n"
            ),
        },
    )
    graph = import_graph(root)
    assert set(graph.edges) == {("pkg", "pkg.a"), ("pkg", "pkg.b"), ("pkg.a", "pkg.b")}
    assert import_cycles(root) == []


def test_a_module_importing_its_package_closes_a_cycle(tmp_path):
    root = _package(tmp_path, {"__init__.py": "from .a import f\n", "a.py": "def f():\n    from . import g\n"})
    assert import_cycles(root) == ["pkg, pkg.a: pkg -> pkg.a; pkg.a -> pkg"]


def test_the_layout_check_finds_missing_submodules_and_stale_entries(tmp_path):
    repo = tmp_path / "repo"  # as the real tree: repo/src/pkg, repo/examples
    root = _package(
        repo / "src",
        {
            "__init__.py": "",
            "_version.py": "",
            "a.py": "",
            "b.py": "",
            "sub/__init__.py": "",
            "sub/x.py": "",
            "sub/y.py": "",
            "web/index.html": "",
            "web/pad.js": "",
        },
    )
    (repo / "examples").mkdir()
    for name in ("one.py", "two.py"):
        (repo / "examples" / name).write_text("")
    readme = textwrap.dedent("""\
        ## Layout

        ```
        pkg/
          a.py   the first
          sub/   two jobs: x (the one),
                 and z
          web/   the page: index.html, old.css
          gone.py  moved away
        examples/  one.py, and
                   three.py
        tests/   not the package
        ```
        """)
    assert layout_entries(readme) == {
        "a.py": "the first",
        "sub/": "two jobs: x (the one), and z",
        "web/": "the page: index.html, old.css",
        "gone.py": "moved away",
    }
    assert layout_entries(readme, top=True) == {
        "pkg/": "",
        "examples/": "one.py, and three.py",
        "tests/": "not the package",
    }
    assert unlisted_modules(root, readme, folders=("examples", "notebooks")) == [
        "b.py is not in the Layout block",
        "sub/y.py is not named in its folder's entry",
        "web/pad.js is not named in its folder's entry",
        "web/old.css is in the Layout block but not in the package",
        "gone.py is in the Layout block but not in the package",
        "examples/two.py is not named in its folder's entry",
        "examples/three.py is in the Layout block but not in the repository",
        "notebooks/ is not in the Layout block",
    ]


def _make_rule(makefile: str, target: str) -> tuple[str, list[str]]:
    """(prerequisites, recipe lines) of one rule of a Makefile."""
    match = re.search(rf"^{re.escape(target)}:(.*)\n((?:\t.*\n)*)", makefile, re.M)
    assert match, f"no rule for {target}"
    return match.group(1), [line.strip() for line in match.group(2).splitlines()]


def test_make_run_installs_only_what_training_needs():
    """`make run` installs torch and the package alone; the extras (serve, onnx, tune, ...) and test tools come with `make test`."""
    makefile = (PACKAGE.parents[1] / "Makefile").read_text()
    needs, _ = _make_rule(makefile, "run")
    assert needs.split() == ["$(VENV)/.installed-run"]
    _, recipe = _make_rule(makefile, "$(VENV)/.installed-run")
    installs = [line for line in recipe if "pip install" in line]
    assert installs and not any("[" in line for line in installs), installs
    test_needs, _ = _make_rule(makefile, "test")
    assert "install" in test_needs.split()
