"""Fixtures for the ODM/CSV interchange tests: laptops with data, the ODM schema, the samples."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from tests.interchange.odm_helpers import ODM_XSD, SAMPLES, Laptop, make_laptop


@pytest.fixture(scope="session")
def odm_schema():
    """The official ODM 1.3.2 schema (lxml): ../shared/odm when present, else the copy of the
    same CDISC files that the odmlib package bundles (so CI validates on any machine)."""
    from lxml import etree

    xsd = ODM_XSD
    if not xsd.exists():
        import odmlib

        xsd = Path(odmlib.__file__).parent / "schemas" / "odm" / "1.3.2" / "ODM1-3-2.xsd"
    assert xsd.exists(), f"no ODM 1.3.2 schema at {xsd}"
    return etree.XMLSchema(etree.parse(str(xsd)))


@pytest.fixture(scope="session")
def samples():
    if not SAMPLES.exists():
        pytest.skip("../shared/samples not present")
    return SAMPLES


@pytest.fixture
def laptops(tmp_path, protocol, form_definitions):
    """laptops("a") -> a new laptop: its own study database (same protocol and forms)."""
    made: list[Laptop] = []

    def _make(name: str) -> Laptop:
        laptop = make_laptop(tmp_path / f"{name}.db", protocol, form_definitions)
        made.append(laptop)
        return laptop

    yield _make
    for laptop in made:
        laptop.study.close()


@pytest.fixture
def laptop_a(laptops):
    """A laptop with six subjects at every stage (the demo's population), forms saved."""
    from crf_app.services.demo import populate

    a = laptops("a")
    populate(a.inv, 6, date.today())
    return a


@pytest.fixture
def laptop_full(laptop_a):
    """Laptop A with log corrections, a reported SAE, a dosing query and signatures."""
    from tests.interchange.odm_helpers import enrich

    enrich(laptop_a)
    return laptop_a
