//! The seam between the build and the front end's word expansion: the solver expands every word
//! through these, with a lookup over the stage's ENV and ARG values (ENV wins).

use anyhow::{anyhow, Result};

/// Expands `$var` references and quotes in one Dockerfile word (ENV values, COPY paths, ...).
pub fn expand_word(
    word: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    escape: char,
) -> Result<String> {
    crate::dockerfile::expand(word, lookup, escape).map_err(|e| anyhow!("{e}"))
}

/// Expands and splits into words (EXPOSE, VOLUME in shell form).
pub fn expand_words(
    word: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    escape: char,
) -> Result<Vec<String>> {
    crate::dockerfile::expand_words(word, lookup, escape).map_err(|e| anyhow!("{e}"))
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
