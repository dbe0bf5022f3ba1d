//! The seam between the build and the front end's word expansion: the solver expands every word
//! through `expand_word`, with a lookup over the stage's ENV and ARG values.

use anyhow::Result;

/// Expands `$var` references and quotes in one Dockerfile word (ENV values, COPY paths, ...).
pub fn expand_word(word: &str, lookup: &dyn Fn(&str) -> Option<String>, _escape: char) -> Result<String> {
    fallback::expand(word, lookup)
}

/// Expands and splits into words (EXPOSE, VOLUME in shell form).
pub fn expand_words(word: &str, lookup: &dyn Fn(&str) -> Option<String>, escape: char) -> Result<Vec<String>> {
    Ok(expand_word(word, lookup, escape)?
        .split_whitespace()
        .map(str::to_string)
        .collect())
}

/// A small expander (quotes, escapes, `$v`, `${v}`, `${v:-w}`, `${v-w}`, `${v:+w}`, `${v+w}`,
/// `${v:?msg}`) used until the front end's full one is wired in.
mod fallback {
    use anyhow::{bail, Result};

    pub fn expand(word: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String> {
        let chars: Vec<char> = word.chars().collect();
        let mut out = String::new();
        let mut i = 0;
        let mut in_double = false;
        while i < chars.len() {
            let c = chars[i];
            match c {
                '\'' if !in_double => {
                    i += 1;
                    while i < chars.len() && chars[i] != '\'' {
                        out.push(chars[i]);
                        i += 1;
                    }
                    i += 1;
                }
                '"' => {
                    in_double = !in_double;
                    i += 1;
                }
                '\\' if i + 1 < chars.len() => {
                    if in_double && !matches!(chars[i + 1], '"' | '\\' | '$') {
                        out.push('\\');
                    }
                    out.push(chars[i + 1]);
                    i += 2;
                }
                '$' => {
                    let (value, next) = variable(&chars, i + 1, lookup)?;
                    out.push_str(&value);
                    i = next;
                }
                _ => {
                    out.push(c);
                    i += 1;
                }
            }
        }
        Ok(out)
    }

    fn variable(
        chars: &[char],
        start: usize,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(String, usize)> {
        if start >= chars.len() {
            return Ok(("$".into(), start));
        }
        if chars[start] == '{' {
            let mut depth = 1;
            let mut j = start + 1;
            while j < chars.len() {
                match chars[j] {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            if j >= chars.len() {
                bail!("missing '}}' in {:?}", chars.iter().collect::<String>());
            }
            let inner: String = chars[start + 1..j].iter().collect();
            let name_len = inner
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(inner.len());
            let name = &inner[..name_len];
            let rest = &inner[name_len..];
            let value = lookup(name);
            let result = if rest.is_empty() {
                value.unwrap_or_default()
            } else if let Some(w) = rest.strip_prefix(":-") {
                match value {
                    Some(v) if !v.is_empty() => v,
                    _ => expand(w, lookup)?,
                }
            } else if let Some(w) = rest.strip_prefix('-') {
                match value {
                    Some(v) => v,
                    None => expand(w, lookup)?,
                }
            } else if let Some(w) = rest.strip_prefix(":+") {
                match value {
                    Some(v) if !v.is_empty() => expand(w, lookup)?,
                    _ => String::new(),
                }
            } else if let Some(w) = rest.strip_prefix('+') {
                match value {
                    Some(_) => expand(w, lookup)?,
                    None => String::new(),
                }
            } else if let Some(msg) = rest.strip_prefix(":?") {
                match value {
                    Some(v) if !v.is_empty() => v,
                    _ => bail!("{name}: {msg}"),
                }
            } else {
                bail!("unsupported modifier in ${{{inner}}}");
            };
            return Ok((result, j + 1));
        }
        let mut j = start;
        while j < chars.len() && (chars[j].is_ascii_alphanumeric() || chars[j] == '_') {
            j += 1;
        }
        if j == start {
            return Ok(("$".into(), start));
        }
        let name: String = chars[start..j].iter().collect();
        Ok((lookup(&name).unwrap_or_default(), j))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_common_forms() {
        let look = |k: &str| match k {
            "A" => Some("1".to_string()),
            "E" => Some(String::new()),
            _ => None,
        };
        assert_eq!(
            expand_word("$A/${A}/${B:-x}/${E:-y}/${E-z}/${A:+w}", &look, '\\').unwrap(),
            "1/1/x/y//w"
        );
        assert_eq!(
            expand_word("\"a b\" 'c $A' \\$A", &look, '\\').unwrap(),
            "a b c $A $A"
        );
    }
}
