"""Write a small SQLite file at a given schema revision (kept in tests/migrations/data/).

Run once per released schema revision: `python -m tests.migrations.make_fixture_db 0002`.
Each file is then upgraded to head by the tests, as a site laptop's old database would be.
"""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

from crf_app.storage.engine import make_engine
from crf_app.storage.migrate import upgrade_to

DATA = Path(__file__).parent / "data"


def make(revision: str) -> Path:
    path = DATA / f"rev-{revision}.db"
    path.unlink(missing_ok=True)
    engine = make_engine(f"sqlite:///{path}")
    upgrade_to(engine, revision)
    engine.dispose()
    con = sqlite3.connect(path)
    con.executescript("""
    insert into study values (1, 'OLD-STUDY', 'An old study', 'P-1', 0, '2026-01-01 00:00:00');
    insert into metadata_version values (1, 1, 1, 'Protocol 1.0', '{}', '{}',
                                         '2026-01-01 00:00:00');
    insert into site values (1, 1, 'S01', 'Site one');
    insert into user_account values (1, 'admin', 'Ada Admin', 'admin', NULL, 'x', 1, 0,
                                     '2026-01-01 00:00:00', NULL);
    insert into subject values (1, 1, 1, 'S01-001', 'ABC', 1960, 'F', 'NSX', '2026-01-02',
                                '2026-01-02', '2026-01-03', 'on_study', '', NULL, 1, 1);
    insert into visit values (1, 1, 'SCR', 1, '2026-01-02', '2025-12-26', '2026-01-02',
                              '2026-01-02', 'done', '', 1);
    insert into audit_event values (1, '2026-01-01 00:00:00', 1, 'admin', 'create', 'study',
                                    'OLD-STUDY', '', NULL, 'An old study', '', NULL,
                                    '0000000000000000000000000000000000000000000000000000000000000000',
                                    'deadbeef');
    """)
    if revision >= "0002":
        con.executescript("""
        insert into form_instance values (1, 1, 'vital_signs', 1, 'complete',
                                          '2026-01-02 10:00:00', 'admin', 1);
        insert into item_value values (1, 1, 'VSSYSBP', 0, '128');
        """)
    con.commit()
    con.execute("PRAGMA journal_mode=DELETE")
    con.close()
    return path


if __name__ == "__main__":
    for rev in sys.argv[1:]:
        print(make(rev))
