"""`crf-app`: opens the GUI; subcommands do everything scriptable."""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Sequence
from pathlib import Path

from crf_app import __version__
from crf_app.domain.errors import CrfError, FieldError, ValidationFailed
from crf_app.domain.roles import Role
from crf_app.paths import FORMS_DIR


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="crf-app",
        description="Offline-first clinical-trial data capture. With no command, opens the app.")
    p.add_argument("--version", action="version", version=f"crf-app {__version__}")
    p.add_argument("--database", metavar="URL",
                   help="SQLAlchemy URL or SQLite file path (default: $CRF_DATABASE_URL, else "
                        "crf-app.db in your per-user data folder)")
    p.add_argument("--first-run-demo", action="store_true",
                   help="when the database does not exist yet, create the demo study first")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    sp = sub.add_parser("init", help="create a real study from forms/study.yaml and its first "
                                     "admin account")
    sp.add_argument("--forms", type=Path, default=FORMS_DIR, help="folder with study.yaml and "
                                                                  "the form files")
    sp.add_argument("--admin", metavar="USERNAME", help="admin user name (asked if omitted)")
    sp.add_argument("--admin-name", metavar="NAME", help="admin's full name (asked if omitted)")
    sp.add_argument("--encrypt", action="store_true",
                    help="encrypt the new database file (SQLCipher); asks for a passphrase")

    sp = sub.add_parser("demo", help="create a demo database: accounts of every role and "
                                     "subjects at different stages")
    sp.add_argument("--subjects", type=int, default=12,
                    help="number of subjects (default 12); above 100 a large study is generated "
                         "in bulk: every visit's forms filled, dosing, AEs, queries, "
                         "verification and signatures over --sites sites")
    sp.add_argument("--large", action="store_true",
                    help="generate the large study in bulk even for a few subjects")
    sp.add_argument("--sites", type=int, default=None, metavar="N",
                    help="large study: number of sites (default 10)")
    sp.add_argument("--seed", type=int, default=None,
                    help="large study: random seed (default 2026; the same seed gives the same "
                         "study)")

    sp = sub.add_parser("users", help="list or add user accounts")
    usub = sp.add_subparsers(dest="users_command", metavar="ACTION", required=True)
    usub.add_parser("list", help="list the accounts")
    up = usub.add_parser("add", help="add an account (you log in as an admin or data manager)")
    up.add_argument("username")
    up.add_argument("--name", required=True, help="full name, printed on signatures")
    up.add_argument("--role", required=True, choices=[r.value for r in Role])
    up.add_argument("--site", help="site code the user works at (default: all sites)")
    up.add_argument("--as", dest="as_user", required=True, metavar="USERNAME",
                    help="your own admin or data-manager account")

    sp = sub.add_parser("verify-audit", help="walk the hash-chained audit trail and replay it "
                                             "against the data; exit 1 and name every broken "
                                             "event and every value changed, deleted or "
                                             "inserted behind the app's back")
    sp.add_argument("--show", type=int, default=50, metavar="N",
                    help="list at most N discrepancies (default 50; all are counted)")

    sp = sub.add_parser("encrypt", help="write an encrypted copy (SQLCipher) of this plain "
                                        "database; asks for the passphrase twice")
    sp.add_argument("--out", type=Path, required=True, metavar="FILE",
                    help="the new encrypted database file")

    sp = sub.add_parser("backup", help="write a consistent copy of the database (safe while the "
                                       "app is open)")
    sp.add_argument("path", type=Path, help="target file or folder")

    sp = sub.add_parser("forms", help="check the form files or write the data dictionary")
    fsub = sp.add_subparsers(dest="forms_command", metavar="ACTION", required=True)
    fp = fsub.add_parser("check", help="validate study.yaml and every form file")
    fp.add_argument("--forms", type=Path, default=FORMS_DIR)
    fp = fsub.add_parser("dictionary", help="write the data dictionary (CSV and Markdown)")
    fp.add_argument("--forms", type=Path, default=FORMS_DIR)
    fp.add_argument("--out", type=Path, required=True, help="output folder")
    sp = sub.add_parser("export-pdf", help="write PDF casebooks (a subject, a site or all) or "
                                           "the blank CRF book")
    which = sp.add_mutually_exclusive_group()
    which.add_argument("--subject", metavar="ID", help="screening number (S01-004) or id")
    which.add_argument("--site", metavar="ID", help="site code")
    which.add_argument("--all", action="store_true", help="every subject you may see")
    sp.add_argument("--out", type=Path, required=True, metavar="DIR")
    sp.add_argument("--blank", action="store_true", help="the blank CRF book (paper back-up)")
    sp.add_argument("--annotated", action="store_true", help="with --blank: annotated CRF")
    sp.add_argument("--page-size", choices=["A4", "Letter"], default="A4")
    sp.add_argument("--jobs", type=int, default=None, help="worker processes (default: auto)")
    sp.add_argument("--as", dest="as_user", required=True, metavar="USERNAME",
                    help="your account (exporting casebooks needs the monitor, data-manager "
                         "or admin role)")

    sp = sub.add_parser("export-odm", help="write the study (or a subject or site) as a CDISC "
                                           "ODM 1.3.2 file, chained to the previous export")
    which = sp.add_mutually_exclusive_group()
    which.add_argument("--subject", metavar="ID", help="screening number (S01-004) or id")
    which.add_argument("--site", metavar="ID", help="site code")
    sp.add_argument("--snapshot", action="store_true",
                    help="current values only, no audit records, outside the laptop chain")
    sp.add_argument("--out", type=Path, required=True, metavar="FILE")
    sp.add_argument("--as", dest="as_user", required=True, metavar="USERNAME",
                    help="your account (monitor, data manager or admin)")

    sp = sub.add_parser("import-odm", help="merge another laptop's ODM file of this study, or "
                                           "(--new-study) create a study from an ODM export of "
                                           "OpenClinica, REDCap or crf-app")
    sp.add_argument("file", type=Path, help="the ODM XML file")
    sp.add_argument("--new-study", action="store_true",
                    help="the database is empty: build the study from the file's metadata")
    sp.add_argument("--strict", action="store_true",
                    help="with --new-study: refuse the file if anything cannot be mapped")
    sp.add_argument("--as", dest="as_user", metavar="USERNAME",
                    help="merge: your data-manager or admin account")
    sp.add_argument("--admin", metavar="USERNAME", help="--new-study: first admin's user name")
    sp.add_argument("--admin-name", metavar="NAME", help="--new-study: admin's full name")
    sp.add_argument("--report", type=Path, metavar="FILE",
                    help="also write the import report to FILE")

    sp = sub.add_parser("export-csv", help="one wide CSV per form, long AE and dosing files "
                                           "and the data dictionary, for R or pandas")
    sp.add_argument("--out", type=Path, required=True, metavar="DIR")
    sp.add_argument("--as", dest="as_user", required=True, metavar="USERNAME",
                    help="your account (monitor, data manager or admin)")

    sp = sub.add_parser("report", help="study reports: adverse events or dosing compliance")
    sp.add_argument("kind", choices=["ae", "sae", "compliance"],
                    help="ae: AE table term × grade (and SAE list); sae: SAE list; "
                         "compliance: instillations given / planned per subject")
    sp.add_argument("--site", help="one site only (default: all sites)")
    sp.add_argument("--csv", action="store_true", help="CSV instead of aligned text")
    return p


def _read_secret(prompt: str) -> str:
    if sys.stdin.isatty():
        return getpass.getpass(prompt)
    line = sys.stdin.readline()
    return line.rstrip("\n")


def _ask(prompt: str) -> str:
    if sys.stdin.isatty():
        return input(prompt)
    print(prompt, end="", file=sys.stderr)
    return sys.stdin.readline().strip()


def _repeated_secret(prompt: str) -> str:
    first = _read_secret(prompt)
    if _read_secret("Repeat it: ") != first:
        raise ValidationFailed([FieldError("passphrase", "repeat", "the two entries differ")])
    return first


def _ask_passphrase(database: str | None) -> None:
    """An encrypted database file: ask its passphrase (unless $CRF_DB_PASSPHRASE gives it)."""
    from crf_app.services.encryption import needs_passphrase, unlock

    if needs_passphrase(database):
        unlock(database, _read_secret("Database passphrase: "))


def _new_passphrase(database: str | None) -> None:
    from crf_app.services.encryption import use_passphrase_for_new

    use_passphrase_for_new(database, _repeated_secret("Passphrase for the new database: "))


def _fail(message: str) -> int:
    print(f"crf-app: error: {message}", file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except ValidationFailed as exc:
        for err in exc.errors:
            print(f"crf-app: error: {err.field}: {err.message}", file=sys.stderr)
        return 1
    except CrfError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 130
    except OSError as exc:  # a path given on the command line: missing, a folder, a file…
        where = f": {exc.filename}" if exc.filename else ""
        return _fail(f"{exc.strerror or exc}{where}")
    except Exception as exc:
        from sqlalchemy.exc import ArgumentError

        if isinstance(exc, ArgumentError):  # --database is not a URL SQLAlchemy can open
            return _fail(f"--database: {exc}")
        raise


def _dispatch(args: argparse.Namespace) -> int:
    cmd = args.command
    if cmd is None:
        from crf_app.gui.app import run_gui

        return run_gui(args.database, first_run_demo=args.first_run_demo)
    if cmd == "forms":
        return _forms(args)
    if cmd in ("init", "demo"):
        if getattr(args, "encrypt", False):
            _new_passphrase(args.database)
        return _create(args)
    _ask_passphrase(args.database)
    if cmd == "encrypt":
        from crf_app.services.encryption import encrypt_copy

        print(f"encrypted copy written to "
              f"{encrypt_copy(args.database, args.out, _repeated_secret('Passphrase: '))}")
        return 0
    if cmd == "import-odm" and args.new_study:
        return _import_new_study(args)
    from crf_app.services.context import open_study

    study = open_study(args.database)
    try:
        if cmd == "users":
            return _users(args, study)
        if cmd == "verify-audit":
            from crf_app.integrity import verify_audit

            report = verify_audit(study.db)
            print("\n".join(report.lines(show=max(args.show, 0))))
            return 0 if report.ok else 1
        if cmd == "backup":
            from crf_app.services.maintenance import backup

            print(f"backup written to {backup(study.db, args.path)}")
            return 0
        if cmd == "export-pdf":
            return _export_pdf(args, study)
        if cmd in ("export-odm", "import-odm", "export-csv"):
            return _interchange(args, study)
        if cmd == "report":
            from crf_app.services.reports import report_main

            sys.stdout.write(report_main(study, args.kind, args.site, args.csv))
            return 0
    finally:
        study.close()
    raise AssertionError(cmd)


def _create(args: argparse.Namespace) -> int:
    from crf_app.services.context import open_new_database
    from crf_app.services.definitions import load_definition
    from crf_app.services.setup import NewUser

    definition = load_definition(getattr(args, "forms", FORMS_DIR))
    db = open_new_database(args.database)
    try:
        if args.command == "demo" and (args.large or args.subjects > 100 or args.sites
                                       or args.seed is not None):
            # a large study, generated in bulk (crf_app.generator.study)
            from crf_app.generator.study import DEFAULT_SEED, DEFAULT_SITES, generate_study
            from crf_app.services.demo import DEMO_PASSWORD

            if args.subjects < 1 or not 1 <= (args.sites or DEFAULT_SITES) <= 99:
                return _fail("--subjects must be at least 1 and --sites between 1 and 99")
            tty = sys.stderr.isatty()
            summary = generate_study(
                db, definition.protocol, definition.forms, subjects=args.subjects,
                sites=args.sites or DEFAULT_SITES,
                seed=DEFAULT_SEED if args.seed is None else args.seed,
                progress=lambda done, total: tty and print(
                    f"\r{done}/{total} subjects", end="", file=sys.stderr, flush=True))
            if tty:
                print(file=sys.stderr)
            print(f"demo study {summary.study.oid} generated in {summary.study.location}: "
                  f"{summary.text()}\nevery demo account (admin, coordinator, investigator, "
                  f"monitor, datamanager) and each site's investigator (investigator_s02…) has "
                  f"the password {DEMO_PASSWORD}")
            return 0
        if args.command == "demo":
            from crf_app.services.demo import DEMO_PASSWORD, create_demo_study

            study = create_demo_study(db, definition.protocol, definition.forms,
                                      subjects=args.subjects)
            print(f"demo study {study.oid} created in {study.location}; every demo account "
                  f"(admin, coordinator, investigator, monitor, datamanager) has the password "
                  f"{DEMO_PASSWORD}")
            return 0
        from crf_app.services.setup import create_study

        username = args.admin or _ask("Admin user name: ")
        full_name = args.admin_name or _ask("Admin full name: ")
        password = _read_secret("Admin password: ")
        again = _read_secret("Repeat the password: ")
        if password != again:
            return _fail("password: the two passwords differ")
        study = create_study(db, definition.protocol, definition.forms,
                             admin=NewUser(username, full_name, Role.ADMIN, password))
        print(f"study {study.oid} created in {study.location}; log in as {username}")
        return 0
    finally:
        db.dispose()


def _users(args: argparse.Namespace, study) -> int:
    from crf_app.services.accounts import create_user, list_users, login
    from crf_app.services.setup import NewUser

    if args.users_command == "list":
        rows = list_users(study)
        print(f"{'username':<16} {'role':<13} {'site':<6} {'state':<8} full name")
        for r in rows:
            state = "locked" if r.locked else ("active" if r.active else "inactive")
            print(f"{r.username:<16} {r.role:<13} {r.site:<6} {state:<8} {r.full_name}")
        return 0
    ctx = login(study, args.as_user, _read_secret(f"Password for {args.as_user}: "))
    password = _read_secret(f"New password for {args.username}: ")
    create_user(ctx, NewUser(args.username, args.name, args.role, password, args.site))
    print(f"user {args.username} added as {args.role}")
    return 0


def _export_pdf(args: argparse.Namespace, study) -> int:
    from crf_app.services import pdf_export
    from crf_app.services.accounts import login

    ctx = login(study, args.as_user, _read_secret(f"Password for {args.as_user}: "))
    if args.blank or args.annotated:
        path = pdf_export.export_blank_book(ctx, args.out, args.annotated, args.page_size)
        print(f"written {path}")
        return 0
    if args.subject:
        sid = pdf_export.subject_id_for(ctx, args.subject)
        print(f"written {pdf_export.export_subject_pdf(ctx, sid, args.out, args.page_size)}")
        return 0
    if not (args.site or args.all):
        return _fail("give --subject ID, --site ID, --all or --blank")

    def progress(done: int, total: int, current: str) -> None:
        print(f"\r{done}/{total} {current}   ", end="", file=sys.stderr, flush=True)

    result = pdf_export.export_batch(ctx, args.site, args.out, progress,
                                     page_size=args.page_size, workers=args.jobs)
    print(file=sys.stderr)
    print(f"{len(result.written)} casebooks written to {args.out} in {result.seconds:.1f} s")
    return 0


def _progress(done: int, total: int) -> None:
    if sys.stderr.isatty():
        print(f"\r{done}/{total}   ", end="", file=sys.stderr, flush=True)


def _interchange(args: argparse.Namespace, study) -> int:
    from crf_app.services.accounts import login

    if args.as_user is None:
        return _fail("--as: give your data-manager or admin account to merge a file")
    ctx = login(study, args.as_user, _read_secret(f"Password for {args.as_user}: "))
    if args.command == "export-odm":
        from crf_app.services.odm_export import export_odm

        if not args.out.name or args.out.is_dir():
            return _fail(f"--out: give the name of the ODM file to write ({args.out} is a "
                         "folder)")
        summary = export_odm(ctx, args.out, subject=args.subject, site=args.site,
                             snapshot=args.snapshot, progress=_progress)
        for warning in summary.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        chain = f", follows {summary.prior_file_oid}" if summary.prior_file_oid else ""
        print(f"{summary.subjects} subjects written to {summary.path} ({summary.file_type} "
              f"file {summary.file_oid}{chain})")
        return 0
    if args.command == "export-csv":
        from crf_app.services.csv_service import export_csv

        summary = export_csv(ctx, args.out, progress=_progress)
        print(f"{summary.subjects} subjects, {len(summary.files)} files written to "
              f"{args.out}")
        return 0
    from crf_app.services.odm_import import import_odm

    return _show_report(import_odm(ctx, args.file, progress=_progress), args.report)


def _show_report(report, path: Path | None) -> int:
    text = report.text()
    print(text)
    if path is not None:
        try:
            path.write_text(text + "\n", encoding="utf-8")
        except OSError as exc:
            return _fail(f"--report: cannot write {path}: {exc.strerror} (the import itself "
                         "was done)")
    return 0


def _import_new_study(args: argparse.Namespace) -> int:
    from crf_app.services.context import open_new_database
    from crf_app.services.odm_import import import_new_study
    from crf_app.services.setup import NewUser

    username = args.admin or _ask("Admin user name: ")
    full_name = args.admin_name or _ask("Admin full name: ")
    password = _read_secret("Admin password: ")
    db = open_new_database(args.database)
    try:
        study, report = import_new_study(
            db, args.file, strict=args.strict, progress=_progress,
            admin=NewUser(username, full_name, Role.ADMIN, password))
        _show_report(report, args.report)
        print(f"study {study.oid} created in {study.location}; log in as {username}")
        return 0
    finally:
        db.dispose()


def _forms(args: argparse.Namespace) -> int:
    from crf_app.domain.forms import check_form_files, load_form_library
    from crf_app.domain.forms.dictionary import dictionary_csv, dictionary_markdown
    from crf_app.services.definitions import load_definition

    if args.forms_command == "check":
        problems = check_form_files(args.forms)
        if not problems:
            definition = load_definition(args.forms)
            print(f"{len(definition.forms.get('forms', definition.forms))} form files and "
                  f"study.yaml are valid")
            return 0
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1
    lib = load_form_library(args.forms)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "data_dictionary.csv").write_text(dictionary_csv(lib), encoding="utf-8")
    (args.out / "data_dictionary.md").write_text(dictionary_markdown(lib), encoding="utf-8")
    print(f"data dictionary written to {args.out}/data_dictionary.csv and .md")
    return 0
