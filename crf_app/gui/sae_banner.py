"""The red SAE banner: every serious adverse event whose report is still outstanding."""

from __future__ import annotations

from html import escape

from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QLabel, QWidget

from crf_app.services.adverse_events import SaeAlert, open_sae_alerts
from crf_app.services.context import UserContext

BANNER_STYLE = ("QLabel#SaeBanner { background: #b42318; color: #ffffff; font-weight: 600; "
                "border-radius: 4px; padding: 6px 10px; }")


def alert_text(a: SaeAlert) -> str:
    """'SAE: <term> for <subject> — report by <local deadline> (<time left>)'."""
    left = a.label.replace(" left to report", " left") if not a.overdue else a.label.lower()
    return (f"SAE: {a.term_label} for {a.screening_number} — report by "
            f"{a.deadline.astimezone():%Y-%m-%d %H:%M} ({left})")


class SaeBanner(QLabel):
    """Shown while an SAE report is outstanding (all the user's subjects, or one subject).

    Call `refresh()` after anything may have changed; it also refreshes itself every minute
    so the time left stays true.
    """

    def __init__(self, ctx: UserContext, subject_id: int | None = None,
                 parent: QWidget | None = None, *, follow_subject: bool = False):
        super().__init__(parent)
        self.ctx = ctx
        self.subject_id = subject_id
        self.follow_subject = follow_subject or subject_id is not None
        self.alerts: list[SaeAlert] = []
        self.setObjectName("SaeBanner")
        self.setStyleSheet(BANNER_STYLE)
        self.setWordWrap(True)
        self.setTextFormat(Qt.TextFormat.RichText)
        self.setAccessibleName("Serious adverse events awaiting report")
        self.hide()
        self._timer = QTimer(self)
        self._timer.setInterval(60_000)
        self._timer.timeout.connect(self.refresh)
        self._timer.start()
        if subject_id is not None or not self.follow_subject:
            self.refresh()

    def set_subject(self, subject_id: int | None) -> None:
        """Follow one subject (the subject view's banner); None hides it."""
        self.subject_id = subject_id
        self.follow_subject = True
        self.refresh()

    def refresh(self) -> None:
        if self.follow_subject and self.subject_id is None:
            self.set_alerts([])
            return
        self.set_alerts(open_sae_alerts(self.ctx, self.subject_id))

    def set_alerts(self, alerts: list[SaeAlert]) -> None:
        self.alerts = list(alerts)
        self.setText("<br>".join(escape(alert_text(a)) for a in self.alerts))
        self.setToolTip("Record when the report was sent: Adverse events tab → "
                        "“SAE report sent…”" if self.alerts else "")
        self.setVisible(bool(self.alerts))
