"""crf-app: offline-first clinical-trial data capture."""

__version__ = "0.1.0"
