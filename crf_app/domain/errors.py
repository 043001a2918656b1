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


class StaleData(CrfError):
    """Someone else saved the record since it was read."""
