"""What an import did (the report shown to the user and stored with the file), and its errors."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from crf_app.domain.errors import CrfError

MAX_PROBLEMS = 50


class ImportRefused(CrfError):
    """The file cannot be imported; nothing was changed."""

    def __init__(self, message: str, problems: list[str] | None = None):
        self.problems = problems or []
        more = "".join(f"\n  - {p}" for p in self.problems[:MAX_PROBLEMS])
        if len(self.problems) > MAX_PROBLEMS:
            more += f"\n  … and {len(self.problems) - MAX_PROBLEMS} more"
        super().__init__(f"{message}{more}")


class ImportCancelled(CrfError):
    """The user cancelled the import; nothing was changed."""


@dataclass
class ImportReport:
    """What an import did, and everything it could not map (never silently dropped)."""

    path: str
    mode: str  # "merge" or "new study"
    file_oid: str = ""
    prior_file_oid: str | None = None
    file_type: str = ""
    source_system: str = ""
    study_oid: str = ""
    already_imported: bool = False
    subjects_added: int = 0
    subjects_updated: int = 0
    subjects_unchanged: int = 0
    forms_added: int = 0
    values_added: int = 0
    values_changed: int = 0
    values_removed: int = 0
    fields_changed: int = 0
    log_rows_added: int = 0
    log_values_changed: int = 0
    signatures_added: int = 0
    signatures_invalidated: int = 0
    events_recorded: int = 0
    conflicts: list[str] = field(default_factory=list)
    not_imported: Counter = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    extensions: Counter = field(default_factory=Counter)

    def lines(self) -> list[str]:
        """The report as text lines (what the CLI prints and the GUI shows)."""
        out = [f"ODM file {self.path}",
               f"  FileOID {self.file_oid or '?'} ({self.file_type or '?'}"
               + (f", follows {self.prior_file_oid}" if self.prior_file_oid else "")
               + f"), from {self.source_system or 'an unnamed system'}, study "
                 f"{self.study_oid or '?'}"]
        if self.already_imported:
            out.append("  This file was already imported; nothing changed.")
            return out
        out.append(f"  {self.mode}: {self.subjects_added} subjects added, "
                   f"{self.subjects_updated} updated, {self.subjects_unchanged} unchanged; "
                   f"{self.forms_added} forms added; values: {self.values_added} added, "
                   f"{self.values_changed} changed, {self.values_removed} removed; "
                   f"{self.fields_changed} subject/visit fields changed; "
                   f"{self.events_recorded} audit events recorded")
        if self.log_rows_added or self.log_values_changed or self.signatures_added or \
                self.signatures_invalidated:
            out.append(f"  logs: {self.log_rows_added} adverse-event and dosing records "
                       f"added, {self.log_values_changed} of their values changed; "
                       f"signatures: {self.signatures_added} added, "
                       f"{self.signatures_invalidated} invalidated")
        if self.conflicts:
            out.append(f"  {len(self.conflicts)} merge conflicts (kept the local value; a data "
                       "manager must resolve them):")
            out += [f"    - {c}" for c in self.conflicts]
        if self.not_imported:
            out.append("  Not imported:")
            out += [f"    - {what}" + (f" (×{n})" if n > 1 else "")
                    for what, n in sorted(self.not_imported.items())]
        if self.notes:
            out.append("  Mapping notes:")
            out += [f"    - {n}" for n in self.notes]
        if self.warnings:
            out.append("  Warnings:")
            out += [f"    - {w}" for w in self.warnings]
        if self.extensions:
            out.append("  Vendor extensions ignored: " + ", ".join(
                f"{ns} ({n} elements)" for ns, n in sorted(self.extensions.items())))
        return out

    def text(self) -> str:
        return "\n".join(self.lines())


def format_report(report: ImportReport) -> str:
    """The import report as plain text."""
    return report.text()
