"""Reproducible performance measurements (`make bench`). Each prints its figures."""
