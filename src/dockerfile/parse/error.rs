//! The error a Dockerfile that cannot be read produces: where, what, and the line with a caret.

use std::fmt;

/// A syntax error in a Dockerfile. `line` and `column` are 1-based; `source_line` is the text of
/// that line (without its line end) so the error can be shown with a caret under the spot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    pub column: usize,
    pub message: String,
    pub source_line: String,
}

impl ParseError {
    pub fn at(source: &str, line: usize, column: usize, message: impl Into<String>) -> Self {
        let source_line = source
            .split('\n')
            .nth(line.saturating_sub(1))
            .unwrap_or("")
            .trim_end_matches('\r')
            .trim_start_matches('\u{feff}')
            .to_string();
        ParseError {
            line,
            column: column.max(1),
            message: message.into(),
            source_line,
        }
    }

    /// `FILE:LINE:COL: message`, then the offending line and a caret under the column.
    pub fn render(&self, file: &str) -> String {
        let mut out = format!("{file}:{}:{}: {}", self.line, self.column, self.message);
        if !self.source_line.is_empty() {
            // Tabs are kept so the caret lines up in a terminal.
            let pad: String = self
                .source_line
                .chars()
                .take(self.column - 1)
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            out.push_str(&format!("\n    {}\n    {pad}^", self.source_line));
        }
        out
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}:{}: {}", self.line, self.column, self.message)
    }
}

impl std::error::Error for ParseError {}
