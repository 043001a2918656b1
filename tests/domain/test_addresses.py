"""The audit address grammar, written out."""

from crf_app.domain.addresses import (
    ae_address,
    dose_address,
    form_address,
    item_address,
    visit_address,
)


def test_addresses():
    assert visit_address("S01-004", "SCR") == "S01-004/SCR"
    assert form_address("S01-004", "SCR", "vital_signs") == "S01-004/SCR/vital_signs"
    assert item_address("S01-004", "SCR", "vital_signs", "PULSE") == \
        "S01-004/SCR/vital_signs/PULSE"
    assert item_address("S01-004", "SCR", "conmeds", "CMTRT", 1) == \
        "S01-004/SCR/conmeds/CMTRT[2]"
    assert ae_address("S01-004", 3) == "S01-004/AE3"
    assert dose_address("S01-004", 17) == "S01-004/dose/17"
