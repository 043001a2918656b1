"""Errors a user can cause, each naming the field and the rule it broke."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldError:
    """One broken rule: which field, which rule, and a sentence for the user."""

    field: str
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class CrfError(Exception):
    """Base of every error crf-app reports to a user as a plain message."""


class ValidationFailed(CrfError):
    """Input broke one or more rules; nothing was written."""

    def __init__(self, errors: list[FieldError] | FieldError):
        self.errors = [errors] if isinstance(errors, FieldError) else list(errors)
        super().__init__("; ".join(str(e) for e in self.errors))

    def for_field(self, field: str) -> list[FieldError]:
        """The errors about one field."""
        return [e for e in self.errors if e.field == field]


class PermissionDenied(CrfError):
    """The user's role does not allow the action."""


class NotFound(CrfError):
    """The record named does not exist."""


class ReasonRequired(ValidationFailed):
    """A saved value is being changed without a reason for change."""

    def __init__(self, field: str = "reason"):
        super().__init__(FieldError(field, "reason_for_change",
                                    "a reason for change is required to change a saved value"))


class AuthenticationFailed(CrfError):
    """Wrong user name or password, or a locked account."""


class ProtocolError(CrfError):
    """A protocol or form definition file is invalid."""


class DatabaseRefused(CrfError):
    """The database cannot be opened: not SQLite, corrupt, or newer than this app."""


class StorageFailed(DatabaseRefused):
    """The disk or the database refused a read or a write: a full disk, a read-only file,
    an input/output error, a database held busy by another program. A refused write saved
    nothing of that change; everything saved before it is intact.

    `cause` names the failure for callers that react to it: one of DISK_FULL, READ_ONLY,
    IO_ERROR, BUSY, DAMAGED, CANNOT_OPEN, UNAVAILABLE, OTHER."""

    DISK_FULL = "disk_full"
    READ_ONLY = "read_only"
    IO_ERROR = "io_error"
    BUSY = "busy"
    DAMAGED = "damaged"
    CANNOT_OPEN = "cannot_open"
    UNAVAILABLE = "unavailable"  # a database server that cannot be reached
    OTHER = "other"

    def __init__(self, message: str, cause: str = "other"):
        super().__init__(message)
        self.cause = cause


class PassphraseRequired(DatabaseRefused):
    """The database file is encrypted and no passphrase was given for it."""


class StaleData(CrfError):
    """Someone else saved the record since it was read."""


class LockedData(CrfError):
    """The data is locked by a data manager; the message names the lock."""
