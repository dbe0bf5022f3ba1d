//! Tables as docker's CLI prints them (Go's tabwriter with minwidth 10, padding 3): every column
//! but the last is as wide as its widest cell plus three spaces, and never less than ten.

use std::io::{self, Write};

/// Writes `header` and `rows` as docker's table; widths count characters (`…` is one).
pub fn write(out: &mut dyn Write, header: &[&str], rows: &[Vec<String>]) -> io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| -> String {
        let cells: Vec<&str> = cells.collect();
        let mut s = String::new();
        for (i, cell) in cells.iter().enumerate() {
            s.push_str(cell);
            if i + 1 < cells.len() {
                let width = (widths[i] + 3).max(10);
                s.push_str(&" ".repeat(width - cell.chars().count()));
            }
        }
        s.push('\n');
        s
    };
    let mut text = line(&mut header.iter().copied());
    for row in rows {
        text.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out.write_all(text.as_bytes())
}

/// docker's `Ellipsis`: at most `max` characters, the last one `…` when cut.
pub fn ellipsis(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut cut: String = s.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Go's tabwriter as docker's formatter sets it up (minwidth 10, padding 3, spaces): each
/// tab-terminated cell is padded to its column's width; a column is a run of consecutive lines
/// that have a cell there, so lines without tabs (a header-less row) break the alignment as in Go.
pub fn tabwrite(text: &str) -> String {
    let lines: Vec<Vec<&str>> = text
        .strip_suffix('\n')
        .unwrap_or(text)
        .split('\n')
        .map(|l| l.split('\t').collect())
        .collect();
    let mut out = String::new();
    let mut widths = Vec::new();
    format_block(&lines, 0, lines.len(), &mut widths, &mut out);
    out
}

fn format_block(
    lines: &[Vec<&str>],
    mut line0: usize,
    line1: usize,
    widths: &mut Vec<usize>,
    out: &mut String,
) {
    let column = widths.len();
    let mut this = line0;
    while this < line1 {
        if column + 1 >= lines[this].len() {
            this += 1;
            continue;
        }
        write_lines(lines, line0, this, widths, out);
        line0 = this;
        let mut width = 10;
        while this < line1 && column + 1 < lines[this].len() {
            width = width.max(lines[this][column].chars().count() + 3);
            this += 1;
        }
        widths.push(width);
        format_block(lines, line0, this, widths, out);
        widths.pop();
        line0 = this;
    }
    write_lines(lines, line0, line1, widths, out);
}

fn write_lines(lines: &[Vec<&str>], from: usize, to: usize, widths: &[usize], out: &mut String) {
    for line in &lines[from..to] {
        for (j, cell) in line.iter().enumerate() {
            out.push_str(cell);
            if let Some(w) = widths.get(j).filter(|_| j + 1 < line.len()) {
                out.push_str(&" ".repeat(w.saturating_sub(cell.chars().count())));
            }
        }
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_as_docker_pads_them() {
        // docker history's header and rows, as Docker 28 prints them.
        let mut out = Vec::new();
        write(
            &mut out,
            &["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"],
            &[
                vec![
                    "03686e3ecf63".into(),
                    "6 minutes ago".into(),
                    "RUN /bin/sh -c echo hi > /x # buildkit".into(),
                    "3B".into(),
                    "buildkit.dockerfile.v0".into(),
                ],
                vec![
                    "<missing>".into(),
                    "About an hour ago".into(),
                    "".into(),
                    "1.98MB".into(),
                    "Imported from -".into(),
                ],
            ],
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "IMAGE          CREATED             CREATED BY                               SIZE      COMMENT\n\
             03686e3ecf63   6 minutes ago       RUN /bin/sh -c echo hi > /x # buildkit   3B        buildkit.dockerfile.v0\n\
             <missing>      About an hour ago                                            1.98MB    Imported from -\n"
        );
        assert_eq!(ellipsis("abcdef", 4), "abc…");
        assert_eq!(ellipsis("abcd", 4), "abcd");
    }

    #[test]
    fn tabwrite_pads_as_go_tabwriter() {
        assert_eq!(
            tabwrite("REPOSITORY\tTAG\n127.0.0.1:5000/busybox\tlatest\n"),
            "REPOSITORY               TAG\n127.0.0.1:5000/busybox   latest\n"
        );
        // A line without a tab ends the column block: the lines after it align on their own.
        assert_eq!(
            tabwrite("a\tb\nplain\nlonger-cell\tc\n"),
            "a         b\nplain\nlonger-cell   c\n"
        );
        assert_eq!(tabwrite("x\ty\tz\n"), "x         y         z\n");
    }
}
