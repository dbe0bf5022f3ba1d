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
}
