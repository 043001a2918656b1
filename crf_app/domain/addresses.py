"""The audit address grammar, said once: how an audit event names what it is about.

    S01-004                           a subject (its screening number)
    S01-004/SCR                       a visit
    S01-004/SCR/vital_signs           a form instance
    S01-004/SCR/vital_signs/PULSE     an item value outside a repeating section
    S01-004/SCR/conmeds/CMTRT[2]      an item value in row 2 of a repeating section
    S01-004/AE3                       the adverse event with sequence number 3
    S01-004/dose/17                   the dosing record with id 17

Services writing events, the ODM exporter and importer, the replay (`verify-audit`) and the
generator all build addresses here. A screening number may itself contain '/': parsers cut
parts from the right.
"""

from __future__ import annotations


def visit_address(screening_number: str, visit_code: str) -> str:
    return f"{screening_number}/{visit_code}"


def form_address(screening_number: str, visit_code: str, form_id: str) -> str:
    return f"{screening_number}/{visit_code}/{form_id}"


def item_address(screening_number: str, visit_code: str, form_id: str, item_id: str,
                 row: int | None = None) -> str:
    """`row` is the 0-based row of a repeating section, None for an item outside one."""
    label = f"{screening_number}/{visit_code}/{form_id}/{item_id}"
    return label if row is None else f"{label}[{row + 1}]"


def ae_address(screening_number: str, sequence: int) -> str:
    return f"{screening_number}/AE{sequence}"


def dose_address(screening_number: str, dose_id: int) -> str:
    return f"{screening_number}/dose/{dose_id}"
