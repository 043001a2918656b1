"""Layout helpers of the PDFs: escaping user text, column widths, tall table rows."""

from reportlab.platypus import Paragraph

from crf_app.exports.pdf.fonts import SANS, SANS_BOLD
from crf_app.exports.pdf.styles import esc, styles
from crf_app.exports.pdf.tables import DataTable, column_widths


def test_user_text_is_escaped_and_keeps_line_breaks():
    assert esc("<b>x</b> & y\nz") == "&lt;b&gt;x&lt;/b&gt; &amp; y<br/>z"
    assert esc(None) == ""


def test_column_widths_keep_words_whole_and_a_huge_word_starves_no_column():
    head = ["#", "Medication", "Start date", "Reason"]
    rows = [["1", "Atorvastatin", "2026-09-20", "X" * 300]]
    widths = column_widths(head, rows, 500, font=SANS, bold=SANS_BOLD, size=8)
    assert abs(sum(widths) - 500) < 0.01
    from reportlab.pdfbase.pdfmetrics import stringWidth

    assert widths[1] >= stringWidth("Atorvastatin", SANS, 8) + 6
    assert widths[2] >= stringWidth("2026-09-20", SANS, 8) + 6
    assert widths[3] <= 0.7 * 500
    fixed = column_widths(head, rows, 500, font=SANS, bold=SANS_BOLD, size=8, fixed=[20])
    assert fixed[0] == 20 and abs(sum(fixed) - 500) < 0.01


def test_a_row_taller_than_the_page_is_split_not_overflowing():
    st = styles()
    long = Paragraph(" ".join(["word"] * 3000), st.cell)
    table = DataTable([[Paragraph("Head", st.cell_head)], [Paragraph("short", st.cell)],
                       [long]], colWidths=[300], repeatRows=1)
    pieces = table.split(300, 400)
    assert len(pieces) == 2
    _, first_h = pieces[0].wrap(300, 400)
    assert first_h <= 400


def test_fit_text_keeps_the_version_of_a_long_form_title():
    from crf_app.exports.pdf.base import fit_text

    styles()
    title = "SCR · Montreal Cognitive Assessment (MoCA) with a very long title (v12)"
    cut = fit_text(title, SANS_BOLD, 9, 200)
    assert cut.endswith("… (v12)") and cut.startswith("SCR · Montreal")
    assert fit_text("short", SANS_BOLD, 9, 200) == "short"
    assert fit_text("x" * 200, SANS, 9, 50).endswith("…")
