"""The README's quickstart, checked as a newcomer would run it.

Every command in its code blocks (and every `mnist-cnn ...`, `make ...` or `pip ...` it quotes in the
text) is checked against what it names: the CLI's own parser, the Makefile's targets, the service's
routes, the package's extras; so a renamed flag fails here. The quick ones (the shipped model reading
generated images, `recipes`) then run through the real entry point, ``python -m mnist_cnn``, in a
temporary folder, and must exit 0 and print what the README shows, numbers aside. Those that train or
serve are only parsed: they take minutes or never end.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image

from test_docs import FENCE

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CODE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
QUICK = {"predict", "read", "preprocess", "recipes"}  # with the shipped model: seconds, no training


@dataclass
class Command:
    argv: list[str]
    output: list[str] = field(default_factory=list)  # the lines the README shows under it

    def __str__(self) -> str:
        return shlex.join(self.argv)

    @property
    def runs(self) -> bool:
        """Quick enough to run here: no training, no server, no run folder (`latest`) that training would make."""
        return self.argv[0] == "mnist-cnn" and self.argv[1] in QUICK and "latest" not in self.argv


def section(text: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"README.md has no '## {title}' section"
    return match.group(1)


def commands(text: str) -> list[Command]:
    """The commands of ``text``'s sh and console blocks (with the output a console block shows), then those
    quoted inline in its prose; each once."""
    found: list[Command] = []
    for lang, body in CODE.findall(text):
        for line in body.splitlines():
            if lang == "sh" and (argv := shlex.split(line, comments=True)):
                found.append(Command(argv))
            elif lang == "console" and line.startswith("$ "):
                found.append(Command(shlex.split(line[2:], comments=True)))
            elif lang == "console" and line.strip():
                found[-1].output.append(line)
    for span in re.findall(r"`((?:mnist-cnn|make|pip) [^`]*)`", FENCE.sub("", text)):
        found.append(Command(shlex.split(span)))
    unique = {}
    for command in found:
        unique.setdefault(str(command), command)
    return list(unique.values())


TEXT = README.read_text()
QUICKSTART = commands(section(TEXT, "Quickstart"))
PARSED = commands(section(TEXT, "Two commands") + section(TEXT, "Quickstart"))


def test_the_quickstart_is_found():
    """The parsing above finds what a newcomer is told to run (or every check below passes on nothing)."""
    names = {c.argv[1] for c in QUICKSTART if c.argv[0] == "mnist-cnn"}
    assert {"predict", "read", "train", "serve"} <= names, names
    assert any(c.output for c in QUICKSTART) and any(c.runs for c in QUICKSTART)


# ---------------------------------------------------------------- every command parses


def check_cli(argv: list[str], capsys) -> None:
    from mnist_cnn.cli import build_parser

    try:
        build_parser().parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"the CLI rejects {shlex.join(argv)!r}: {capsys.readouterr().err.strip()}")


def check_make(argv: list[str], capsys) -> None:
    targets = set(re.findall(r"^([\w.-]+):", (ROOT / "Makefile").read_text(), re.M))
    named = [a for a in argv[1:] if "=" not in a]  # RECIPE=deep sets a variable
    assert set(named) <= targets, f"{shlex.join(argv)!r}: the Makefile has no target {set(named) - targets}"


def check_curl(argv: list[str], capsys) -> None:
    """The URL is one of the service's routes on `mnist-cnn serve`'s default port; the form field is the API's."""
    from mnist_cnn.cli import build_parser
    from mnist_cnn.serve.routes import router
    from mnist_cnn.serve.schemas import PREDICT_BODY

    [url] = [a for a in argv if "localhost" in a or "127.0.0.1" in a]
    parts = urlsplit(url if "://" in url else f"http://{url}")
    assert parts.port == build_parser().parse_args(["serve"]).port, f"{url}: not the port `mnist-cnn serve` uses"
    assert parts.path in {route.path for route in router.routes}, f"{url}: the service has no such endpoint"
    fields = {argv[i + 1].split("=")[0] for i, a in enumerate(argv[:-1]) if a == "-F"}
    assert fields <= set(PREDICT_BODY["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"])


def check_pip(argv: list[str], capsys) -> None:
    """The torch the README installs is the one the Makefile pins; the extras it names are the package's."""
    pin = re.search(r"^TORCH\s*\?=\s*(\S+)", (ROOT / "Makefile").read_text(), re.M).group(1)
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    for arg in argv[2:]:
        if arg.startswith("torch"):
            assert arg == pin, f"the README installs {arg}; the Makefile pins {pin}"
        elif match := re.fullmatch(r"\.\[(.*)\]", arg):
            assert set(match.group(1).split(",")) <= extras, f"{arg}: the package's extras are {sorted(extras)}"


def test_the_install_paragraph_names_every_extra_a_user_installs():
    """Every extra of pyproject.toml but the test tools and the benchmark's TensorFlow is in the README's list."""
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    [listed] = re.findall(r"\(extras: ((?:`[\w-]+`(?:, )?)+)\)", section(TEXT, "Quickstart"))
    assert set(re.findall(r"`([\w-]+)`", listed)) == extras - {"test", "keras-reference"}


PROGRAMS = {"mnist-cnn": check_cli, "make": check_make, "curl": check_curl, "pip": check_pip,
            ".": lambda argv, capsys: None}  # fmt: skip


@pytest.mark.parametrize("command", PARSED, ids=str)
def test_every_command_parses(command, capsys):
    program = command.argv[0]
    assert program in PROGRAMS, f"the README runs {program}: teach tests/test_readme.py how to check it"
    PROGRAMS[program](command.argv, capsys)


# ---------------------------------------------------------------- the quick ones run

NUMBER = re.compile(r"\d+(?:\.\d+)?")


@pytest.fixture(scope="module")
def folder(tmp_path_factory, mnist) -> Path:
    """A folder holding the images the quickstart names, made from MNIST test digits as dark ink on white paper."""
    out = tmp_path_factory.mktemp("readme")
    ink = 255 - mnist.test_images[:5].numpy()  # 7 2 1 0 4
    Image.fromarray(ink[0]).resize((100, 100)).save(out / "seven.png")
    Image.fromarray(ink[1]).resize((200, 200)).convert("RGB").save(out / "photo.jpg")
    dot = np.full((100, 100), 255, np.uint8)
    dot[45:55, 45:55] = 0
    Image.fromarray(dot).save(out / "dot.png")
    row = np.hstack([np.pad(d, 8, constant_values=255) for d in ink])
    Image.fromarray(row).resize((row.shape[1] * 3, row.shape[0] * 3)).convert("RGB").save(out / "postcode.jpg")
    return out


WRITTEN = {"seven.png": "7", "photo.jpg": "2", "postcode.jpg": "72104"}  # what each image of `folder` shows


def inputs(argv: list[str]) -> list[str]:
    """The images a command reads (not those it writes)."""
    return [a for i, a in enumerate(argv) if Path(a).suffix in {".png", ".jpg"} and argv[i - 1] != "--out"]


def run_cli(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "mnist_cnn", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def shape(lines: list[str]) -> list[str]:
    """The lines with every number replaced by N: the README's example output was made from other images."""
    return [NUMBER.sub("N", line.rstrip()) for line in lines]


def check_predict(argv, result, folder):
    files = inputs(argv)
    lines = result.stdout.splitlines()
    assert [line.split(": ")[0] for line in lines] == files, result.stdout
    for name, line in zip(files, lines, strict=True):
        assert name not in WRITTEN or line.startswith(f"{name}: {WRITTEN[name]} (p="), line
    assert result.stderr.startswith("using the default model "), result.stderr  # "and say so on standard error"


def check_read(argv, result, folder):
    name = argv[2]
    if "--json" in argv:
        answer = json.loads(result.stdout)
        assert answer["text"] == WRITTEN[name]
        assert all({"box", "label", "confidence"} <= set(d) for d in answer["digits"]), answer
    else:
        assert result.stdout.startswith(f"{name}: {WRITTEN[name]}"), result.stdout


def check_preprocess(argv, result, folder):
    out = argv[argv.index("--out") + 1]
    assert Image.open(folder / out).size == (28, 28)


def check_recipes(argv, result, folder):
    named = {c.argv[c.argv.index("--recipe") + 1] for c in QUICKSTART if "--recipe" in c.argv}
    listed = {line.split()[0] for line in result.stdout.splitlines() if line.strip()}
    assert named <= listed, f"the README trains {named - listed}, which `mnist-cnn recipes` does not list"


CHECKS = {"predict": check_predict, "read": check_read, "preprocess": check_preprocess, "recipes": check_recipes}


@pytest.mark.slow
@pytest.mark.parametrize("command", [c for c in QUICKSTART if c.runs], ids=str)
def test_the_quick_commands_run_and_print_what_the_readme_shows(command, folder):
    for name in inputs(command.argv):
        assert (folder / name).is_file(), f"the README reads {name}: make it in the `folder` fixture"
    result = run_cli(command.argv[1:], folder)
    assert result.returncode == 0, result.stderr
    if command.output:
        # What the README shows, standard error (the default model's note) first, numbers aside.
        assert shape(result.stderr.splitlines() + result.stdout.splitlines()) == shape(command.output)
    CHECKS[command.argv[1]](command.argv, result, folder)


@pytest.mark.slow
def test_the_python_example_runs_and_gives_the_answer_in_its_comment(mnist_dir, tmp_path):
    [code] = re.findall(r"^```python\n(.*?)^```", section(TEXT, "Quickstart"), re.M | re.S)
    *lines, last = code.strip().splitlines()
    expression, _, expected = last.partition("#")
    script = "\n".join([*lines, f"print(repr({expression.strip()}))"])
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "MNIST_CNN_DATA": str(mnist_dir)}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected.strip()
