"""The command line, run as a user runs it (a subprocess with its own exit code)."""

import sqlite3
import subprocess
import sys

import pytest

from tests.conftest import PASSWORD


def crf(*args, stdin="", db=None):
    cmd = [sys.executable, "-m", "crf_app"]
    if db is not None:
        cmd += ["--database", str(db)]
    return subprocess.run([*cmd, *args], input=stdin, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("args", [[], ["init"], ["demo"], ["users"], ["users", "add"],
                                  ["users", "list"], ["verify-audit"], ["backup"],
                                  ["forms"], ["forms", "check"], ["forms", "dictionary"],
                                  ["export-pdf"], ["report"], ["export-odm"],
                                  ["import-odm"], ["export-csv"]])
def test_help_for_every_command(args):
    out = crf(*args, "--help")
    assert out.returncode == 0, out.stderr
    assert "usage: crf-app" in out.stdout


def test_init_creates_a_study_and_its_admin(tmp_path):
    db = tmp_path / "real.db"
    out = crf("init", "--admin", "boss", "--admin-name", "Bo Boss",
              stdin=f"{PASSWORD}\n{PASSWORD}\n", db=db)
    assert out.returncode == 0, out.stderr
    assert "NASEMAX-PSR-01" in out.stdout
    listing = crf("users", "list", db=db)
    assert "boss" in listing.stdout and "admin" in listing.stdout
    again = crf("init", "--admin", "boss2", "--admin-name", "B",
                stdin=f"{PASSWORD}\n{PASSWORD}\n", db=db)
    assert again.returncode == 1 and "already holds a study" in again.stderr


def test_init_refuses_a_weak_password_and_writes_no_study(tmp_path):
    db = tmp_path / "real.db"
    out = crf("init", "--admin", "boss", "--admin-name", "Bo Boss", stdin="short\nshort\n", db=db)
    assert out.returncode == 1 and "password" in out.stderr
    assert "holds no study" in crf("users", "list", db=db).stderr


def test_init_refuses_a_bad_protocol_file(tmp_path):
    forms = tmp_path / "forms"
    forms.mkdir()
    (forms / "study.yaml").write_text("study_id: X\ntitel: typo\n", encoding="utf-8")
    out = crf("init", "--forms", str(forms), "--admin", "a", "--admin-name", "A",
              stdin="x\nx\n", db=tmp_path / "x.db")
    assert out.returncode == 1
    assert "study.yaml" in out.stderr and "titel" in out.stderr
    assert not (tmp_path / "x.db").exists()


def test_demo_then_users_verify_and_backup(tmp_path):
    db = tmp_path / "demo.db"
    out = crf("demo", db=db)
    assert out.returncode == 0, out.stderr
    users = crf("users", "list", db=db).stdout
    for name in ("admin", "coordinator", "investigator", "monitor", "datamanager"):
        assert name in users
    added = crf("users", "add", "nurse2", "--name", "Nora Nurse", "--role", "coordinator",
                "--site", "S02", "--as", "admin", stdin=f"Demo-pass-2026\n{PASSWORD}\n", db=db)
    assert added.returncode == 0, added.stderr
    denied = crf("users", "add", "x2", "--name", "X", "--role", "monitor", "--as", "monitor",
                 stdin=f"Demo-pass-2026\n{PASSWORD}\n", db=db)
    assert denied.returncode == 1 and "may not manage user accounts" in denied.stderr
    ok = crf("verify-audit", db=db)
    assert ok.returncode == 0 and "chain intact" in ok.stdout
    target = tmp_path / "copy.db"
    assert crf("backup", str(target), db=db).returncode == 0
    con = sqlite3.connect(target)
    assert con.execute("select count(*) from subject").fetchone()[0] == 12
    con.close()


def test_verify_audit_catches_a_raw_sqlite_edit(study):
    path = study.db.path
    study.close()
    con = sqlite3.connect(path)
    con.execute("drop trigger audit_event_no_update")
    con.execute("update audit_event set new_value = 'Forged' where id = 5")
    con.commit()
    con.close()
    out = crf("verify-audit", db=path)
    assert out.returncode == 1
    assert "BROKEN at event 5" in out.stdout and "altered" in out.stdout


@pytest.mark.parametrize("content", [b"just some text\n" * 50, b""])
def test_cli_refuses_a_file_that_is_not_a_database(tmp_path, content):
    path = tmp_path / "bad.db"
    path.write_bytes(content)
    out = crf("users", "list", db=path)
    assert out.returncode == 1
    assert ("not a SQLite database" in out.stderr) or ("holds no study" in out.stderr)
    assert path.read_bytes() == content or content == b""


def test_export_pdf_and_reports_on_the_demo(tmp_path):
    from pypdf import PdfReader

    db = tmp_path / "demo.db"
    assert crf("demo", db=db).returncode == 0
    out = crf("export-pdf", "--subject", "S02-005", "--out", str(tmp_path / "pdf"), "--as",
              "monitor", stdin="Demo-pass-2026\n", db=db)
    assert out.returncode == 0, out.stderr
    text = "".join(p.extract_text() for p in PdfReader(next((tmp_path / "pdf").glob("*.pdf")))
                   .pages)
    assert "S02-005" in text and "Nasal irritation" in text  # the AE log is in the casebook
    assert "LOT-26" in text  # and the dosing log
    denied = crf("export-pdf", "--subject", "S01-001", "--out", str(tmp_path / "x"), "--as",
                 "coordinator", stdin="Demo-pass-2026\n", db=db)
    assert denied.returncode == 1 and "may not export" in denied.stderr
    report = crf("report", "ae", db=db)
    assert report.returncode == 0 and "Headache" in report.stdout


def test_odm_and_csv_round_trip_through_the_command_line(tmp_path):
    from crf_app.services.demo import DEMO_PASSWORD

    a, b, xml = tmp_path / "a.db", tmp_path / "b.db", tmp_path / "a.xml"
    assert crf("demo", "--subjects", "4", db=a).returncode == 0
    out = crf("export-odm", "--out", str(xml), "--as", "datamanager",
              stdin=f"{DEMO_PASSWORD}\n", db=a)
    assert out.returncode == 0, out.stderr
    assert "4 subjects written" in out.stdout and "Transactional" in out.stdout
    again = crf("import-odm", str(xml), "--as", "datamanager", stdin=f"{DEMO_PASSWORD}\n", db=a)
    assert again.returncode == 1 and "exported from this database" in again.stderr
    report = tmp_path / "report.txt"
    new = crf("import-odm", "--new-study", str(xml), "--admin", "root", "--admin-name", "R Oot",
              "--report", str(report), stdin=f"{PASSWORD}\n", db=b)
    assert new.returncode == 0, new.stderr
    assert "4 subjects added" in new.stdout and "4 subjects added" in report.read_text()
    csv = crf("export-csv", "--out", str(tmp_path / "csv"), "--as", "root",
              stdin=f"{PASSWORD}\n", db=b)
    assert csv.returncode == 0, csv.stderr
    header = (tmp_path / "csv" / "vital_signs.csv").read_text().splitlines()[0]
    assert header.startswith("SITE,SUBJECT,VISIT")


def test_import_odm_refuses_a_file_that_is_not_xml(tmp_path):
    from crf_app.services.demo import DEMO_PASSWORD

    a, junk = tmp_path / "a.db", tmp_path / "junk.xml"
    assert crf("demo", "--subjects", "1", db=a).returncode == 0
    junk.write_text("hello", encoding="utf-8")
    out = crf("import-odm", str(junk), "--as", "datamanager", stdin=f"{DEMO_PASSWORD}\n", db=a)
    assert out.returncode == 1
    assert "not an XML file" in out.stderr and "nothing was imported" in out.stderr
    assert "Traceback" not in out.stderr
