"""Text that a model's vocabulary or a user's files wrote, made harmless where the commands put it.

A vocabulary is data from whoever trained the model: a "word" may be a terminal escape (OSC 52 writes the
clipboard, others set the window's title or erase lines) or a spreadsheet formula. So:
  for_terminal(text)  every character Python's repr would escape is shown as repr shows it: \\x1b, \\x07, \\u202e
  to_cell(text)       a CSV cell that starts like a formula (= + - @ tab CR, OWASP's list) gets a leading ',
                      which spreadsheets read as "this cell is text"; from_cell(cell) undoes it exactly.
JSON needs neither: it escapes its own control characters.
"""

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
TEXT_MARK = "'"  # a spreadsheet shows a cell that starts with it as text, without the mark


def for_terminal(text):
    """`text` with every unprintable character (control characters, C1 controls, bidirectional overrides,
    line separators) written as its escape, so printing it cannot drive the terminal."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in str(text))


def to_cell(text):
    """A CSV cell that no spreadsheet runs as a formula. A cell that starts with the mark itself gets one more,
    so from_cell gives back every text exactly."""
    text = str(text)
    return TEXT_MARK + text if text.startswith(FORMULA_STARTS + (TEXT_MARK,)) else text


def from_cell(cell):
    """The text to_cell was given."""
    return cell[1:] if cell.startswith(TEXT_MARK) else cell
