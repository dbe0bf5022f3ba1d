//! The first stage of reading a Dockerfile: BuildKit's line-level parse tree.
//!
//! This turns text into one [`Node`] per instruction exactly as BuildKit's
//! `frontend/dockerfile/parser` does: parser directives, logical lines joined over escape-char
//! continuations (comment lines and empty lines inside a continuation dropped), builder flags
//! split off, arguments split per instruction (JSON arrays with fallback to shell form, ENV/LABEL
//! pairs, whitespace-separated words) and here-documents collected. It knows nothing about what
//! a flag means; `instructions` gives the nodes their types. `grammar/dockerfile.ebnf` is the
//! written-down form of what this module accepts.

use nom::{
    bytes::complete::{tag, take_while},
    character::complete::{char as nchar, digit0, satisfy},
    combinator::{opt, recognize, rest},
    sequence::pair,
    IResult, Parser,
};
use serde::Serialize;

use super::error::ParseError;
use crate::dockerfile::expand::Lexer;

/// One instruction as BuildKit's parser sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Node {
    /// The keyword as written (`run`, `RUN`, `Run`...).
    pub keyword: String,
    /// Builder flags (`--from=x`) with quotes and escapes processed, `--` stripped.
    pub flags: Vec<String>,
    /// The arguments as BuildKit splits them (see the module documentation).
    pub args: Vec<String>,
    /// ONBUILD's nested instruction.
    pub sub: Option<Box<Node>>,
    /// The arguments were a JSON array (exec form).
    pub json: bool,
    pub heredocs: Vec<Heredoc>,
    /// The logical line: continuations joined, comment lines removed, no heredoc bodies.
    pub original: String,
    /// 1-based lines of the first and the last physical line (heredoc bodies included).
    pub start_line: usize,
    pub end_line: usize,
    /// 1-based column of the keyword on its first line.
    pub column: usize,
    /// The comment lines directly above the instruction.
    pub comments: Vec<String>,
}

/// A here-document attached to RUN, COPY or ADD.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Heredoc {
    /// The delimiter word with quotes removed (`EOF` for `<<"EOF"`).
    pub name: String,
    /// The file descriptor written before `<<` (`3<<EOF`), 0 when none.
    pub fd: u32,
    /// Variables in the body are expanded (the delimiter was not quoted).
    pub expand: bool,
    /// `<<-`: leading tabs are stripped from the body lines and the delimiter.
    pub chomp: bool,
    /// The body, each line with its line end, leading tabs already removed for `<<-`.
    pub content: String,
}

/// The parser directives found at the top of the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Directives {
    pub escape: char,
    pub syntax: Option<String>,
    pub check: Option<String>,
}

impl Default for Directives {
    fn default() -> Self {
        Directives {
            escape: '\\',
            syntax: None,
            check: None,
        }
    }
}

/// A warning from the line-level parse (BuildKit reports the same ones).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warning {
    pub rule: &'static str,
    pub line: usize,
    pub message: String,
}

/// The whole line-level parse.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RawDockerfile {
    pub directives: Directives,
    pub nodes: Vec<Node>,
    pub warnings: Vec<Warning>,
}

impl Node {
    /// BuildKit's `Node.Dump()` format, without the surrounding parentheses.
    pub fn dump(&self) -> String {
        let mut s = self.keyword.to_lowercase();
        if !self.flags.is_empty() {
            s.push_str(" [");
            for (i, f) in self.flags.iter().enumerate() {
                if i > 0 {
                    s.push(' ');
                }
                s.push_str(&go_quote(f));
            }
            s.push(']');
        }
        if let Some(sub) = &self.sub {
            s.push_str(" (");
            s.push_str(&sub.dump());
            s.push(')');
        }
        for a in &self.args {
            s.push(' ');
            s.push_str(&go_quote(a));
        }
        s
    }
}

impl RawDockerfile {
    /// The `kiln parse --format dump` text: one `(node)` line per instruction.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            out.push('(');
            out.push_str(&n.dump());
            out.push_str(")\n");
        }
        out
    }
}

/// Go's `strconv.Quote`: what BuildKit's dump uses for every string.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if !go_is_print(c) => {
                if (c as u32) < 0x10000 {
                    out.push_str(&format!("\\u{:04x}", c as u32))
                } else {
                    out.push_str(&format!("\\U{:08x}", c as u32))
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// An approximation of Go's `unicode.IsPrint` without the full category tables: everything is
/// printable except controls, non-ASCII spaces, format characters, surrogates and private use.
fn go_is_print(c: char) -> bool {
    let u = c as u32;
    !(u < 0x20
        || (0x7f..=0xa0).contains(&u)
        || u == 0xad
        || (0x2000..=0x200f).contains(&u)
        || (0x2028..=0x202f).contains(&u)
        || (0x205f..=0x206f).contains(&u)
        || u == 0x1680
        || u == 0x3000
        || u == 0xfeff
        || (0xfff9..=0xfffb).contains(&u)
        || (0xe000..=0xf8ff).contains(&u)
        || u == 0xfffe
        || u == 0xffff
        || (0xf0000..).contains(&u)
        || (0xe0000..=0xe007f).contains(&u))
}

/// Go's `unicode.IsSpace` (same set as Rust's `char::is_whitespace`).
fn is_space(c: char) -> bool {
    c.is_whitespace()
}

/// BuildKit's `reWhitespace`: `[\t\v\f\r ]+`.
fn is_ws_sep(c: char) -> bool {
    matches!(c, '\t' | '\u{b}' | '\u{c}' | '\r' | ' ')
}

/// The regex `\s` of Go's RE2: `[\t\n\f\r ]`.
fn is_re_space(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\u{c}' | '\r' | ' ')
}

fn trim_newline(s: &str) -> &str {
    s.trim_end_matches(['\r', '\n'])
}

fn is_comment(line: &str) -> bool {
    line.trim_start_matches(is_space).starts_with('#')
}

/// Removes a trailing continuation (the escape char, then only blanks) unless the escape char is
/// itself escaped. Returns the line and whether the logical line ends here.
fn trim_continuation(line: &str, escape: char) -> (&str, bool) {
    let t = line.trim_end_matches([' ', '\t']);
    match t.strip_suffix(escape) {
        Some(before) if !before.ends_with(escape) => (before, false),
        _ => (line, true),
    }
}

/// `# name = value` at the top of the file.
fn directive_line(input: &str) -> IResult<&str, (&str, &str)> {
    let (input, _) = nchar('#').parse(input)?;
    let (input, _) = take_while(is_re_space).parse(input)?;
    let (input, name) = recognize(pair(
        satisfy(|c| c.is_ascii_alphabetic()),
        take_while(|c: char| c.is_ascii_alphanumeric()),
    ))
    .parse(input)?;
    let (input, _) = take_while(is_re_space).parse(input)?;
    let (input, _) = nchar('=').parse(input)?;
    let (input, value) = rest.parse(input)?;
    Ok((input, (name, value)))
}

struct DirectiveParser {
    done: bool,
    seen: Vec<String>,
    directives: Directives,
}

impl DirectiveParser {
    /// Returns Ok(true) when the line was a directive.
    fn parse_line(&mut self, line: &str) -> Result<bool, String> {
        if self.done {
            return Ok(false);
        }
        let Ok((_, (name, raw_value))) = directive_line(line) else {
            self.done = true;
            return Ok(false);
        };
        // `\s*(.+?)\s*$`: at least one character of value, surrounding blanks trimmed.
        let value = raw_value.trim_matches(is_re_space);
        let value = if value.is_empty() {
            match raw_value.chars().last() {
                Some(c) => c.to_string(),
                None => {
                    self.done = true;
                    return Ok(false);
                }
            }
        } else {
            value.to_string()
        };
        let name = name.to_ascii_lowercase();
        if !matches!(name.as_str(), "syntax" | "escape" | "check") {
            self.done = true;
            return Ok(false);
        }
        if self.seen.contains(&name) {
            return Err(format!("only one {name} parser directive can be used"));
        }
        self.seen.push(name.clone());
        match name.as_str() {
            "escape" => {
                if value != "`" && value != "\\" {
                    return Err(format!(
                        "invalid escape token '{value}' does not match ` or \\"
                    ));
                }
                self.directives.escape = value.chars().next().unwrap_or('\\');
            }
            "syntax" => self.directives.syntax = Some(value),
            _ => self.directives.check = Some(value),
        }
        Ok(true)
    }
}

/// Parses the text into BuildKit's line-level tree.
pub fn parse_raw(source: &str) -> Result<RawDockerfile, ParseError> {
    let lines: Vec<&str> = source.split_inclusive('\n').collect();
    let mut dp = DirectiveParser {
        done: false,
        seen: Vec::new(),
        directives: Directives::default(),
    };
    let mut nodes = Vec::new();
    let mut warnings = Vec::new();
    let mut comments: Vec<String> = Vec::new();
    let mut current = 0usize; // lines consumed so far
    let mut idx = 0usize;

    while idx < lines.len() {
        let mut raw = lines[idx];
        idx += 1;
        if current == 0 {
            raw = raw.strip_prefix('\u{feff}').unwrap_or(raw);
        }
        if is_comment(raw) {
            let c = raw.get(1..).unwrap_or("").trim();
            if c.is_empty() {
                comments.clear();
            } else {
                comments.push(c.to_string());
            }
        }
        let token = trim_newline(raw).trim_start_matches(is_space);
        let is_directive = dp
            .parse_line(token)
            .map_err(|m| ParseError::at(source, current + 1, 1, m))?;
        if is_directive {
            comments.pop();
        }
        let token = if is_comment(token) { "" } else { token };
        let column = trim_newline(raw)
            .trim_start_matches('\u{feff}')
            .chars()
            .take_while(|c| is_space(*c))
            .count()
            + 1;
        current += 1;
        let start_line = current;
        let escape = dp.directives.escape;
        let (first, mut end_of_line) = trim_continuation(token, escape);
        if end_of_line && first.is_empty() {
            continue;
        }
        let mut buf = String::from(first);
        let mut empty_continuation = false;
        while !end_of_line && idx < lines.len() {
            let raw = lines[idx];
            idx += 1;
            let token = trim_newline(raw);
            dp.parse_line(token)
                .map_err(|m| ParseError::at(source, current + 1, 1, m))?;
            current += 1;
            if is_comment(raw) {
                continue;
            }
            if token.trim_start_matches(is_space).is_empty() {
                empty_continuation = true;
                continue;
            }
            let (part, eol) = trim_continuation(token, escape);
            end_of_line = eol;
            buf.push_str(part);
        }
        if empty_continuation {
            warnings.push(Warning {
                rule: "NoEmptyContinuation",
                line: current,
                message: "Empty continuation line found; empty continuation lines will become errors in a future release".into(),
            });
        }
        let mut node = node_from_line(&buf, escape, 0)
            .map_err(|m| ParseError::at(source, start_line, column, m))?;
        node.comments = std::mem::take(&mut comments);
        if can_contain_heredoc(&node) && buf.contains("<<") {
            let mut docs = heredocs_from_line(&buf);
            for doc in &mut docs {
                let mut terminated = false;
                while idx < lines.len() {
                    let body = lines[idx];
                    idx += 1;
                    current += 1;
                    let mut candidate = trim_newline(body);
                    if doc.chomp {
                        candidate = candidate.trim_start_matches('\t');
                    }
                    if candidate == doc.name {
                        terminated = true;
                        break;
                    }
                    if doc.chomp {
                        doc.content.push_str(body.trim_start_matches('\t'));
                    } else {
                        doc.content.push_str(body);
                    }
                }
                if !terminated {
                    return Err(ParseError::at(
                        source,
                        start_line,
                        column,
                        format!(
                            "unterminated heredoc: no line \"{}\" after line {start_line} ends it",
                            doc.name
                        ),
                    ));
                }
            }
            match &mut node.sub {
                Some(sub) => sub.heredocs = docs,
                None => node.heredocs = docs,
            }
        }
        node.start_line = start_line;
        node.end_line = current;
        node.column = column;
        if let Some(sub) = &mut node.sub {
            sub.start_line = start_line;
            sub.end_line = current;
        }
        nodes.push(node);
    }
    if nodes.is_empty() {
        return Err(ParseError::at(
            source,
            current.max(1),
            1,
            "file with no instructions (a Dockerfile needs at least a FROM)",
        ));
    }
    Ok(RawDockerfile {
        directives: dp.directives,
        nodes,
        warnings,
    })
}

fn can_contain_heredoc(node: &Node) -> bool {
    let n = match &node.sub {
        Some(sub) if node.keyword.eq_ignore_ascii_case("onbuild") => sub,
        _ => node,
    };
    let k = n.keyword.to_ascii_lowercase();
    matches!(k.as_str(), "add" | "copy" | "run") && !n.json
}

/// `^(\d*)<<(-?)([^<]*)$` on one word.
fn heredoc_marker(word: &str) -> IResult<&str, (&str, Option<char>, &str)> {
    let (input, fd) = digit0(word)?;
    let (input, _) = tag("<<").parse(input)?;
    let (input, dash) = opt(nchar('-')).parse(input)?;
    let (input, name) = take_while(|c| c != '<').parse(input)?;
    if !input.is_empty() {
        return Err(nom::Err::Error(nom::error::Error::new(
            input,
            nom::error::ErrorKind::Eof,
        )));
    }
    Ok((input, (fd, dash, name)))
}

/// Parses one word as a heredoc marker (`<<EOF`, `<<-"EOF"`, `3<<EOF`).
pub fn parse_heredoc_word(word: &str) -> Option<Heredoc> {
    let (_, (fd, dash, rest)) = heredoc_marker(word).ok()?;
    if rest.is_empty() {
        return None;
    }
    let none = |_: &str| None;
    let mut lex = Lexer::new('\\');
    lex.skip_unset_env = true;
    let words = lex.process_words(rest, &none).ok()?;
    if words.len() != 1 {
        return None;
    }
    lex.raw_quotes = true;
    let raw_words = lex.process_words(rest, &none).ok()?;
    if raw_words.len() != 1 {
        return None;
    }
    let quotes = |s: &str| s.chars().filter(|c| *c == '\'' || *c == '"').count();
    Some(Heredoc {
        name: words[0].clone(),
        fd: fd.parse().unwrap_or(0),
        expand: quotes(&words[0]) == quotes(&raw_words[0]),
        chomp: dash.is_some(),
        content: String::new(),
    })
}

fn heredocs_from_line(line: &str) -> Vec<Heredoc> {
    let mut lex = Lexer::new('\\');
    lex.raw_quotes = true;
    lex.raw_escapes = true;
    lex.skip_unset_env = true;
    let none = |_: &str| None;
    let words = lex.process_words(line, &none).unwrap_or_default();
    words.iter().filter_map(|w| parse_heredoc_word(w)).collect()
}

/// BuildKit's `splitCommand` + dispatch to the per-instruction argument parser.
fn node_from_line(line: &str, escape: char, depth: usize) -> Result<Node, String> {
    if depth > 8 {
        return Err("ONBUILD nested too deeply (ONBUILD cannot be chained)".into());
    }
    let trimmed = line.trim_matches(is_space);
    let (keyword, rest) = match trimmed.find(is_ws_sep) {
        Some(i) => (
            &trimmed[..i],
            Some(trimmed[i..].trim_start_matches(is_ws_sep)),
        ),
        None => (trimmed, None),
    };
    let (args, flags) = match rest {
        Some(r) => extract_flags(r),
        None => (String::new(), Vec::new()),
    };
    let args = args.trim_matches(is_space);
    let mut node = Node {
        keyword: keyword.to_string(),
        flags,
        args: Vec::new(),
        sub: None,
        json: false,
        heredocs: Vec::new(),
        original: line.to_string(),
        start_line: 0,
        end_line: 0,
        column: 1,
        comments: Vec::new(),
    };
    match keyword.to_ascii_lowercase().as_str() {
        "add" | "copy" | "volume" => match parse_json(args)? {
            Some(v) => {
                node.args = v;
                node.json = true;
            }
            None => node.args = split_ws(args),
        },
        "run" | "cmd" | "entrypoint" | "shell" => {
            let (a, json) = parse_maybe_json(args)?;
            node.args = a;
            node.json = json;
        }
        "arg" => node.args = parse_words(args, escape),
        "env" => node.args = parse_name_val(args, "ENV", escape)?,
        "label" => node.args = parse_name_val(args, "LABEL", escape)?,
        "expose" | "from" => node.args = split_ws(args),
        "maintainer" | "stopsignal" | "user" | "workdir" => {
            if !args.is_empty() {
                node.args = vec![args.to_string()];
            }
        }
        "onbuild" => {
            if !args.is_empty() {
                node.sub = Some(Box::new(node_from_line(args, escape, depth + 1)?));
            }
        }
        "healthcheck" => {
            let sep = args.find(|c: char| c.is_ascii_whitespace() || is_space(c));
            let (typ, cmd) = match sep {
                Some(i) => (&args[..i], args[i..].trim_start_matches(is_space)),
                None => (args, ""),
            };
            if !typ.is_empty() {
                node.args.push(typ.to_string());
                let (a, json) = parse_maybe_json(cmd)?;
                node.args.extend(a);
                node.json = json;
            }
        }
        // Unknown instructions are kept (with one empty argument, as BuildKit does) and rejected
        // by the typed layer, which can say what was probably meant.
        _ => node.args = vec![String::new()],
    }
    Ok(node)
}

fn split_ws(args: &str) -> Vec<String> {
    if args.is_empty() {
        return Vec::new();
    }
    args.split(is_ws_sep)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

const NOT_STRING_ARRAY: &str =
    "when using JSON array syntax, arrays must be comprised of strings only";

/// A JSON array of strings, `None` when `args` is not JSON (shell form), an error when it is a
/// JSON array holding something other than strings.
fn parse_json(args: &str) -> Result<Option<Vec<String>>, String> {
    let t = args.trim_start_matches(is_space);
    if !t.starts_with('[') {
        return Ok(None);
    }
    match serde_json::from_str::<Vec<serde_json::Value>>(t) {
        Ok(values) => values
            .into_iter()
            .map(|v| match v {
                serde_json::Value::String(s) => Ok(s),
                _ => Err(NOT_STRING_ARRAY.to_string()),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Err(_) => Ok(None),
    }
}

fn parse_maybe_json(args: &str) -> Result<(Vec<String>, bool), String> {
    if args.is_empty() {
        return Ok((Vec::new(), false));
    }
    match parse_json(args)? {
        Some(v) => Ok((v, true)),
        None => Ok((vec![args.to_string()], false)),
    }
}

/// Splits builder flags (`--name=value` words) off the front of the arguments.
fn extract_flags(line: &str) -> (String, Vec<String>) {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote,
    }
    let b = line.as_bytes();
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut word: Vec<u8> = Vec::new();
    let mut quote = 0u8;
    let mut blank_ok = false;
    let mut pos = 0;
    let finish = |w: &[u8]| String::from_utf8_lossy(w).into_owned();
    while pos <= b.len() {
        let ch = if pos < b.len() { b[pos] } else { 0 };
        if phase == Phase::Spaces {
            if pos == b.len() {
                break;
            }
            if (ch as char).is_ascii_whitespace() || ch == 0x0b {
                pos += 1;
                continue;
            }
            if ch != b'-' || pos + 1 == b.len() || b[pos + 1] != b'-' {
                return (line[pos..].to_string(), words);
            }
            phase = Phase::Word;
        }
        if pos == b.len() {
            if word != b"--" && (blank_ok || !word.is_empty()) {
                words.push(finish(&word));
            }
            break;
        }
        if phase == Phase::Word {
            if (ch as char).is_ascii_whitespace() || ch == 0x0b {
                phase = Phase::Spaces;
                if word == b"--" {
                    return (line[pos..].to_string(), words);
                }
                if blank_ok || !word.is_empty() {
                    words.push(finish(&word));
                }
                word.clear();
                blank_ok = false;
                pos += 1;
                continue;
            }
            if ch == b'\'' || ch == b'"' {
                quote = ch;
                blank_ok = true;
                phase = Phase::Quote;
                pos += 1;
                continue;
            }
            let mut c = ch;
            if c == b'\\' {
                if pos + 1 == b.len() {
                    pos += 1;
                    continue;
                }
                pos += 1;
                c = b[pos];
            }
            word.push(c);
            pos += 1;
            continue;
        }
        // In quotes.
        if ch == quote {
            phase = Phase::Word;
            pos += 1;
            continue;
        }
        let mut c = ch;
        if c == b'\\' {
            if pos + 1 == b.len() {
                phase = Phase::Word;
                pos += 1;
                continue;
            }
            pos += 1;
            c = b[pos];
        }
        word.push(c);
        pos += 1;
    }
    (String::new(), words)
}

/// BuildKit's `parseWords`: words separated by white space, quotes and escapes kept as written.
fn parse_words(rest: &str, escape: char) -> Vec<String> {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote,
    }
    let chars: Vec<char> = rest.chars().collect();
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut quote = '\0';
    let mut blank_ok = false;
    let mut word = String::new();
    let mut pos = 0;
    while pos <= chars.len() {
        if phase == Phase::Spaces {
            if pos == chars.len() {
                break;
            }
            if is_space(chars[pos]) {
                pos += 1;
                continue;
            }
            phase = Phase::Word;
        }
        if pos == chars.len() {
            // End of input in a word or in an unterminated quote: the word is kept as is.
            if blank_ok || !word.is_empty() {
                words.push(std::mem::take(&mut word));
            }
            break;
        }
        let mut ch = chars[pos];
        if phase == Phase::Word {
            if is_space(ch) {
                phase = Phase::Spaces;
                if blank_ok || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                word.clear();
                blank_ok = false;
                pos += 1;
                continue;
            }
            if ch == '\'' || ch == '"' {
                quote = ch;
                blank_ok = true;
                phase = Phase::Quote;
            }
            if ch == escape {
                if pos + 1 == chars.len() {
                    pos += 1;
                    continue;
                }
                word.push(ch);
                pos += 1;
                ch = chars[pos];
            }
            word.push(ch);
            pos += 1;
            continue;
        }
        if ch == quote {
            phase = Phase::Word;
        }
        if ch == escape && quote != '\'' {
            if pos + 1 == chars.len() {
                phase = Phase::Word;
                pos += 1;
                continue;
            }
            pos += 1;
            word.push(ch);
            ch = chars[pos];
        }
        word.push(ch);
        pos += 1;
    }
    words
}

/// ENV and LABEL: `key value` (legacy, separator "") or `k=v k2=v2` (separator "="), flattened
/// into triples `key, value, separator`.
fn parse_name_val(rest: &str, key: &str, escape: char) -> Result<Vec<String>, String> {
    let words = parse_words(rest, escape);
    if words.is_empty() {
        return Ok(Vec::new());
    }
    if !words[0].contains('=') {
        let Some(i) = rest.find(is_ws_sep) else {
            return Err(format!(
                "{key} must have two arguments: {key} name value, or {key} name=value"
            ));
        };
        let value = rest[i..].trim_start_matches(is_ws_sep);
        return Ok(vec![
            rest[..i].to_string(),
            value.to_string(),
            String::new(),
        ]);
    }
    let mut out = Vec::new();
    for w in words {
        let Some((k, v)) = w.split_once('=') else {
            return Err(format!(
                "Syntax error - can't find = in {w:?}. Must be of the form: name=value"
            ));
        };
        out.extend([k.to_string(), v.to_string(), "=".to_string()]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_like_go() {
        assert_eq!(
            go_quote("a\"b\\c\u{0}\u{7f}♥"),
            "\"a\\\"b\\\\c\\x00\\x7f♥\""
        );
        assert_eq!(go_quote("\u{a0}"), "\"\\u00a0\"");
    }

    #[test]
    fn continuation_rules() {
        assert_eq!(trim_continuation("a \\  ", '\\'), ("a ", false));
        assert_eq!(trim_continuation("a\\\\", '\\'), ("a\\\\", true));
        assert_eq!(trim_continuation("\\", '\\'), ("", false));
        assert_eq!(trim_continuation("a`", '`'), ("a", false));
    }

    #[test]
    fn heredoc_words() {
        let h = parse_heredoc_word("<<-\"EOF\"").unwrap();
        assert_eq!((h.name.as_str(), h.chomp, h.expand), ("EOF", true, false));
        let h = parse_heredoc_word("3<<EOF").unwrap();
        assert_eq!((h.fd, h.expand), (3, true));
        assert!(parse_heredoc_word("<<").is_none());
        assert!(parse_heredoc_word("a<<EOF").is_none());
    }

    #[test]
    fn heredoc_bodies() {
        let src = "FROM x\nRUN <<A cat - <<-'B'\nhello $X\nA\n\tworld\n\tB\nRUN true\n";
        let df = parse_raw(src).unwrap();
        let run = &df.nodes[1];
        assert_eq!(run.heredocs.len(), 2);
        assert_eq!(run.heredocs[0].content, "hello $X\n");
        assert!(run.heredocs[0].expand);
        assert_eq!(run.heredocs[1].content, "world\n");
        assert!(!run.heredocs[1].expand);
        assert_eq!((run.start_line, run.end_line), (2, 6));
        assert_eq!(df.nodes[2].start_line, 7);
    }
}
