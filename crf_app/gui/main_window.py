"""The main window: study header, subject list with filter, subject view."""

from __future__ import annotations

from PySide6.QtCore import QItemSelection, Qt
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMainWindow,
    QMessageBox,
    QSplitter,
    QTableView,
    QToolBar,
    QVBoxLayout,
    QWidget,
)

from crf_app import __version__, integrity
from crf_app.domain.errors import CrfError
from crf_app.domain.roles import Action, allowed
from crf_app.gui.enroll_dialog import EnrollDialog
from crf_app.gui.resources import icon
from crf_app.gui.sae_banner import SaeBanner
from crf_app.gui.subject_model import SubjectIdRole, SubjectTableModel
from crf_app.gui.subject_view import SubjectView
from crf_app.services import maintenance
from crf_app.services.context import UserContext
from crf_app.services.subjects import list_subjects


class MainWindow(QMainWindow):
    def __init__(self, ctx: UserContext):
        super().__init__()
        self.ctx = ctx
        study = ctx.study
        self.setWindowTitle(f"crf-app — {study.oid}" + (" (DEMO)" if study.is_demo else ""))
        self.setWindowIcon(icon("app"))
        self.resize(1280, 780)

        central = QWidget()
        outer = QVBoxLayout(central)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(self._header())
        self.sae_banner = SaeBanner(ctx)
        outer.addWidget(self.sae_banner)

        self.model = SubjectTableModel(self)
        self.filter = QLineEdit()
        self.filter.setObjectName("subjectFilter")
        self.filter.setPlaceholderText("Filter subjects (number, initials, site, status…)  Ctrl+F")
        self.filter.setClearButtonEnabled(True)
        self.filter.textChanged.connect(self._filter_changed)
        self.table = QTableView()
        self.table.setObjectName("subjectTable")
        self.table.setModel(self.model)
        self.table.horizontalHeader().setSortIndicator(0, Qt.SortOrder.AscendingOrder)
        self.table.setSortingEnabled(True)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setAlternatingRowColors(True)
        self.table.verticalHeader().hide()
        self.table.verticalHeader().setDefaultSectionSize(22)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.selectionModel().selectionChanged.connect(self._selection_changed)

        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.addWidget(self.filter)
        left_layout.addWidget(self.table)
        # the subject view (tabs, logs, timeline) is built when a subject is first chosen: the
        # list shows without waiting for it (see `subject_view`)
        self._subject_view: SubjectView | None = None
        self._keeping: int | None = None  # see _filter_changed
        self._no_subject = QLabel("Select a subject in the list.")
        self._no_subject.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.splitter = splitter = QSplitter()
        splitter.addWidget(left)
        splitter.addWidget(self._no_subject)
        splitter.setSizes([620, 660])
        outer.addWidget(splitter, 1)
        self.setCentralWidget(central)
        self._actions()
        self.count_label = QLabel()
        self.statusBar().addPermanentWidget(self.count_label)
        self.statusBar().addPermanentWidget(QLabel(f"Database: {study.location}"))
        self._load_subjects()  # the SAE banner has just loaded its alerts
        from crf_app.gui.idle_lock import IdleLock

        self.idle_lock = IdleLock(self, ctx)
        for col, width in enumerate([115, 60, 45, 50, 40, 50, 100, 90, 130]):
            self.table.setColumnWidth(col, width)

    def _header(self) -> QFrame:
        bar = QFrame()
        bar.setObjectName("HeaderBar")
        lay = QHBoxLayout(bar)
        study = self.ctx.study
        title = QLabel(study.title)
        title.setObjectName("StudyHeader")
        lay.addWidget(title, 1)
        user = self.ctx.user
        site = user.site_code or "all sites"
        if user.site_code:
            site = f"{user.site_code} — {study.protocol.site(user.site_code).name}"
        info = QLabel(f"{study.oid} · protocol {study.protocol.protocol_number} "
                      f"v{study.protocol.protocol_version}<br>Site: {site} · "
                      f"{user.full_name} ({user.role.label})")
        info.setObjectName("SubHeader")
        info.setAlignment(Qt.AlignmentFlag.AlignRight)
        lay.addWidget(info)
        return bar

    def _actions(self) -> None:
        can_enroll = allowed(self.ctx.user.role, Action.ENROLL)
        self.enroll_action = QAction(icon("enroll"), "&Enrol subject…", self)
        self.enroll_action.setShortcut(QKeySequence.StandardKey.New)
        self.enroll_action.setEnabled(can_enroll)
        self.enroll_action.triggered.connect(self.enroll)
        self.refresh_action = QAction(icon("refresh"), "&Refresh", self)
        self.refresh_action.setShortcut(QKeySequence.StandardKey.Refresh)
        self.refresh_action.triggered.connect(self.refresh)
        self.backup_action = QAction(icon("backup"), "&Back up database…", self)
        self.backup_action.triggered.connect(self.backup)
        self.verify_action = QAction(icon("audit"), "&Verify audit trail", self)
        self.verify_action.triggered.connect(self.verify_audit)
        find = QAction("&Find subject", self)
        find.setShortcut(QKeySequence.StandardKey.Find)
        find.triggered.connect(lambda: (self.filter.setFocus(), self.filter.selectAll()))
        quit_action = QAction(icon("logout"), "&Quit", self)
        quit_action.setShortcut(QKeySequence.StandardKey.Quit)
        quit_action.triggered.connect(self.close)
        self.queries_action = QAction("&Queries…", self)
        self.queries_action.setShortcut("Ctrl+Shift+Q")
        self.queries_action.triggered.connect(self.show_queries)
        self.audit_action = QAction(icon("audit"), "&Audit trail…", self)
        self.audit_action.setShortcut("Ctrl+Shift+A")
        self.audit_action.setEnabled(allowed(self.ctx.user.role, Action.VIEW_AUDIT))
        self.audit_action.triggered.connect(self.show_audit)
        self.dashboard_action = QAction("Study &dashboard…", self)
        self.dashboard_action.triggered.connect(self.show_dashboard)
        can_export = allowed(self.ctx.user.role, Action.EXPORT)
        can_import = allowed(self.ctx.user.role, Action.IMPORT)
        self.export_odm_action = QAction("Export &ODM 1.3.2…", self)
        self.export_odm_action.setEnabled(can_export)
        self.export_odm_action.triggered.connect(self.export_odm)
        self.export_csv_action = QAction("Export &CSV…", self)
        self.export_csv_action.setEnabled(can_export)
        self.export_csv_action.triggered.connect(self.export_csv)
        self.import_odm_action = QAction("&Import ODM (merge a laptop's file)…", self)
        self.import_odm_action.setEnabled(can_import)
        self.import_odm_action.triggered.connect(self.import_odm)
        self.conflicts_action = QAction("Merge &conflicts…", self)
        self.conflicts_action.setEnabled(can_import)
        self.conflicts_action.triggered.connect(self.show_conflicts)
        about = QAction("&About crf-app", self)
        about.triggered.connect(self.about)

        menu = self.menuBar()
        from crf_app.gui.export_dialog import export_pdf_action

        self.export_pdf_action = export_pdf_action(self, self.ctx, self.current_subject_id)
        file_menu = menu.addMenu("&File")
        file_menu.addAction(self.export_pdf_action)
        file_menu.addActions([self.export_odm_action, self.export_csv_action,
                              self.import_odm_action])
        file_menu.addSeparator()
        file_menu.addActions([self.backup_action, self.verify_action])
        file_menu.addSeparator()
        file_menu.addAction(quit_action)
        subj = menu.addMenu("&Subjects")
        subj.addActions([self.enroll_action, find])
        monitoring = menu.addMenu("&Monitoring")
        monitoring.addActions([self.queries_action, self.audit_action, self.dashboard_action,
                               self.conflicts_action])
        view = menu.addMenu("&View")
        view.addAction(self.refresh_action)
        help_menu = menu.addMenu("&Help")
        help_menu.addAction(about)
        tb = QToolBar("Main")
        tb.setObjectName("mainToolbar")
        tb.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        tb.addActions([self.enroll_action, self.refresh_action])
        tb.addSeparator()
        tb.addActions([self.queries_action, self.audit_action])
        tb.addSeparator()
        tb.addActions([self.backup_action, self.verify_action])
        self.addToolBar(tb)

    # --- behaviour ------------------------------------------------------------------------
    def export_odm(self) -> None:
        from crf_app.gui.interchange_dialogs import export_odm_interactive

        export_odm_interactive(self, self.ctx)

    def export_csv(self) -> None:
        from crf_app.gui.interchange_dialogs import export_csv_interactive

        export_csv_interactive(self, self.ctx)

    def import_odm(self, path=None) -> None:
        from crf_app.gui.interchange_dialogs import import_odm_interactive

        if import_odm_interactive(self, self.ctx, path) is not None:
            self.refresh()

    def show_conflicts(self) -> None:
        from crf_app.gui.conflicts import show_conflicts

        show_conflicts(self, self.ctx)
        self.refresh()

    @property
    def subject_view(self) -> SubjectView:
        """The chosen subject's view, built on first use in place of the placeholder."""
        if self._subject_view is None:
            view = SubjectView(self.ctx)
            view.changed.connect(self._subject_changed)
            sizes = self.splitter.sizes()
            self.splitter.replaceWidget(1, view)
            self._no_subject.deleteLater()
            self.splitter.setSizes(sizes)
            self._subject_view = view
        return self._subject_view

    def refresh(self) -> None:
        self.sae_banner.refresh()
        self._load_subjects()

    def _load_subjects(self) -> None:
        current = self.current_subject_id()
        rows = list_subjects(self.ctx)
        self.model.set_rows(rows)
        self._show_count()
        if current is not None:
            self.select_subject(current)

    def _show_count(self) -> None:
        shown, total = self.model.rowCount(), self.model.total()
        self.count_label.setText(f"{total} subjects" if shown == total
                                 else f"{shown} of {total} subjects")

    def _filter_changed(self, text: str) -> None:
        current = self.current_subject_id()
        self._keeping = current  # the subject shown stays selected: nothing to reload
        try:
            self.model.set_filter(text)
            self._show_count()
            kept = current is not None and self.select_subject(current)
        finally:
            self._keeping = None
        if current is not None and not kept:  # filtered out of the list
            self.subject_view.show_subject(None)

    def current_subject_id(self) -> int | None:
        rows = self.table.selectionModel().selectedRows()
        return rows[0].data(SubjectIdRole) if rows else None

    def select_subject(self, subject_id: int) -> bool:
        r = self.model.row_of(subject_id)
        if r is None:
            return False
        self.table.selectRow(r)
        self.table.scrollTo(self.model.index(r, 0))
        return True

    def _selection_changed(self, _sel: QItemSelection, _desel: QItemSelection) -> None:
        if self._keeping is not None:  # a filter keystroke re-selects the same subject
            return
        self.subject_view.show_subject(self.current_subject_id())

    def _subject_changed(self, subject_id: int) -> None:
        self.refresh()
        self.statusBar().showMessage("Saved.", 4000)
        self.select_subject(subject_id)

    def enroll(self) -> None:
        dlg = EnrollDialog(self.ctx, self)
        if dlg.exec() and dlg.subject_id is not None:
            self.refresh()
            self.select_subject(dlg.subject_id)
            self.statusBar().showMessage("Subject enrolled.", 4000)

    def backup(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Back up database", "crf-app-backup.db",
                                              "SQLite database (*.db)")
        if not path:
            return
        try:
            written = maintenance.backup(self.ctx.study.db, path)
        except CrfError as exc:
            QMessageBox.warning(self, "Backup failed", str(exc))
            return
        self.statusBar().showMessage(f"Backup written to {written}", 6000)

    def verify_audit(self) -> QMessageBox:
        """Walk the hash chain and replay the trail against the data; show what
        `crf-app verify-audit` prints (the full list of discrepancies under Show Details)."""
        import threading

        from PySide6.QtWidgets import QApplication, QProgressDialog

        # A big study takes minutes (about 50,000 events/s for the chain, 150,000 for the
        # replay): verify in a worker thread and keep the window painted meanwhile.
        done: dict[str, object] = {}

        def work() -> None:
            try:
                done["report"] = integrity.verify_audit(self.ctx.study.db)
            except BaseException as exc:  # re-raised below, in the GUI thread
                done["error"] = exc

        worker = threading.Thread(target=work, name="verify-audit", daemon=True)
        busy = QProgressDialog("Verifying the audit trail and replaying it against the data…",
                               "", 0, 0, self)
        busy.setCancelButton(None)
        busy.setWindowModality(Qt.WindowModality.WindowModal)
        busy.setMinimumDuration(500)
        QApplication.setOverrideCursor(Qt.CursorShape.WaitCursor)
        worker.start()
        try:
            while worker.is_alive():
                QApplication.processEvents()
                worker.join(0.05)
        finally:
            QApplication.restoreOverrideCursor()
            busy.close()
        if "error" in done:
            raise done["error"]  # type: ignore[misc]
        report = done["report"]
        assert isinstance(report, integrity.AuditReport)
        lines = report.lines(show=10)
        if report.ok:
            box = QMessageBox(QMessageBox.Icon.Information, "Audit trail",
                              "The audit trail verifies and the data matches it.", parent=self)
        else:
            what = [] if report.chain_ok else ["its hash chain is broken"]
            if report.replay is not None and not report.replay.ok:
                what.append(f"{report.replay.found} values or rows differ from what it records")
            box = QMessageBox(QMessageBox.Icon.Critical, "Audit trail: tampering detected",
                              "The audit trail does not verify: " + " and ".join(what) + ".",
                              parent=self)
            kept = max(len(report.chain_breaks),
                       len(report.replay.discrepancies) if report.replay else 0)
            box.setDetailedText("\n".join(report.lines(show=kept)))  # everything kept
        box.setInformativeText("\n".join(lines))
        box.exec()
        return box

    def show_queries(self) -> None:
        from crf_app.gui.query_list import QueryListDialog

        QueryListDialog(self.ctx, self).exec()
        self.refresh()

    def show_audit(self) -> None:
        from crf_app.gui.audit_viewer import AuditViewerDialog

        sid = self.current_subject_id()
        AuditViewerDialog(self.ctx, self, subject_id=sid,
                          title=self.subject_view.title.text() if sid else "whole study").exec()

    def show_dashboard(self) -> None:
        from crf_app.gui.dashboard import DashboardDialog

        DashboardDialog(self.ctx, self, sdv=self.sdv_by_site()).exec()

    def sdv_by_site(self) -> dict[str, tuple[int, int]]:
        """Verified / complete forms per site."""
        from crf_app.services.signoff import sdv_progress

        out: dict[str, tuple[int, int]] = {}
        for row in sdv_progress(self.ctx):
            v, c = out.get(row.site, (0, 0))
            out[row.site] = (v + row.verified_forms, c + row.complete_forms)
        return out

    def about(self) -> None:
        QMessageBox.about(self, "About crf-app",
                          f"crf-app {__version__}<br>Offline-first clinical-trial data capture."
                          f"<br>Study: {self.ctx.study.title}")
