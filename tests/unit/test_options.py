"""Each option is defined once, in pipeline/options.py: the generated Makefile part, the docs table and the CLI's
parsers are held to that table here."""
from __future__ import annotations

import argparse
import re

import pytest

from pipeline import cli
from pipeline.options import DOCS_FILE, MAKE_FILE, OPTIONS, docs_table, for_verb, make_text

CLI_ONLY = {"--quiet", "--only", "--results", "--cache", "-h", "--help"}   # not make variables


def test_the_committed_options_mk_is_the_tables():
    assert MAKE_FILE.read_text() == make_text(), "run `python3 -m pipeline.options --write`"


def test_the_docs_table_is_the_tables():
    assert docs_table() in DOCS_FILE.read_text(), "run `python3 -m pipeline.options --write`"


def test_the_makefile_defines_no_option_of_its_own():
    makefile = (MAKE_FILE.parent.parent / "Makefile").read_text()
    assert "include pipeline/options.mk" in makefile
    assert not re.findall(r"^([A-Z][A-Z0-9_]*) *\?=", makefile, re.M)


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in cli._parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("verb", sorted(cli.VERB_HELP))
def test_each_verbs_cli_options_are_the_tables(verb):
    parser = _subparsers()[verb]
    flags = {s for a in parser._actions for s in a.option_strings} - CLI_ONLY
    assert flags == {o.flag for o in for_verb(verb)}
    for o in for_verb(verb):
        action = next(a for a in parser._actions if o.flag in a.option_strings)
        assert action.help.startswith(f"{o.var}=")
        assert parser.get_default(action.dest) == (o.default or (None if o.kind != "str" else ""))


def test_a_bad_value_names_the_make_variable_of_that_verb(capsys):
    with pytest.raises(SystemExit) as exc:
        cli._parser().parse_args(["bench", "--eval-n", "many"])
    assert exc.value.code == 2
    assert "BENCH_EVAL_N= (--eval-n): expected a whole number, got 'many'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli._parser().parse_args(["compile", "--eval-n", "many"])
    assert "error: EVAL_N= (--eval-n)" in capsys.readouterr().err


def test_every_option_is_taken_by_a_verb_and_named_once():
    assert len({o.var for o in OPTIONS}) == len(OPTIONS)
    assert all(o.verbs for o in OPTIONS)
    for verb in {v for o in OPTIONS for v in o.verbs}:
        flags = [o.flag for o in for_verb(verb)]
        assert len(flags) == len(set(flags)), verb
