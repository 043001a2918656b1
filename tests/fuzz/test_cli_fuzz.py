"""Hostile command lines: `crf_app.cli.main` with argv drawn from the real subcommands and
options (read from the parser itself, so new commands are fuzzed too) plus junk.

Property: main returns an int exit code, or argparse exits with SystemExit 0 (--help,
--version) or 2 with a usage message; never an uncaught exception (a traceback).

Safety: the working directory is a temporary folder, path values are relative names inside it
(or the prepared files), --jobs never asks for worker processes, the demo study is capped at
one subject and the GUI (no command) is replaced by a stub.
"""

from __future__ import annotations

import argparse
import io
import sys
from datetime import date

import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from crf_app import cli
from crf_app.paths import FORMS_DIR
from tests.fuzz.conftest import examples
from tests.interchange.odm_helpers import PASSWORD, make_laptop


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> dict:
    """{command path: [actions]} of the parser, every level of subcommands."""
    out = {prefix: []}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.update(_commands(sub, (*prefix, name)))
        else:
            out[prefix].append(action)
    return out


COMMANDS = _commands(cli._parser())
GLOBAL = COMMANDS[()]

SAFE_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",),
                                           blacklist_characters="/\\\x00~"),
                    max_size=12).filter(lambda t: ".." not in t)
JUNK = st.one_of(SAFE_TEXT, st.sampled_from([
    "", "-", "--", "-x", "--nope", "--database", "--as", "=", "--as=admin", "--show=-1",
    "-h", "--version", "0", "-1", "99999999999999999999", "1e3", "nan", "é", "日本",
    "S01-001", "admin", "verify-audit", "users", "demo", "init", "list", "add"]))


def values_for(dest: str, files: dict[str, str]) -> st.SearchStrategy:
    paths = st.sampled_from([*files.values(), "new.db", "missing/x.db", "out", ".", "",
                             "x.xml", "report.txt", str(FORMS_DIR), "forms-nope"])
    pools = {
        "database": st.one_of(paths, st.just(files["db"])),
        "forms": paths, "out": paths, "report": paths, "path": paths, "file": paths,
        "as_user": st.sampled_from(["admin", "dm", "inv", "nobody", "", "ad min"]),
        "admin": st.sampled_from(["admin", "boss", "", "b@d"]),
        "username": st.sampled_from(["newbie", "admin", "", "x y", "a" * 80]),
        "name": st.sampled_from(["New Person", "", " "]),
        "admin_name": st.sampled_from(["Ada Admin", ""]),
        "site": st.sampled_from(["S01", "S99", "", "s01"]),
        "subject": st.sampled_from(["S01-001", "1", "0", "-1", "S99-999", ""]),
        "jobs": st.sampled_from(["-1", "0", "1", "x", "", "1.5"]),  # never worker processes
        "subjects": st.sampled_from(["-1", "0", "1", "x", ""]),
        "show": st.sampled_from(["-5", "0", "3", "99999999999999999999", "x"]),
    }
    return st.one_of(pools.get(dest, JUNK), JUNK)


def _is_exit(action: argparse.Action) -> bool:
    return isinstance(action, argparse._HelpAction | argparse._VersionAction)


@st.composite
def argvs(draw, files: dict[str, str]) -> list[str]:
    """Mostly well-formed command lines (required options given), then a little junk."""
    argv: list[str] = []
    for action in draw(st.lists(st.sampled_from([a for a in GLOBAL if not _is_exit(a)]),
                                max_size=2), label="global"):
        argv += _use(draw, action, files)
    if "--database" not in argv and draw(st.integers(0, 3)):
        argv += ["--database", files["db"]]
    path = draw(st.sampled_from(sorted(COMMANDS)), label="command")
    argv += list(path)
    actions = [a for a in COMMANDS[path] if not _is_exit(a)]
    chosen = [a for a in actions if (a.required or not a.option_strings)
              and draw(st.integers(0, 9))]
    if actions:
        chosen += draw(st.lists(st.sampled_from(actions), max_size=4), label="options")
    if draw(st.integers(0, 19)) == 0:
        chosen.append(next(a for a in COMMANDS[path] if _is_exit(a)))
    for action in chosen:
        argv += _use(draw, action, files)
    if draw(st.integers(0, 4)) == 0:  # a stray token somewhere (rarely in front)
        argv.insert(len(argv) - draw(st.integers(0, len(argv))), draw(JUNK))
    return argv


def _use(draw, action: argparse.Action, files: dict[str, str]) -> list[str]:
    if action.option_strings:
        opt = draw(st.sampled_from(action.option_strings))
        if action.nargs == 0:
            return [opt]
        value = draw(st.sampled_from(list(action.choices)) if action.choices and
                     draw(st.booleans()) else values_for(action.dest, files))
        return [f"{opt}={value}"] if draw(st.integers(0, 4)) == 0 else [opt, value]
    if action.choices and draw(st.booleans()):
        return [draw(st.sampled_from(list(action.choices)))]
    return [draw(values_for(action.dest, files))]


@pytest.fixture
def cli_world(tmp_path, monkeypatch, protocol, form_definitions):
    """A one-subject study, a valid ODM file and a junk file; cwd in a temp folder."""
    from crf_app.services import demo
    from crf_app.services.odm_export import export_odm

    lap = make_laptop(tmp_path / "study.db", protocol, form_definitions)
    demo.populate(lap.inv, 1, date.today())
    export_odm(lap.dm, tmp_path / "valid.xml")
    lap.study.close()
    (tmp_path / "junk.txt").write_text("not a database\n" * 20)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    real_populate = demo.populate
    monkeypatch.setattr(demo, "populate", lambda ctx, n, today, seed=7:
                        real_populate(ctx, min(n, 1), today, seed))
    import crf_app.gui.app

    monkeypatch.setattr(crf_app.gui.app, "run_gui", lambda *a, **k: 0)
    return {"db": str(tmp_path / "study.db"), "odm": str(tmp_path / "valid.xml"),
            "junk": str(tmp_path / "junk.txt")}


@settings(max_examples=examples(100), deadline=None,
          phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_command_line_exits_with_a_code_never_a_traceback(cli_world, capsys,
                                                              monkeypatch, data):
    argv = data.draw(argvs(cli_world), label="argv")
    answers = data.draw(st.lists(st.sampled_from([PASSWORD, "Demo-pass-2026", "wrong", "",
                                                  "admin", "Ada Admin"]), max_size=6),
                        label="stdin")
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(f"{a}\n" for a in answers)))
    capsys.readouterr()
    try:
        code = cli.main(argv)
    except SystemExit as exc:
        err = capsys.readouterr().err
        assert exc.code in (0, 2), f"SystemExit({exc.code!r}) for {argv}"
        if exc.code == 2:
            assert "usage: crf-app" in err, err
        event(f"argparse exit {exc.code}")
        return
    assert isinstance(code, int) and not isinstance(code, bool), (argv, code)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    event(f"exit {code}")


@pytest.mark.parametrize("argv", [
    ["forms", "check", "--forms", "forms-nope"],
    ["forms", "dictionary", "--forms", "forms-nope", "--out", "dd"],
    ["forms", "check", "--forms", "JUNK"],
    ["--database", "JUNK", "users", "list"],
    ["--database", "DB", "verify-audit", "--show", "-3"],
    ["--database", "DB", "backup", ""],
    ["--database", "DB", "import-odm", "missing.xml", "--as", "dm"],
    ["--database", "DB", "import-odm", "JUNK", "--as", "dm"],
    ["--database", "DB", "export-pdf", "--out", "pdf", "--all", "--jobs", "0", "--as", "dm"],
    ["--database", "DB", "report", "ae", "--site", "S99"],
    ["--database", "new.db", "import-odm", "JUNK", "--new-study", "--admin", "a",
     "--admin-name", "A"],
    ["forms", "dictionary", "--out", "JUNK"],  # was FileExistsError
    ["--database", "DB", "export-csv", "--out", "JUNK", "--as", "dm"],  # was FileExistsError
    ["--database", "DB", "export-odm", "--out", ".", "--as", "dm"],  # was ValueError
    ["--database", "DB", "export-odm", "--out", "", "--as", "dm"],  # was ValueError
    ["--database", "DB", "import-odm", "ODM", "--as", "dm", "--report", "."],  # IsADirectory
    ["--database", "nonsense://x", "users", "list"],  # was NoSuchModuleError
])
def test_command_lines_found_by_fuzzing(cli_world, capsys, monkeypatch, argv):
    """Regressions: each once ended in a traceback; now an exit code and a message."""
    names = {"DB": cli_world["db"], "JUNK": cli_world["junk"], "ODM": cli_world["odm"]}
    argv = [names.get(a, a) for a in argv]
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{PASSWORD}\n" * 4))
    code = cli.main(argv)
    assert isinstance(code, int)
    assert "Traceback" not in capsys.readouterr().err


def test_an_empty_passphrase_for_a_file_that_is_not_sqlite(cli_world, capsys,
                                                          monkeypatch):
    """Found by fuzzing (sqlcipher3 OperationalError); fixed in the encryption code."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    code = cli.main(["--database", cli_world["odm"], "users", "list"])
    assert code == 1 and "error" in capsys.readouterr().err
