"""Where the app's data files live (the study definition, resources)."""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
FORMS_DIR = PROJECT_ROOT / "forms"
RESOURCES_DIR = PROJECT_ROOT / "resources"
STUDY_FILE = FORMS_DIR / "study.yaml"
