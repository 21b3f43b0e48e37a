"""The docs hold together: the README stays a short door (at most 10 KiB), every relative link in the
README and the guides in docs/ reaches a file that exists (and, for a link to a heading, a heading
that exists), no page names a folder of the machine it was written on, and docs/benchmarks.md names
no run folder that its own commands do not make (a reader has none of ours)."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parents[1]
README_MAX_BYTES = 10_240
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")
MACHINE_PATH = re.compile(r"(?<![\w.~-])/(?:work|tmp|home|Users|root)/")
# runs/NAME[/...]: a dot only inside a name (model.onnx), commas only in a {0,1,2} expansion.
RUN_FOLDER = re.compile(r"(?<![\w/.-])runs(?:/(?:[\w-]|\.(?=[\w-])|\{[\w,]*\})+)+")


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def prose(text: str) -> str:
    """The text without fenced code blocks and inline code, where brackets are code, not links."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", page.read_text()).splitlines():
        if m := re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line):
            base = slug(m.group(1))
            n = found.get(base, 0)
            found[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken_links(page: Path) -> list[str]:
    """``page: target (why)`` for each relative link of ``page`` that reaches nothing."""
    out = []
    for target in LINK.findall(prose(page.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto: ...
            continue
        path, _, fragment = unquote(target).partition("#")
        dest = (page.parent / path).resolve() if path else page
        name = f"{page.relative_to(ROOT)}: {target}"
        if not dest.exists():
            out.append(f"{name} (no such file)")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            out.append(f"{name} (no such heading in {dest.relative_to(ROOT)})")
    return out


def made_run_folders(text: str) -> set[str]:
    """The folders the commands of ``text`` (code blocks and inline code) make: ``--out X``, ``runs/`` + ``--name``,
    the copy of ``cp -r A B``."""
    lines = []
    for match in re.finditer(r"^```(?:sh|console)?\n(.*?)^```", text, re.M | re.S):
        lines += match.group(1).splitlines()
    lines += [span.strip("`") for span in INLINE_CODE.findall(FENCE.sub("", text))]
    made = set()
    for line in lines:
        try:
            argv = shlex.split(line.removeprefix("$ "), comments=True)
        except ValueError:  # not a command
            continue
        for i, arg in enumerate(argv[:-1]):
            if arg == "--out":
                made.add(argv[i + 1])
            elif arg == "--name":
                made.add(f"runs/{argv[i + 1]}")
            elif arg == "cp":
                command = argv[i : argv.index("&&", i) if "&&" in argv[i:] else len(argv)]
                made.add(command[-1])
    return made


def unmade_run_folders(text: str) -> list[str]:
    """Each ``runs/...`` folder ``text`` names that is neither made by one of its commands nor inside one that is."""
    made = made_run_folders(text)
    named = dict.fromkeys(RUN_FOLDER.findall(text))
    return [name for name in named if not any(name == m or name.startswith(m + "/") for m in made)]


def test_the_benchmarks_page_names_only_run_folders_its_commands_make():
    unmade = unmade_run_folders((ROOT / "docs" / "benchmarks.md").read_text())
    assert not unmade, (
        "docs/benchmarks.md names run folders no command on it makes (history goes to docs/notes/):\n  "
        + "\n  ".join(unmade)
    )


def test_the_run_folder_check_reads_out_name_and_cp():
    page = """Made by `python b.py --out runs/bench`, then:

```sh
mnist-cnn train --recipe reader --init runs/bench/best-seed0 --name reader  # runs/reader
cp -r runs/bench/basic-seed0 runs/basic && mnist-cnn calibrate runs/basic
```

`runs/speed/best-seed{0,1}` (an old session's) and runs/reader/model.onnx, runs/basic, runs/readers.
"""
    assert made_run_folders(page) == {"runs/bench", "runs/reader", "runs/basic"}
    assert unmade_run_folders(page) == ["runs/speed/best-seed{0,1}", "runs/readers"]


def test_the_readme_is_at_most_10_kib():
    size = len((ROOT / "README.md").read_bytes())
    assert size <= README_MAX_BYTES, f"README.md is {size:,} bytes; move material to a guide in docs/"


def test_every_relative_link_reaches_a_file_and_heading():
    broken = [b for page in pages() for b in broken_links(page)]
    assert not broken, f"{len(broken)} broken links:\n  " + "\n  ".join(broken)


def test_no_page_names_a_folder_of_the_machine_it_was_written_on():
    found = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}" for p in pages()
             for i, line in enumerate(p.read_text().splitlines(), 1) if MACHINE_PATH.search(line)]  # fmt: skip
    assert not found, "paths of a machine in the docs:\n  " + "\n  ".join(found)


def test_the_link_check_finds_missing_files_and_headings(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "guide.md").write_text("# A guide\n\n## Run `fast`: one epoch\n")
    page = tmp_path / "README.md"
    page.write_text(
        "[ok](docs/guide.md) [ok](docs/guide.md#run-fast-one-epoch) [ok](#top) [web](https://x.org/a)\n"
        "[gone](docs/nothing.md) ![gone](docs/images/none.png) [bad](docs/guide.md#no-such)\n"
        "# Top\n```\n[in code](missing.md)\n```\n`[inline](missing.md)`\n"
    )
    assert broken_links(page) == [
        "README.md: docs/nothing.md (no such file)",
        "README.md: docs/images/none.png (no such file)",
        "README.md: docs/guide.md#no-such (no such heading in docs/guide.md)",
    ]
