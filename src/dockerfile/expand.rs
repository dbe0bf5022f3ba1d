//! Word expansion with BuildKit's shell-lexer semantics (`frontend/dockerfile/shell` in
//! BuildKit): quotes, the escape character, `$v` / `${v}` and its modifiers, and word splitting.
//!
//! This is not a shell: there is no command substitution, globbing or arithmetic. It is the
//! small language Dockerfile instructions such as ENV, COPY or WORKDIR use for their arguments.

use std::fmt;

/// Why a word could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpandError {
    pub message: String,
}

impl fmt::Display for ExpandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ExpandError {}

fn err<T>(message: impl Into<String>) -> Result<T, ExpandError> {
    Err(ExpandError {
        message: message.into(),
    })
}

/// Looks a variable up: `Some(value)` when set (possibly empty), `None` when unset.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Options of the lexer, mirroring BuildKit's `shell.Lex` fields.
#[derive(Debug, Clone, Copy)]
pub struct Lexer {
    pub escape: char,
    /// Keep quote characters in the output (used to find heredoc words).
    pub raw_quotes: bool,
    /// Keep escape characters in the output.
    pub raw_escapes: bool,
    /// Leave references to unset variables as written instead of expanding them to "".
    pub skip_unset_env: bool,
}

impl Lexer {
    pub fn new(escape: char) -> Self {
        Lexer {
            escape,
            raw_quotes: false,
            raw_escapes: false,
            skip_unset_env: false,
        }
    }

    /// Expands `word` into one string (quotes removed, variables substituted, no splitting).
    pub fn process_word(&self, word: &str, env: EnvLookup) -> Result<String, ExpandError> {
        self.run(word, env).map(|(s, _)| s)
    }

    /// Expands `word` and splits it into words the way BuildKit does: white space outside quotes
    /// and white space produced by an unquoted variable separate words.
    pub fn process_words(&self, word: &str, env: EnvLookup) -> Result<Vec<String>, ExpandError> {
        self.run(word, env).map(|(_, w)| w)
    }

    fn run(&self, word: &str, env: EnvLookup) -> Result<(String, Vec<String>), ExpandError> {
        let chars: Vec<char> = word.chars().collect();
        let mut sw = ShellWord {
            lex: *self,
            chars: &chars,
            pos: 0,
            env,
            depth: 0,
        };
        sw.process_stop_on(&[], false).map_err(|e| ExpandError {
            message: format!("failed to process {word:?}: {}", e.message),
        })
    }
}

/// Expands one word with the default options (BuildKit's `ProcessWord`).
pub fn expand(
    word: &str,
    env: &dyn Fn(&str) -> Option<String>,
    escape: char,
) -> Result<String, ExpandError> {
    Lexer::new(escape).process_word(word, env)
}

/// Expands and splits into words (BuildKit's `ProcessWords`).
pub fn expand_words(
    word: &str,
    env: &dyn Fn(&str) -> Option<String>,
    escape: char,
) -> Result<Vec<String>, ExpandError> {
    Lexer::new(escape).process_words(word, env)
}

#[derive(Default)]
struct Words {
    word: String,
    words: Vec<String>,
    in_word: bool,
}

impl Words {
    fn add_char(&mut self, ch: char) {
        if ch.is_whitespace() {
            if self.in_word && !self.word.is_empty() {
                self.words.push(std::mem::take(&mut self.word));
                self.in_word = false;
            }
        } else {
            self.add_raw_char(ch);
        }
    }
    fn add_raw_char(&mut self, ch: char) {
        self.word.push(ch);
        self.in_word = true;
    }
    fn add_string(&mut self, s: &str) {
        for ch in s.chars() {
            self.add_char(ch);
        }
    }
    fn add_raw_string(&mut self, s: &str) {
        self.word.push_str(s);
        self.in_word = true;
    }
    fn finish(mut self) -> Vec<String> {
        if !self.word.is_empty() {
            self.words.push(std::mem::take(&mut self.word));
        }
        self.words
    }
}

struct ShellWord<'a> {
    lex: Lexer,
    chars: &'a [char],
    pos: usize,
    env: EnvLookup<'a>,
    /// Nesting of `${...}` being processed; bounded so hostile input cannot exhaust the stack.
    depth: usize,
}

/// How deeply `${a:-${b:-...}}` may nest.
const MAX_DEPTH: usize = 64;

impl ShellWord<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }
    fn next(&mut self) -> Option<char> {
        let c = self.chars.get(self.pos).copied();
        if c.is_some() {
            self.pos += 1;
        }
        c
    }
    fn get_env(&self, name: &str) -> Option<String> {
        (self.env)(name)
    }

    /// Processes until end of input or one of `stops` (consumed). With stops, reaching the end
    /// is an error.
    fn process_stop_on(
        &mut self,
        stops: &[char],
        raw_escapes: bool,
    ) -> Result<(String, Vec<String>), ExpandError> {
        let raw_escapes = raw_escapes || self.lex.raw_escapes;
        let mut result = String::new();
        let mut words = Words::default();
        while let Some(ch) = self.peek() {
            if stops.contains(&ch) {
                self.next();
                return Ok((result, words.finish()));
            }
            match ch {
                '\'' | '"' => {
                    let tmp = self.process_quoted(ch)?;
                    result.push_str(&tmp);
                    words.add_raw_string(&tmp);
                }
                '$' => {
                    let tmp = self.process_dollar()?;
                    result.push_str(&tmp);
                    words.add_string(&tmp);
                }
                _ => {
                    self.next();
                    let mut ch = ch;
                    if ch == self.lex.escape {
                        if raw_escapes {
                            words.add_raw_char(ch);
                            result.push(ch);
                        }
                        match self.next() {
                            None => break,
                            Some(c) => ch = c,
                        }
                        words.add_raw_char(ch);
                    } else {
                        words.add_char(ch);
                    }
                    result.push(ch);
                }
            }
        }
        if let Some(stop) = stops.first() {
            return err(format!(
                "unexpected end of statement while looking for matching {stop}"
            ));
        }
        Ok((result, words.finish()))
    }

    /// Processes up to `stop` inside `${...}`. Running out of input there is BuildKit's syntax
    /// error naming the missing `}` or `/`, in place of what a nested construct reported.
    fn process_until(&mut self, stop: char, raw_escapes: bool) -> Result<String, ExpandError> {
        let processed = self.process_stop_on(&[stop], raw_escapes);
        processed.map(|(s, _)| s).map_err(|e| {
            if self.peek().is_some() {
                e
            } else if stop == '/' {
                ExpandError {
                    message: "syntax error: missing '/' in ${}".into(),
                }
            } else {
                ExpandError {
                    message: "syntax error: missing '}'".into(),
                }
            }
        })
    }

    /// Processes a quoted string from its opening `quote` to the matching close: single quotes
    /// keep everything literally, double quotes expand `$` and honour the escape character.
    fn process_quoted(&mut self, quote: char) -> Result<String, ExpandError> {
        let mut result = String::new();
        let open = self.next();
        if self.lex.raw_quotes {
            result.extend(open);
        }
        loop {
            match self.peek() {
                None => {
                    let name = if quote == '\'' {
                        "single-quote"
                    } else {
                        "double-quote"
                    };
                    return err(format!(
                        "unexpected end of statement while looking for matching {name}"
                    ));
                }
                Some(c) if c == quote => {
                    self.next();
                    if self.lex.raw_quotes {
                        result.push(quote);
                    }
                    return Ok(result);
                }
                Some(_) if quote == '\'' => result.extend(self.next()),
                Some(_) => self.process_double_quoted_char(&mut result)?,
            }
        }
    }

    /// One character, escape sequence or `$` substitution inside double quotes: the escape
    /// character only escapes `"`, `$` and itself there.
    fn process_double_quoted_char(&mut self, result: &mut String) -> Result<(), ExpandError> {
        if self.peek() == Some('$') {
            result.push_str(&self.process_dollar()?);
            return Ok(());
        }
        let Some(mut ch) = self.next() else {
            return Ok(());
        };
        if ch == self.lex.escape {
            if self.lex.raw_escapes {
                result.push(ch);
            }
            match self.peek() {
                None => return Ok(()),
                Some(c) if c == '"' || c == '$' || c == self.lex.escape => {
                    ch = c;
                    self.next();
                }
                Some(_) if self.lex.raw_escapes => return Ok(()),
                Some(_) => {}
            }
        }
        result.push(ch);
        Ok(())
    }

    fn process_name(&mut self) -> String {
        let mut name = String::new();
        while let Some(ch) = self.peek() {
            if name.is_empty() && ch.is_ascii_digit() {
                while let Some(d) = self.peek().filter(|c| c.is_ascii_digit()) {
                    name.push(d);
                    self.next();
                }
                return name;
            }
            if name.is_empty() && matches!(ch, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0') {
                self.next();
                return ch.to_string();
            }
            if !ch.is_alphanumeric() && ch != '_' {
                break;
            }
            name.push(ch);
            self.next();
        }
        name
    }

    fn process_dollar(&mut self) -> Result<String, ExpandError> {
        if self.depth >= MAX_DEPTH {
            return err(format!(
                "variable substitutions nested more than {MAX_DEPTH} deep"
            ));
        }
        self.depth += 1;
        let r = self.process_dollar_inner();
        self.depth -= 1;
        r
    }

    fn process_dollar_inner(&mut self) -> Result<String, ExpandError> {
        self.next(); // the '$'
        if self.peek() != Some('{') {
            let name = self.process_name();
            if name.is_empty() {
                return Ok("$".into());
            }
            return Ok(match self.get_env(&name) {
                Some(v) => v,
                None if self.lex.skip_unset_env => format!("${name}"),
                None => String::new(),
            });
        }
        self.next(); // the '{'
        match self.peek() {
            None => return err("syntax error: missing '}'"),
            Some('{') | Some('}') | Some(':') => return err("syntax error: bad substitution"),
            _ => {}
        }
        let name = self.process_name();
        let Some(first) = self.next() else {
            return err("syntax error: missing '}'");
        };
        let mut modifier = first.to_string();
        match first {
            '}' => Ok(match self.get_env(&name) {
                Some(v) => v,
                None if self.lex.skip_unset_env => format!("${{{name}}}"),
                None => String::new(),
            }),
            ':' | '+' | '-' | '?' | '#' | '%' => {
                let null_is_unset = first == ':';
                let mut op = first;
                if null_is_unset {
                    match self.next() {
                        Some(c) => {
                            op = c;
                            modifier.push(c);
                        }
                        None => return err("syntax error: missing '}'"),
                    }
                }
                let pattern_op = op == '#' || op == '%';
                if null_is_unset && pattern_op {
                    return err(format!("unsupported modifier ({modifier}) in substitution"));
                }
                if !matches!(op, '+' | '-' | '?' | '#' | '%') {
                    // Consume to the closing brace first so "missing }" wins, as in BuildKit.
                    self.process_until('}', pattern_op)?;
                    return err(format!("unsupported modifier ({modifier}) in substitution"));
                }
                let word = self.process_until('}', pattern_op)?;
                let value = self.get_env(&name);
                if self.lex.skip_unset_env && value.is_none() {
                    return Ok(format!("${{{name}{modifier}{word}}}"));
                }
                let empty = value
                    .as_deref()
                    .map_or(true, |v| null_is_unset && v.is_empty());
                match op {
                    '-' => Ok(if empty {
                        word
                    } else {
                        value.unwrap_or_default()
                    }),
                    '+' => Ok(if empty { String::new() } else { word }),
                    '?' => match value {
                        None => err(format!(
                            "{name}: {}",
                            if word.is_empty() {
                                "is not allowed to be unset"
                            } else {
                                &word
                            }
                        )),
                        Some(v) if null_is_unset && v.is_empty() => err(format!(
                            "{name}: {}",
                            if word.is_empty() {
                                "is not allowed to be empty"
                            } else {
                                &word
                            }
                        )),
                        Some(v) => Ok(v),
                    },
                    _ => {
                        let (greedy, pat) = match word.strip_prefix(op) {
                            Some(rest) => (true, rest.to_string()),
                            None => (false, word),
                        };
                        let pattern = Pattern::compile(&pat)?;
                        let value = value.unwrap_or_default();
                        let side = if op == '#' {
                            Side::Prefix
                        } else {
                            Side::Suffix
                        };
                        Ok(pattern.trim(&value, side, greedy).to_string())
                    }
                }
            }
            '/' => {
                let replace_all = self.peek() == Some('/');
                if replace_all {
                    self.next();
                }
                let pat = self.process_until('/', true)?;
                let replacement = self.process_until('}', true)?;
                let value = self.get_env(&name);
                if self.lex.skip_unset_env && value.is_none() {
                    let slash = if replace_all { "//" } else { "/" };
                    return Ok(format!("${{{name}{slash}{pat}/{replacement}}}"));
                }
                let pattern = Pattern::compile(&pat)?;
                Ok(pattern.replace(&value.unwrap_or_default(), &replacement, replace_all))
            }
            _ => err(format!("unsupported modifier ({modifier}) in substitution")),
        }
    }
}

/// A shell pattern (`*`, `?`, literal characters; `\` escapes `*`, `?`, `\`, and is dropped
/// before `}` and `/`) as used by `${v#p}`, `${v%p}` and `${v/p/r}`.
#[derive(Debug)]
struct Pattern {
    tokens: Vec<Tok>,
}

/// The end of a value that `${v#p}` (prefix) or `${v%p}` (suffix) trims.
#[derive(Debug, Clone, Copy)]
enum Side {
    Prefix,
    Suffix,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Tok {
    Star,
    Any,
    Lit(char),
}

impl Pattern {
    fn compile(p: &str) -> Result<Pattern, ExpandError> {
        let chars: Vec<char> = p.chars().collect();
        let mut tokens = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            i += 1;
            match c {
                '*' => tokens.push(Tok::Star),
                '?' => tokens.push(Tok::Any),
                '\\' => match chars.get(i) {
                    Some('}') | Some('/') => {}
                    Some(&n @ ('*' | '?' | '\\')) => {
                        tokens.push(Tok::Lit(n));
                        i += 1;
                    }
                    Some(n) => {
                        return err(format!(
                            "invalid pattern ({p}) in substitution: invalid escape '\\{n}'"
                        ))
                    }
                    None => {
                        return err(format!(
                            "invalid pattern ({p}) in substitution: trailing backslash"
                        ))
                    }
                },
                c => tokens.push(Tok::Lit(c)),
            }
        }
        Ok(Pattern { tokens })
    }

    fn matches(&self, s: &[char]) -> bool {
        fn go(t: &[Tok], s: &[char]) -> bool {
            // Iterative star backtracking: linear in practice, no recursion blow-up.
            let (mut ti, mut si) = (0, 0);
            let mut star: Option<(usize, usize)> = None;
            while si < s.len() {
                match t.get(ti) {
                    Some(Tok::Star) => {
                        star = Some((ti, si));
                        ti += 1;
                    }
                    Some(Tok::Any) => {
                        ti += 1;
                        si += 1;
                    }
                    Some(Tok::Lit(c)) if *c == s[si] => {
                        ti += 1;
                        si += 1;
                    }
                    _ => match star {
                        Some((st, ss)) => {
                            ti = st + 1;
                            si = ss + 1;
                            star = Some((st, ss + 1));
                        }
                        None => return false,
                    },
                }
            }
            t[ti..].iter().all(|t| *t == Tok::Star)
        }
        go(&self.tokens, s)
    }

    /// Removes from one end of `value` the shortest match of the pattern (`${v#p}`, `${v%p}`)
    /// or, `greedy`, the longest (`${v##p}`, `${v%%p}`); `value` unchanged when nothing matches.
    fn trim<'v>(&self, value: &'v str, side: Side, greedy: bool) -> &'v str {
        let chars: Vec<char> = value.chars().collect();
        let n = chars.len();
        let matches_end = |len: &usize| {
            self.matches(match side {
                Side::Prefix => &chars[..*len],
                Side::Suffix => &chars[n - len..],
            })
        };
        let mut lengths = 0..=n;
        let removed = if greedy {
            lengths.rev().find(matches_end)
        } else {
            lengths.find(matches_end)
        };
        let byte_at = |char_index: usize| {
            value
                .char_indices()
                .nth(char_index)
                .map_or(value.len(), |(i, _)| i)
        };
        match (removed, side) {
            (None, _) => value,
            (Some(len), Side::Prefix) => &value[byte_at(len)..],
            (Some(len), Side::Suffix) => &value[..byte_at(n - len)],
        }
    }

    /// Replaces the leftmost-longest match (or every match) of the pattern in `value`.
    fn replace(&self, value: &str, replacement: &str, all: bool) -> String {
        let chars: Vec<char> = value.chars().collect();
        let mut out = String::new();
        let mut pos = 0;
        let mut replaced = false;
        while pos <= chars.len() {
            if replaced && !all {
                out.extend(&chars[pos..]);
                return out;
            }
            let found = (pos..=chars.len()).find_map(|start| {
                (start..=chars.len())
                    .rev()
                    .find(|&end| self.matches(&chars[start..end]))
                    .map(|end| (start, end))
            });
            match found {
                None => {
                    out.extend(&chars[pos..]);
                    return out;
                }
                Some((start, end)) => {
                    out.extend(&chars[pos..start]);
                    out.push_str(replacement);
                    replaced = true;
                    if end == start {
                        if let Some(c) = chars.get(start) {
                            out.push(*c);
                        }
                        pos = start + 1;
                    } else {
                        pos = end;
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "v" => Some("abcabc".into()),
            "path" => Some("/usr/local/bin/app".into()),
            "file" => Some("naïve.tar.gz".into()),
            _ => None,
        }
    }

    #[test]
    fn pattern_modifiers() {
        let e = |w: &str| expand(w, &env, '\\').unwrap();
        assert_eq!(e("${v#a*b}"), "cabc");
        assert_eq!(e("${v##a*b}"), "c");
        assert_eq!(e("${v%b*}"), "abca");
        assert_eq!(e("${v%%b*}"), "a");
        assert_eq!(e("${v/b/X}"), "aXcabc");
        assert_eq!(e("${v//b/X}"), "aXcaXc");
        assert_eq!(e("${path##*/}"), "app");
        assert_eq!(e("${path%/*}"), "/usr/local/bin");
        assert_eq!(e("${nope#x}"), "");
    }

    /// `#`, `##`, `%` and `%%` share one trimming routine; these pin each side and greediness
    /// on the edges: no match, empty pattern, a pattern that matches everything or nothing but
    /// the empty string, and multi-byte characters (trimmed on character boundaries).
    #[test]
    fn trim_operators_edges() {
        let e = |w: &str| expand(w, &env, '\\').unwrap();
        for op in ["#", "##", "%", "%%"] {
            assert_eq!(e(&format!("${{v{op}x}}")), "abcabc", "no match with {op}");
            assert_eq!(
                e(&format!("${{v{op}}}")),
                "abcabc",
                "empty pattern with {op}"
            );
            assert_eq!(e(&format!("${{v{op}abcabc}}")), "", "whole value with {op}");
            assert_eq!(e(&format!("${{nope{op}a}}")), "", "unset with {op}");
        }
        assert_eq!(e("${v#*}"), "abcabc");
        assert_eq!(e("${v##*}"), "");
        assert_eq!(e("${v%*}"), "abcabc");
        assert_eq!(e("${v%%*}"), "");
        assert_eq!(e("${v#?}"), "bcabc");
        assert_eq!(e("${v##?}"), "bcabc");
        assert_eq!(e("${v%?}"), "abcab");
        assert_eq!(e("${v%%?}"), "abcab");
        assert_eq!(e("${v#*c}"), "abc");
        assert_eq!(e("${v##*c}"), "");
        assert_eq!(e("${v%a*}"), "abc");
        assert_eq!(e("${v%%a*}"), "");
        assert_eq!(e("${file%.*}"), "naïve.tar");
        assert_eq!(e("${file%%.*}"), "naïve");
        assert_eq!(e("${file#*ï}"), "ve.tar.gz");
        assert_eq!(e("${file##*.}"), "gz");
        assert_eq!(e("${file#??ï}"), "ve.tar.gz");
        assert_eq!(e("${file%ï*}"), "na");
        assert!(expand("${v:#a}", &env, '\\').is_err());
        assert!(expand("${v:%a}", &env, '\\').is_err());
    }

    /// The error for each unterminated construct names what was missing.
    #[test]
    fn unterminated_constructs_say_what_is_missing() {
        let msg = |w: &str| expand(w, &env, '\\').unwrap_err().message;
        let cases = [
            ("'abc", "looking for matching single-quote"),
            ("\"abc", "looking for matching double-quote"),
            ("${v:-abc", "syntax error: missing '}'"),
            ("${v#abc", "syntax error: missing '}'"),
            ("${v:xabc", "syntax error: missing '}'"),
            ("${v:x}", "unsupported modifier (:x) in substitution"),
            ("${v/abc", "syntax error: missing '/' in ${}"),
            ("${v/a/b", "syntax error: missing '}'"),
            // At the end of input a nested error becomes "missing }"; before it, it is kept.
            ("${v:-'abc}", "syntax error: missing '}'"),
            ("${v:-${x:y}}", "unsupported modifier (:y) in substitution"),
            ("${v/${x:y}/b}", "unsupported modifier (:y) in substitution"),
        ];
        for (word, want) in cases {
            let got = msg(word);
            assert!(got.ends_with(want), "{word}: {got}");
        }
    }

    /// Expands `word` with a lexer that `configure` sets options on.
    fn expand_with(configure: fn(&mut Lexer), word: &str) -> String {
        let mut lex = Lexer::new('\\');
        configure(&mut lex);
        lex.process_word(word, &env).unwrap()
    }

    #[test]
    fn raw_quotes_keep_both_kinds_of_quote() {
        let got = expand_with(|l| l.raw_quotes = true, "'a$v' \"b$v\"");
        assert_eq!(got, "'a$v' \"babcabc\"");
    }

    #[test]
    fn skip_unset_keeps_references() {
        let got = expand_with(|l| l.skip_unset_env = true, "$x ${y} ${z:-d}");
        assert_eq!(got, "$x ${y} ${z:-d}");
    }
}
