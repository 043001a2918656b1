"""`python -m crf_app` is the same as the `crf-app` command."""

from crf_app.cli import main

raise SystemExit(main())
