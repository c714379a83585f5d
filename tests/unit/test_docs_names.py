"""The README and docs/ name only what exists: every `make <verb>`, every make variable, every file or module path
and every relative link they show is checked against the Makefile and the tree. Renaming a verb, a variable or a
module without the docs fails here."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MAKEFILE = (ROOT / "Makefile").read_text() + (ROOT / "pipeline" / "options.mk").read_text()   # options.mk: generated variables

VERBS = set(re.search(r"^VERBS = (.+)$", MAKEFILE, re.M).group(1).split()) | {"setup", "help"}
VARIABLES = set(re.findall(r"^([A-Z][A-Z0-9_]*) *\?=", MAKEFILE, re.M))
PATH = re.compile(r"\b((?:pipeline|benchmarks|models|tests|targets|docs|\.ci)/[\w./<>*-]*[\w>*])")
COMMAND = re.compile(r"(?:^\s*(?:\$ )?|&&\s*|;\s*)make ([^;&|#(]*)")      # a make command line, not prose
MODULE = re.compile(r"python3? -m ((?:pipeline|benchmarks|models)(?:\.\w+)*)")
LINK = re.compile(r"\]\(((?!https?:|#)[^)#\s]+)")


def code(text: str) -> list[str]:
    """The text's code: fenced blocks line by line, and inline `spans`."""
    fenced = re.findall(r"^```[^\n]*\n(.*?)^```", text, re.S | re.M)
    prose = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.S | re.M)
    return [line for block in fenced for line in block.splitlines()] + re.findall(r"`([^`\n]+)`", prose)


def wrong_names(text: str, base: Path = ROOT) -> list[str]:
    """What ``text`` names that the project lacks, one line each."""
    wrong = []
    for snippet in code(text):
        for command in COMMAND.findall(snippet):
            command = re.sub(r"""=("[^"]*"|'[^']*')""", "=value", command)     # a quoted value is not verbs
            words = command.split()
            verbs = [w for w in words if re.fullmatch(r"[a-z][a-z-]*", w)]
            if words and re.fullmatch(r"[a-z][a-z-]*", words[0]):
                wrong += [f"make verb {v!r}" for v in verbs if v not in VERBS]
            wrong += [f"make variable {v!r}" for v in re.findall(r"\b([A-Z][A-Z0-9_]*)=", command)
                      if v not in VARIABLES]
        for module in MODULE.findall(snippet):
            relative = Path(*module.split("."))
            if not ((ROOT / relative).with_suffix(".py").is_file() or (ROOT / relative / "__main__.py").is_file()):
                wrong.append(f"module {module!r}")
        for path in PATH.findall(snippet):
            if not any(c in path for c in "<*{") and not (ROOT / path).exists():
                wrong.append(f"path {path!r}")
    for link in LINK.findall(text):
        if not (base / link).exists():
            wrong.append(f"link {link!r}")
    return wrong


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_the_docs_name_only_verbs_variables_and_modules_that_exist(doc):
    assert wrong_names(doc.read_text(), doc.parent) == []


def test_every_variable_of_the_makefile_is_documented_and_nothing_else_is():
    table = (ROOT / "docs" / "variables.md").read_text()
    documented = {v for row in re.findall(r"^\| ([^|]+)\|", table, re.M) for v in re.findall(r"`([A-Z][A-Z0-9_]*)`", row)}
    internal = {"PYQ", "MODEL_ARGS", "COMMON", "TUNING", "VERBS", "PASS_EXIT", "STAMP", "EXIT_FILE"}
    assert documented == VARIABLES - internal


def test_the_readme_links_the_docs_and_stays_short():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    assert {p.name for p in DOCS[1:]} <= set(re.findall(r"\(docs/([\w-]+\.md)", readme))


def test_a_wrong_name_is_caught():
    text = ("Run `make compile TARGET=rpi4 WEIGHT=x` then `make benchmark`; see `pipeline/nothing.py`,\n"
            "```sh\npython -m pipeline.nope\nmake verify VERIFY_N=2\n```\nand [the guide](docs/absent.md).")
    assert sorted(wrong_names(text)) == ["link 'docs/absent.md'", "make variable 'WEIGHT'", "make verb 'benchmark'",
                                         "module 'pipeline.nope'", "path 'pipeline/nothing.py'"]
