"""Loading the study definition (protocol + form files) that a new study is created from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from crf_app.domain.errors import ProtocolError
from crf_app.domain.protocol import Protocol, load_protocol
from crf_app.paths import FORMS_DIR


@dataclass(frozen=True)
class StudyDefinition:
    protocol: Protocol
    forms: dict  # FormLibrary.to_dict(): what the database stores as its metadata version


def load_definition(forms_dir: Path = FORMS_DIR, study_file: Path | None = None
                    ) -> StudyDefinition:
    """Read study.yaml and every form file; refuse if the schedule names a missing form."""
    from crf_app.domain.forms import load_form_library

    study_file = study_file or forms_dir / "study.yaml"
    protocol = load_protocol(study_file)
    library = load_form_library(forms_dir)
    missing = [f for f in protocol.form_ids() if f not in library.forms]
    if missing:
        raise ProtocolError(f"{study_file}: visits.forms: no form file defines "
                            f"{', '.join(missing)} (looked in {forms_dir})")
    return StudyDefinition(protocol, library.to_dict())
