//! `COPY/ADD --chmod`: an octal mode (`755`) or, since Dockerfile 1.14, a symbolic one as
//! chmod(1) takes it (`u+x`, `go-w`, `u=rwX,go=rX`), applied to each copied file's own mode.
//!
//! The two differ in what they do to directories the copy creates on the way to the
//! destination: an octal mode gives them its bits less group and other write (BuildKit's
//! `MkdirAll` with that mode under umask 022), a symbolic one leaves them 0755.

use anyhow::Result;

/// A parsed `--chmod`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chmod {
    /// Permission bits (with set-id and sticky bits) that replace the source's.
    Octal(u32),
    /// chmod(1) clauses applied in order to the source's mode; `text` is what was written.
    Symbolic { text: String, clauses: Vec<Clause> },
}

/// One comma-separated clause: the users it is for and its operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clause {
    /// Bits of `0o7777` the clause may touch (from `u`, `g`, `o`, `a`; none written = all).
    who: u32,
    ops: Vec<Operation>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Operation {
    op: char,
    perms: Perms,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Perms {
    /// `rwxXst` letters: fixed bits (for every class) and whether `X` was given.
    Letters { bits: u32, cond_exec: bool },
    /// `u`, `g` or `o`: copy that class's current bits (shift to put them in the user field).
    CopyOf(u32),
}

const USER: u32 = 0o4700;
const GROUP: u32 = 0o2070;
const OTHER: u32 = 0o1007;

impl Chmod {
    /// Parses `--chmod`'s value: octal first (as BuildKit does), else chmod(1)'s symbolic form.
    pub fn parse(s: &str) -> Result<Chmod> {
        let octal_error = || {
            anyhow::anyhow!(
                "invalid chmod parameter: '{s}'. it should be octal string and between 0 and 07777"
            )
        };
        // What starts with a digit is meant as a number (BuildKit gives the octal error for
        // `64a` too).
        if s.starts_with(|c: char| c.is_ascii_digit()) {
            let mode = u32::from_str_radix(s, 8).map_err(|_| octal_error())?;
            if mode > 0o7777 {
                return Err(octal_error());
            }
            return Ok(Chmod::Octal(mode));
        }
        let clauses = s
            .split(',')
            .map(|c| parse_clause(c, s))
            .collect::<Result<Vec<_>>>()?;
        Ok(Chmod::Symbolic {
            text: s.to_string(),
            clauses,
        })
    }

    /// The mode a copied entry gets, from its source's `mode` (permission bits).
    pub fn apply(&self, mode: u32, is_dir: bool) -> u32 {
        match self {
            Chmod::Octal(m) => *m,
            Chmod::Symbolic { clauses, .. } => {
                // `X` looks at the source's mode, not at what earlier clauses made of it
                // (BuildKit's mode package; chmod(1) differs: `a-x,u+X` gives 0744 here).
                let original = mode & 0o7777;
                let mut current = original;
                for clause in clauses {
                    current = clause.apply(current, original, is_dir);
                }
                current
            }
        }
    }

    /// The mode of a directory the copy creates on the way to its destination.
    pub fn created_dir_mode(&self) -> u32 {
        match self {
            Chmod::Octal(m) => m & 0o755,
            Chmod::Symbolic { .. } => 0o755,
        }
    }

    /// The text a cache key names it by: the octal digits, or the clauses as written.
    pub fn key_text(&self) -> String {
        match self {
            Chmod::Octal(m) => format!("{m:o}"),
            Chmod::Symbolic { text, .. } => text.clone(),
        }
    }
}

fn parse_clause(clause: &str, whole: &str) -> Result<Clause> {
    let invalid = |why: &str| {
        anyhow::anyhow!(
            "--chmod={whole}: {why}; expected an octal mode (755) or chmod's symbolic form \
             ([ugoa]*[+-=][rwxXst]*, clauses separated by commas, as in u+x,go-w)"
        )
    };
    let mut chars = clause.chars().peekable();
    let mut who = 0;
    while let Some(&c) = chars.peek() {
        who |= match c {
            'u' => USER,
            'g' => GROUP,
            'o' => OTHER,
            'a' => 0o7777,
            _ => break,
        };
        chars.next();
    }
    if who == 0 {
        who = 0o7777; // umask 0, as BuildKit parses it: no class means all
    }
    let mut ops = Vec::new();
    while let Some(op) = chars.next() {
        if !matches!(op, '+' | '-' | '=') {
            return Err(invalid(&format!("unexpected {op:?} in {clause:?}")));
        }
        let perms = match chars.peek() {
            Some('u') => {
                chars.next();
                Perms::CopyOf(0)
            }
            Some('g') => {
                chars.next();
                Perms::CopyOf(3)
            }
            Some('o') => {
                chars.next();
                Perms::CopyOf(6)
            }
            _ => {
                let mut bits = 0;
                let mut cond_exec = false;
                while let Some(&c) = chars.peek() {
                    match c {
                        'r' => bits |= 0o444,
                        'w' => bits |= 0o222,
                        'x' => bits |= 0o111,
                        'X' => cond_exec = true,
                        's' => bits |= 0o6000,
                        't' => bits |= 0o1000,
                        _ => break,
                    }
                    chars.next();
                }
                Perms::Letters { bits, cond_exec }
            }
        };
        ops.push(Operation { op, perms });
    }
    if ops.is_empty() {
        return Err(invalid(&format!("{clause:?} has no +, - or =")));
    }
    Ok(Clause { who, ops })
}

impl Clause {
    fn apply(&self, mut mode: u32, original: u32, is_dir: bool) -> u32 {
        for operation in &self.ops {
            let bits = match operation.perms {
                Perms::Letters { bits, cond_exec } => {
                    let exec = if cond_exec && (is_dir || original & 0o111 != 0) {
                        0o111
                    } else {
                        0
                    };
                    bits | exec
                }
                Perms::CopyOf(shift) => {
                    // The class's rwx, spread to every class; `who` picks where they land.
                    let rwx = (mode >> (6 - shift)) & 0o7;
                    rwx * 0o111
                }
            };
            let bits = bits & self.who;
            mode = match operation.op {
                '+' => mode | bits,
                '-' => mode & !bits,
                // `=` clears the classes' rwx and set-id bits first (chmod(1) keeps a
                // directory's set-id bits unless named; copies are files or fresh dirs here).
                _ => (mode & !(self.who & if is_dir { 0o1777 } else { 0o7777 })) | bits,
            };
        }
        mode
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sym(s: &str, mode: u32, is_dir: bool) -> u32 {
        Chmod::parse(s).unwrap().apply(mode, is_dir)
    }

    #[test]
    fn octal_replaces_the_mode() {
        let c = Chmod::parse("640").unwrap();
        assert_eq!(c, Chmod::Octal(0o640));
        assert_eq!(c.apply(0o755, false), 0o640);
        assert_eq!(c.created_dir_mode(), 0o640);
        assert_eq!(Chmod::parse("4755").unwrap(), Chmod::Octal(0o4755));
    }

    #[test]
    fn numbers_that_are_not_octal_get_buildkits_error() {
        for bad in ["17777", "999", "8", "64a"] {
            let e = Chmod::parse(bad).unwrap_err().to_string();
            assert!(e.contains("it should be octal string"), "{bad}: {e}");
        }
    }

    // The cases of BuildKit's testFileOpCopyChmodText (which compares with chmod(1)) for a 0644
    // file and a 0500 directory, and a few more; umask 0, as BuildKit parses them.
    #[test]
    fn symbolic_forms_as_chmod_gives_them() {
        assert_eq!(sym("go-w", 0o644, false), 0o644);
        assert_eq!(sym("go-w", 0o666, false), 0o644);
        assert_eq!(sym("o-rwx,g+x", 0o644, false), 0o650);
        assert_eq!(sym("u=rwx,g=,o=", 0o644, false), 0o700);
        assert_eq!(sym("u+rw,g+r,o-x,o+w", 0o644, false), 0o646);
        assert_eq!(sym("a+X", 0o500, true), 0o511);
        assert_eq!(sym("a+X", 0o644, false), 0o644);
        assert_eq!(sym("a+X", 0o744, false), 0o755);
        assert_eq!(sym("g+rw,o+rw", 0o500, true), 0o566);
        assert_eq!(sym("u=rwX,go=rX", 0o500, true), 0o755);
        assert_eq!(sym("u=rwX,go=rX", 0o600, false), 0o644);
        assert_eq!(sym("+x", 0o644, false), 0o755);
        assert_eq!(sym("u+s", 0o755, false), 0o4755);
        assert_eq!(sym("+t", 0o755, true), 0o1755);
        assert_eq!(sym("g=u", 0o740, false), 0o770);
        assert_eq!(sym("o=g-w", 0o675, false), 0o675 & !0o7 | 0o5);
        // Recorded from Docker 28's BuildKit (testdata/conformance/copy_chmod_symbolic).
        assert_eq!(sym("a-x,u+X", 0o755, false), 0o744);
        assert_eq!(sym("u+s,g-r,o=u", 0o755, false), 0o4717);
    }

    #[test]
    fn symbolic_created_dirs_are_0755() {
        assert_eq!(Chmod::parse("u+x").unwrap().created_dir_mode(), 0o755);
    }

    #[test]
    fn malformed_symbolic_modes_say_what_was_expected() {
        for bad in ["u", "u+y", "z+x", "", "u+x,", "rw"] {
            let e = Chmod::parse(bad).unwrap_err().to_string();
            assert!(e.contains("expected an octal mode"), "{bad}: {e}");
        }
    }
}
