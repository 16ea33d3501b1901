//! Terminal handling for the operator commands: whether to colour and redraw (only when
//! stdout is a terminal and `NO_COLOR` is unset or empty, by no-color.org), the ANSI
//! styles, and a table whose columns line up whatever the colours.

use std::io::IsTerminal;

/// The ANSI sequence that moves the cursor home and clears the screen (`stat`'s redraw).
pub const CLEAR_SCREEN: &str = "\x1b[H\x1b[2J";
/// Carriage return and erase line: rewrites a progress line in place.
pub const REWRITE_LINE: &str = "\r\x1b[2K";

/// How output is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Term {
    /// Stdout is a terminal: redraw in place and show progress.
    pub interactive: bool,
    /// Use ANSI colours.
    pub colour: bool,
}

impl Term {
    /// Stdout as it is now.
    pub fn stdout() -> Term {
        let interactive = std::io::stdout().is_terminal();
        let no_colour = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Term {
            interactive,
            colour: interactive && !no_colour,
        }
    }

    /// Plain text: piped output, and tests.
    #[cfg(test)]
    pub const PLAIN: Term = Term {
        interactive: false,
        colour: false,
    };

    /// `text` in `paint`, or as it is without colour.
    pub fn paint(self, paint: Paint, text: &str) -> String {
        match (self.colour, paint.code()) {
            (true, Some(code)) => format!("\x1b[{code}m{text}\x1b[0m"),
            _ => text.to_owned(),
        }
    }
}

/// A text style.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Paint {
    /// As is.
    Plain,
    /// Headers.
    Bold,
    /// Notes that matter less.
    Dim,
    /// Good.
    Green,
    /// Worth a look.
    Yellow,
    /// Bad.
    Red,
}

impl Paint {
    fn code(self) -> Option<&'static str> {
        match self {
            Paint::Plain => None,
            Paint::Bold => Some("1"),
            Paint::Dim => Some("2"),
            Paint::Green => Some("32"),
            Paint::Yellow => Some("33"),
            Paint::Red => Some("31"),
        }
    }
}

/// How a column's cells line up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    /// Text.
    Left,
    /// Numbers.
    Right,
}

/// One cell: its text and its style.
#[derive(Clone, Debug)]
pub struct Cell {
    text: String,
    paint: Paint,
}

impl Cell {
    /// `text` in `paint`.
    pub fn new(text: impl Into<String>, paint: Paint) -> Cell {
        Cell {
            text: text.into(),
            paint,
        }
    }

    /// `text` as is.
    pub fn plain(text: impl Into<String>) -> Cell {
        Cell::new(text, Paint::Plain)
    }
}

/// A table: a bold header row and rows of cells, columns as wide as their widest cell and
/// two spaces apart. Widths count characters of the plain text, so colours never shift a
/// column.
pub struct Table {
    columns: Vec<(&'static str, Align)>,
    rows: Vec<Vec<Cell>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(columns: Vec<(&'static str, Align)>) -> Table {
        Table {
            columns,
            rows: Vec::new(),
        }
    }

    /// Adds a row (missing cells are blank, extra ones are dropped).
    pub fn row(&mut self, cells: Vec<Cell>) {
        self.rows.push(cells);
    }

    /// The table, one line per row, each ending in `\n`, trailing blanks trimmed.
    pub fn render(&self, term: Term) -> String {
        let mut widths: Vec<usize> = self.columns.iter().map(|(h, _)| h.len()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.text.chars().count());
            }
        }
        let header: Vec<Cell> = self
            .columns
            .iter()
            .map(|(h, _)| Cell::new(*h, Paint::Bold))
            .collect();
        let mut out = String::new();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, ((_, align), width)) in self.columns.iter().zip(&widths).enumerate() {
                let blank = Cell::plain("");
                let cell = row.get(i).unwrap_or(&blank);
                let pad = " ".repeat(width - cell.text.chars().count().min(*width));
                if i > 0 {
                    line.push_str("  ");
                }
                let text = term.paint(cell.paint, &cell.text);
                match align {
                    Align::Left => {
                        line.push_str(&text);
                        line.push_str(&pad);
                    }
                    Align::Right => {
                        line.push_str(&pad);
                        line.push_str(&text);
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_and_colour_does_not_shift_them() {
        let mut table = Table::new(vec![("NAME", Align::Left), ("RPS", Align::Right)]);
        table.row(vec![
            Cell::new("inventory", Paint::Red),
            Cell::plain("12.5"),
        ]);
        table.row(vec![Cell::plain("db"), Cell::plain("3")]);
        let plain = table.render(Term::PLAIN);
        assert_eq!(plain, "NAME        RPS\ninventory  12.5\ndb            3\n");
        let coloured = table.render(Term {
            interactive: true,
            colour: true,
        });
        assert!(
            coloured.contains("\x1b[31minventory\x1b[0m  12.5"),
            "{coloured:?}"
        );
        assert!(
            coloured.starts_with("\x1b[1mNAME\x1b[0m      "),
            "{coloured:?}"
        );
    }

    #[test]
    fn plain_output_has_no_escape_sequences() {
        assert_eq!(Term::PLAIN.paint(Paint::Red, "x"), "x");
    }
}
