//! Go's text/template as docker's CLI uses it for `--format` and `inspect -f`, over JSON values:
//! actions with `{{-`/`-}}` trimming and comments, pipelines, fields (`.Config.Cmd`), variables
//! (`$x := …`, `$`), `if`/`else if`/`else`, `range` (with `$i, $v :=`), `with`, Go's builtins
//! (`and or not len index eq ne lt le gt ge print printf println`) and docker's functions (`json
//! split join title lower upper pad truncate`). Values print as Go prints them: a string slice
//! `[sh -c]`, a map `map[k:v]` (keys sorted), a nil slice or map `[]` / `map[]`.
//!
//! `table` (docker's prefix that prints a header) is handled by [`Format`]: the template runs
//! once against the header names with docker's header functions (they return their argument
//! unchanged, except `pad`), then once per row, and the result goes through Go's tabwriter
//! ([`super::table::tabwrite`]).
//!
//! gtmpl (the Rust port of text/template) was considered: its maps are hash maps, so `map[…]`
//! prints in a random order, it has no header mode, and it has had no release since 2021.

use std::fmt::Write as _;

use anyhow::{anyhow, bail, Result};
use serde_json::Value;

/// A parsed template.
#[derive(Debug, Clone)]
pub struct Template {
    nodes: Vec<Node>,
}

#[derive(Debug, Clone)]
enum Node {
    Text(String),
    Action(Pipeline),
    If(Pipeline, Vec<Node>, Vec<Node>),
    Range(Pipeline, Vec<Node>, Vec<Node>),
    With(Pipeline, Vec<Node>, Vec<Node>),
}

#[derive(Debug, Clone)]
struct Pipeline {
    /// Variables declared (`:=`) or assigned (`=`) by the pipeline.
    decls: Vec<String>,
    declare: bool,
    cmds: Vec<Vec<Arg>>,
    pos: usize,
}

#[derive(Debug, Clone)]
enum Arg {
    /// `.A.B` (empty: the dot itself).
    Field(Vec<String>),
    /// `$x.A.B`.
    Var(String, Vec<String>),
    /// A function name.
    Func(String),
    /// `(pipeline).A.B`.
    Sub(Box<Pipeline>, Vec<String>),
    Lit(Value),
}

// ---------------------------------------------------------------------------------------------
// Lexing and parsing.

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Field(String), // ".Name" (or "." alone: empty)
    Var(String),   // "$x" or "$"
    Ident(String),
    Str(String),
    Num(Value),
    Pipe,
    LParen,
    RParen,
    Declare,
    Assign,
    Comma,
}

/// One piece of a template's source: its offset, an action's tokens or else its text.
type Item = (usize, Option<Vec<Tok>>, String);

/// Splits `src` into text and the token lists of its actions, applying the trim markers.
fn split_actions(src: &str) -> Result<Vec<Item>> {
    let mut out = Vec::new();
    let mut rest = src;
    let mut offset = 0;
    let mut trim_next = false;
    loop {
        let Some(start) = rest.find("{{") else {
            let text = if trim_next { rest.trim_start() } else { rest };
            out.push((offset, None, text.to_string()));
            return Ok(out);
        };
        let mut text = &rest[..start];
        if trim_next {
            text = text.trim_start();
        }
        let mut inner_start = start + 2;
        if rest[inner_start..].starts_with("- ") || rest[inner_start..].starts_with("-\t") {
            text = text.trim_end();
            inner_start += 1;
        }
        out.push((offset, None, text.to_string()));
        let pos = offset + start;
        let inner_rest = &rest[inner_start..];
        let (inner, end_len, trim) = if inner_rest.trim_start().starts_with("/*") {
            let close = inner_rest
                .find("*/")
                .ok_or_else(|| parse_err(src, pos, "unclosed comment"))?;
            let after = &inner_rest[close + 2..];
            if after.starts_with(" -}}") {
                ("", close + 2 + 4, true)
            } else if after.starts_with("}}") {
                ("", close + 2 + 2, false)
            } else {
                return Err(parse_err(src, pos, "comment ends before closing delimiter"));
            }
        } else {
            let close =
                find_close(inner_rest).ok_or_else(|| parse_err(src, pos, "unclosed action"))?;
            let body = &inner_rest[..close];
            if body.ends_with(" -") || body.ends_with("\t-") {
                (&body[..body.len() - 1], close + 2, true)
            } else {
                (body, close + 2, false)
            }
        };
        let is_comment = inner_rest.trim_start().starts_with("/*");
        if !is_comment {
            out.push((
                pos,
                Some(lex(inner).map_err(|m| parse_err(src, pos, &m))?),
                String::new(),
            ));
        }
        trim_next = trim;
        let consumed = inner_start + end_len;
        offset += consumed;
        rest = &rest[consumed..];
    }
}

/// The `}}` that closes an action, skipping quoted strings.
fn find_close(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            b'`' => {
                i += 1;
                while i < b.len() && b[i] != b'`' {
                    i += 1;
                }
            }
            b'}' if b.get(i + 1) == Some(&b'}') => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

fn parse_err(src: &str, pos: usize, msg: &str) -> anyhow::Error {
    let col = src[..pos.min(src.len())].chars().count() + 1;
    anyhow!("template parsing error: template: :1:{col}: {msg}")
}

fn lex(s: &str) -> std::result::Result<Vec<Tok>, String> {
    let chars: Vec<char> = s.chars().collect();
    let mut toks = Vec::new();
    let mut i = 0;
    let word = |i: &mut usize| -> String {
        let start = *i;
        while *i < chars.len() && (chars[*i].is_alphanumeric() || chars[*i] == '_') {
            *i += 1;
        }
        chars[start..*i].iter().collect()
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            ' ' | '\t' | '\n' | '\r' => i += 1,
            '|' => {
                toks.push(Tok::Pipe);
                i += 1
            }
            '(' => {
                toks.push(Tok::LParen);
                i += 1
            }
            ')' => {
                toks.push(Tok::RParen);
                i += 1
            }
            ',' => {
                toks.push(Tok::Comma);
                i += 1
            }
            ':' if chars.get(i + 1) == Some(&'=') => {
                toks.push(Tok::Declare);
                i += 2
            }
            '=' => {
                toks.push(Tok::Assign);
                i += 1
            }
            '.' if !chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()) => {
                i += 1;
                let name = word(&mut i);
                // A chain after a closing paren or variable: `.A` following them.
                match toks.last_mut() {
                    Some(Tok::Field(prev))
                        if !name.is_empty()
                            && !prev.is_empty()
                            && s_adjacent(&chars, i - name.len() - 1) =>
                    {
                        prev.push('.');
                        prev.push_str(&name);
                    }
                    Some(Tok::Var(prev))
                        if !name.is_empty() && s_adjacent(&chars, i - name.len() - 1) =>
                    {
                        prev.push('.');
                        prev.push_str(&name);
                    }
                    _ => toks.push(Tok::Field(name)),
                }
            }
            '$' => {
                i += 1;
                let name = word(&mut i);
                toks.push(Tok::Var(name));
            }
            '"' => {
                let mut out = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err("unterminated quoted string".into()),
                        Some('"') => break,
                        Some('\\') => {
                            i += 1;
                            match chars.get(i) {
                                Some('n') => out.push('\n'),
                                Some('t') => out.push('\t'),
                                Some('r') => out.push('\r'),
                                Some('\\') => out.push('\\'),
                                Some('"') => out.push('"'),
                                Some(c) => return Err(format!("unknown escape sequence: \\{c}")),
                                None => return Err("unterminated quoted string".into()),
                            }
                        }
                        Some(c) => out.push(*c),
                    }
                    i += 1;
                }
                i += 1;
                toks.push(Tok::Str(out));
            }
            '`' => {
                let start = i + 1;
                i = start;
                while i < chars.len() && chars[i] != '`' {
                    i += 1;
                }
                if i >= chars.len() {
                    return Err("unterminated raw quoted string".into());
                }
                toks.push(Tok::Str(chars[start..i].iter().collect()));
                i += 1;
            }
            c if c.is_ascii_digit() || c == '-' || c == '+' || c == '.' => {
                let start = i;
                i += 1;
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
                let text: String = chars[start..i].iter().collect();
                let num = if let Ok(n) = text.parse::<i64>() {
                    Value::from(n)
                } else if let Ok(f) = text.parse::<f64>() {
                    Value::from(f)
                } else {
                    return Err(format!("bad number syntax: {text:?}"));
                };
                toks.push(Tok::Num(num));
            }
            c if c.is_alphabetic() || c == '_' => toks.push(Tok::Ident(word(&mut i))),
            c => return Err(format!("unexpected {c:?} in command")),
        }
    }
    Ok(toks)
}

/// Whether the `.` at `dot` directly follows a token (no space): `$x.A`, `(…).A`, `.A.B`.
fn s_adjacent(chars: &[char], dot: usize) -> bool {
    dot > 0 && !chars[dot - 1].is_whitespace() && chars[dot - 1] != '('
}

struct Parser<'a> {
    src: &'a str,
    items: Vec<Item>,
    at: usize,
}

impl Template {
    /// Parses a template; errors read as Go's (`template parsing error: template: :1:N: …`).
    pub fn parse(src: &str) -> Result<Template> {
        let items = split_actions(src)?;
        let mut p = Parser { src, items, at: 0 };
        let (nodes, end) = p.list()?;
        if let Some((pos, word)) = end {
            return Err(parse_err(src, pos, &format!("unexpected {{{{{word}}}}}")));
        }
        Ok(Template { nodes })
    }
}

impl Parser<'_> {
    /// Nodes up to `{{end}}`/`{{else …}}` (returned with its position and keyword) or the end.
    #[allow(clippy::type_complexity)]
    fn list(&mut self) -> Result<(Vec<Node>, Option<(usize, String)>)> {
        let mut nodes = Vec::new();
        while self.at < self.items.len() {
            let (pos, toks, text) = self.items[self.at].clone();
            self.at += 1;
            let Some(toks) = toks else {
                if !text.is_empty() {
                    nodes.push(Node::Text(text));
                }
                continue;
            };
            match toks.first() {
                Some(Tok::Ident(w)) if w == "end" => return Ok((nodes, Some((pos, "end".into())))),
                Some(Tok::Ident(w)) if w == "else" => {
                    // `else if …`: the rest of the tokens are kept for the caller.
                    self.items[self.at - 1].1 = Some(toks[1..].to_vec());
                    return Ok((nodes, Some((pos, "else".into()))));
                }
                Some(Tok::Ident(w)) if w == "if" || w == "range" || w == "with" => {
                    let kw = w.clone();
                    let node = self.control(&kw, pos, &toks[1..])?;
                    nodes.push(node);
                }
                Some(Tok::Ident(w))
                    if matches!(
                        w.as_str(),
                        "define" | "template" | "block" | "break" | "continue"
                    ) =>
                {
                    return Err(parse_err(
                        self.src,
                        pos,
                        &format!("{w} is not supported by kiln"),
                    ));
                }
                None => return Err(parse_err(self.src, pos, "missing value for command")),
                _ => nodes.push(Node::Action(pipeline(self.src, pos, &toks)?)),
            }
        }
        Ok((nodes, None))
    }

    fn control(&mut self, kw: &str, pos: usize, toks: &[Tok]) -> Result<Node> {
        let pipe = pipeline(self.src, pos, toks)?;
        let (body, end) = self.list()?;
        let mut else_body = Vec::new();
        match end {
            Some((_, e)) if e == "end" => {}
            Some((epos, _)) => {
                let rest = self.items[self.at - 1].1.clone().unwrap_or_default();
                match rest.first() {
                    // `{{else if …}}` / `{{else with …}}`: a nested node that takes the `end`.
                    Some(Tok::Ident(w)) if (w == "if" || w == "with") && w == kw => {
                        else_body.push(self.control(kw, epos, &rest[1..])?);
                    }
                    None => {
                        let (b, end2) = self.list()?;
                        else_body = b;
                        if !matches!(end2, Some((_, ref e)) if e == "end") {
                            return Err(parse_err(
                                self.src,
                                pos,
                                &format!("unexpected EOF in {kw}"),
                            ));
                        }
                    }
                    _ => return Err(parse_err(self.src, epos, "unexpected tokens after else")),
                }
            }
            None => return Err(parse_err(self.src, pos, &format!("unexpected EOF in {kw}"))),
        }
        Ok(match kw {
            "if" => Node::If(pipe, body, else_body),
            "range" => Node::Range(pipe, body, else_body),
            _ => Node::With(pipe, body, else_body),
        })
    }
}

fn pipeline(src: &str, pos: usize, toks: &[Tok]) -> Result<Pipeline> {
    let mut decls = Vec::new();
    let mut declare = true;
    let mut rest = toks;
    // `$x :=`, `$i, $v :=`, `$x =`
    let mut i = 0;
    let mut names = Vec::new();
    while let Some(Tok::Var(v)) = rest.get(i) {
        names.push(v.clone());
        match rest.get(i + 1) {
            Some(Tok::Comma) => i += 2,
            Some(Tok::Declare) | Some(Tok::Assign) => {
                declare = rest[i + 1] == Tok::Declare;
                decls = names.clone();
                rest = &rest[i + 2..];
                break;
            }
            _ => break,
        }
    }
    let mut cmds = Vec::new();
    let mut j = 0;
    let mut cmd = Vec::new();
    while j < rest.len() {
        match &rest[j] {
            Tok::Pipe => {
                if cmd.is_empty() {
                    return Err(parse_err(src, pos, "missing command in pipeline"));
                }
                cmds.push(std::mem::take(&mut cmd));
            }
            Tok::LParen => {
                let mut depth = 1;
                let start = j + 1;
                while depth > 0 {
                    j += 1;
                    match rest.get(j) {
                        Some(Tok::LParen) => depth += 1,
                        Some(Tok::RParen) => depth -= 1,
                        None => return Err(parse_err(src, pos, "unclosed left paren")),
                        _ => {}
                    }
                }
                let inner = pipeline(src, pos, &rest[start..j])?;
                // `(…).A.B` directly after the paren.
                let mut fields = Vec::new();
                if let Some(Tok::Field(f)) = rest.get(j + 1) {
                    if !f.is_empty() {
                        fields = f.split('.').map(String::from).collect();
                        j += 1;
                    }
                }
                cmd.push(Arg::Sub(Box::new(inner), fields));
            }
            Tok::RParen => return Err(parse_err(src, pos, "unexpected right paren")),
            Tok::Field(f) => cmd.push(Arg::Field(if f.is_empty() {
                Vec::new()
            } else {
                f.split('.').map(String::from).collect()
            })),
            Tok::Var(v) => {
                let mut parts = v.split('.');
                let name = parts.next().unwrap_or_default().to_string();
                cmd.push(Arg::Var(name, parts.map(String::from).collect()));
            }
            Tok::Ident(w) => cmd.push(match w.as_str() {
                "true" => Arg::Lit(Value::Bool(true)),
                "false" => Arg::Lit(Value::Bool(false)),
                "nil" => Arg::Lit(Value::Null),
                _ => {
                    if !is_func(w) {
                        return Err(parse_err(src, pos, &format!("function {w:?} not defined")));
                    }
                    Arg::Func(w.clone())
                }
            }),
            Tok::Str(s) => cmd.push(Arg::Lit(Value::String(s.clone()))),
            Tok::Num(n) => cmd.push(Arg::Lit(n.clone())),
            Tok::Declare | Tok::Assign | Tok::Comma => {
                return Err(parse_err(src, pos, "unexpected token in command"))
            }
        }
        j += 1;
    }
    if cmd.is_empty() {
        return Err(parse_err(src, pos, "missing value for command"));
    }
    cmds.push(cmd);
    Ok(Pipeline {
        decls,
        declare,
        cmds,
        pos,
    })
}

const FUNCS: &[&str] = &[
    "and", "or", "not", "len", "index", "eq", "ne", "lt", "le", "gt", "ge", "print", "printf",
    "println", "json", "split", "join", "title", "lower", "upper", "pad", "truncate", "slice",
];

fn is_func(name: &str) -> bool {
    FUNCS.contains(&name)
}

// ---------------------------------------------------------------------------------------------
// Execution.

/// A value with what Go would print for it when it is null: `[]` for a nil slice, `map[]` for a
/// nil map, `<nil>` otherwise (known from the field's name, as docker's structs type them).
#[derive(Debug, Clone)]
struct Val {
    v: Value,
    nil: &'static str,
}

impl Val {
    fn of(v: Value) -> Val {
        Val { v, nil: "<nil>" }
    }
}

/// docker's fields that are slices or maps in its Go types, so that a null one prints as Go
/// prints a nil slice or map.
fn nil_print(key: &str) -> &'static str {
    match key {
        "Cmd" | "Entrypoint" | "Env" | "OnBuild" | "Shell" | "RepoTags" | "RepoDigests"
        | "Layers" | "Args" | "Mounts" | "Binds" | "Dns" | "DnsSearch" | "DnsOptions"
        | "CapAdd" | "CapDrop" | "SecurityOpt" | "ExtraHosts" | "Tmpfs" | "Devices" | "Aliases"
        | "Links" => "[]",
        "Labels" | "Volumes" | "ExposedPorts" | "Ports" | "Options" | "Networks"
        | "Annotations" | "Data" | "PortBindings" | "Sysctls" | "StorageOpt" | "LogConfig" => {
            "map[]"
        }
        _ => "<nil>",
    }
}

/// How functions behave: normally, or as docker's header pass (`json`, `split`, `join`,
/// `title`, `lower`, `upper`, `truncate` return their argument unchanged).
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Normal,
    Header,
}

struct Exec<'a> {
    root: &'a Value,
    vars: Vec<(String, Val)>,
    mode: Mode,
    /// `{{json .}}` of the root escapes `<`, `>` and `&` as docker's row contexts do (their
    /// MarshalJSON goes through json.Marshal).
    escape_root_json: bool,
    out: String,
}

impl Template {
    /// Runs the template on `data`.
    pub fn execute(&self, data: &Value) -> Result<String> {
        self.run(data, Mode::Normal, false)
    }

    fn run(&self, data: &Value, mode: Mode, escape_root_json: bool) -> Result<String> {
        let mut ex = Exec {
            root: data,
            vars: vec![("".into(), Val::of(data.clone()))],
            mode,
            escape_root_json,
            out: String::new(),
        };
        ex.walk(&self.nodes, &Val::of(data.clone()))?;
        Ok(ex.out)
    }
}

fn exec_err(pos: usize, msg: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("template: :1:{}: executing \"\": {msg}", pos + 1)
}

impl Exec<'_> {
    fn walk(&mut self, nodes: &[Node], dot: &Val) -> Result<()> {
        for node in nodes {
            match node {
                Node::Text(t) => self.out.push_str(t),
                Node::Action(p) => {
                    let v = self.pipe(p, dot)?;
                    if p.decls.is_empty() {
                        let s = go_print(&v);
                        self.out.push_str(&s);
                    }
                }
                Node::If(p, body, els) => {
                    let mark = self.vars.len();
                    let v = self.pipe(p, dot)?;
                    if truthy(&v.v) {
                        self.walk(body, dot)?;
                    } else {
                        self.walk(els, dot)?;
                    }
                    self.vars.truncate(mark);
                }
                Node::With(p, body, els) => {
                    let mark = self.vars.len();
                    let v = self.pipe(p, dot)?;
                    if truthy(&v.v) {
                        self.walk(body, &v)?;
                    } else {
                        self.walk(els, dot)?;
                    }
                    self.vars.truncate(mark);
                }
                Node::Range(p, body, els) => {
                    let mark = self.vars.len();
                    let mut plain = p.clone();
                    plain.decls.clear();
                    let v = self.pipe(&plain, dot)?;
                    let items: Vec<(Value, Val)> = match &v.v {
                        Value::Array(a) => a
                            .iter()
                            .enumerate()
                            .map(|(i, x)| (Value::from(i), Val::of(x.clone())))
                            .collect(),
                        Value::Object(m) => m
                            .iter()
                            .map(|(k, x)| (Value::String(k.clone()), Val::of(x.clone())))
                            .collect(),
                        Value::Null => Vec::new(),
                        Value::Number(n) if n.as_u64().is_some() => (0..n.as_u64().unwrap_or(0))
                            .map(|i| (Value::from(i), Val::of(Value::from(i))))
                            .collect(),
                        other => {
                            return Err(exec_err(
                                p.pos,
                                format!(
                                    "range can't iterate over {}",
                                    go_print(&Val::of(other.clone()))
                                ),
                            ))
                        }
                    };
                    if items.is_empty() {
                        self.walk(els, dot)?;
                    }
                    for (k, item) in items {
                        let inner = self.vars.len();
                        match p.decls.as_slice() {
                            [] => {}
                            [v] => self.vars.push((v.clone(), item.clone())),
                            [kv, vv, ..] => {
                                self.vars.push((kv.clone(), Val::of(k)));
                                self.vars.push((vv.clone(), item.clone()));
                            }
                        }
                        self.walk(body, &item)?;
                        self.vars.truncate(inner);
                    }
                    self.vars.truncate(mark);
                }
            }
        }
        Ok(())
    }

    fn pipe(&mut self, p: &Pipeline, dot: &Val) -> Result<Val> {
        let mut prev: Option<Val> = None;
        for cmd in &p.cmds {
            prev = Some(self.command(p.pos, cmd, dot, prev)?);
        }
        let v = prev.unwrap_or_else(|| Val::of(Value::Null));
        for name in &p.decls {
            if p.declare {
                self.vars.push((name.clone(), v.clone()));
            } else {
                let slot = self
                    .vars
                    .iter_mut()
                    .rev()
                    .find(|(n, _)| n == name)
                    .ok_or_else(|| exec_err(p.pos, format!("undefined variable: ${name}")))?;
                slot.1 = v.clone();
            }
        }
        Ok(v)
    }

    fn command(&mut self, pos: usize, cmd: &[Arg], dot: &Val, prev: Option<Val>) -> Result<Val> {
        match &cmd[0] {
            Arg::Func(name) => {
                let mut args = Vec::new();
                for a in &cmd[1..] {
                    args.push(self.arg(pos, a, dot)?);
                }
                if let Some(p) = prev {
                    args.push(p);
                }
                self.call(pos, name, args)
            }
            Arg::Field(path)
                if path.last().is_some_and(|f| f == "Label")
                    && cmd.len() == 2
                    && prev.is_none() =>
            {
                // docker's list contexts (ps, volume ls, ...) have a method `Label NAME`: the
                // value of NAME in their `Labels` ("k=v,k2=v2"), empty when absent.
                let owner = fields(pos, dot.clone(), &path[..path.len() - 1])?;
                let labels = fields(pos, owner, &["Labels".to_string()])?;
                let key = self.arg(pos, &cmd[1], dot)?;
                let key = match &key.v {
                    Value::String(k) => k.clone(),
                    other => other.to_string(),
                };
                let text = labels.v.as_str().unwrap_or_default();
                let value = text
                    .split(',')
                    .find_map(|kv| kv.split_once('=').filter(|(k, _)| *k == key))
                    .map(|(_, v)| v.to_string())
                    .unwrap_or_default();
                Ok(Val::of(Value::String(value)))
            }
            first => {
                if cmd.len() > 1 || prev.is_some() {
                    return Err(exec_err(pos, "can't give argument to non-function"));
                }
                self.arg(pos, first, dot)
            }
        }
    }

    fn arg(&mut self, pos: usize, a: &Arg, dot: &Val) -> Result<Val> {
        match a {
            Arg::Field(path) => fields(pos, dot.clone(), path),
            Arg::Var(name, path) => {
                let v = self
                    .vars
                    .iter()
                    .rev()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.clone())
                    .ok_or_else(|| exec_err(pos, format!("undefined variable: ${name}")))?;
                fields(pos, v, path)
            }
            Arg::Sub(p, path) => {
                let v = self.pipe(p, dot)?;
                fields(pos, v, path)
            }
            Arg::Lit(v) => Ok(Val::of(v.clone())),
            Arg::Func(name) => self.call(pos, name, Vec::new()),
        }
    }

    fn call(&mut self, pos: usize, name: &str, args: Vec<Val>) -> Result<Val> {
        let err = |m: String| exec_err(pos, format!("error calling {name}: {m}"));
        let want = |n: usize| -> Result<()> {
            if args.len() != n {
                return Err(exec_err(
                    pos,
                    format!(
                        "wrong number of args for {name}: want {n} got {}",
                        args.len()
                    ),
                ));
            }
            Ok(())
        };
        if self.mode == Mode::Header
            && matches!(
                name,
                "json" | "split" | "join" | "title" | "lower" | "upper" | "truncate"
            )
        {
            return Ok(args
                .into_iter()
                .next()
                .unwrap_or_else(|| Val::of(Value::Null)));
        }
        let s = |i: usize| -> Result<String> {
            match &args[i].v {
                Value::String(s) => Ok(s.clone()),
                other => Err(err(format!(
                    "wrong type for value; expected string; got {}",
                    type_name(other)
                ))),
            }
        };
        let int = |i: usize| -> Result<i64> {
            args[i].v.as_i64().ok_or_else(|| {
                err(format!(
                    "wrong type for value; expected int; got {}",
                    type_name(&args[i].v)
                ))
            })
        };
        let v = match name {
            "and" => {
                let mut last = Val::of(Value::Null);
                for a in args {
                    let t = truthy(&a.v);
                    last = a;
                    if !t {
                        break;
                    }
                }
                return Ok(last);
            }
            "or" => {
                let mut last = Val::of(Value::Null);
                for a in args {
                    let t = truthy(&a.v);
                    last = a;
                    if t {
                        break;
                    }
                }
                return Ok(last);
            }
            "not" => {
                want(1)?;
                Value::Bool(!truthy(&args[0].v))
            }
            "len" => {
                want(1)?;
                Value::from(match &args[0].v {
                    Value::String(s) => s.len(),
                    Value::Array(a) => a.len(),
                    Value::Object(m) => m.len(),
                    Value::Null => 0,
                    other => return Err(err(format!("len of type {}", type_name(other)))),
                })
            }
            "index" => {
                if args.is_empty() {
                    return Err(err("missing item to index".into()));
                }
                let mut cur = args[0].v.clone();
                for k in &args[1..] {
                    cur = match (&cur, &k.v) {
                        (Value::Array(a), Value::Number(n)) => {
                            let i = n
                                .as_u64()
                                .ok_or_else(|| err(format!("index out of range: {n}")))?;
                            a.get(i as usize)
                                .cloned()
                                .ok_or_else(|| err(format!("index out of range: {i}")))?
                        }
                        (Value::String(s), Value::Number(n)) => {
                            let i = n.as_u64().unwrap_or(u64::MAX) as usize;
                            Value::from(
                                *s.as_bytes()
                                    .get(i)
                                    .ok_or_else(|| err(format!("index out of range: {n}")))?,
                            )
                        }
                        (Value::Object(m), Value::String(key)) => {
                            m.get(key).cloned().unwrap_or(Value::String(String::new()))
                        }
                        (Value::Null, _) => Value::String(String::new()),
                        (c, _) => {
                            return Err(err(format!("can't index item of type {}", type_name(c))))
                        }
                    };
                }
                cur
            }
            "eq" | "ne" => {
                if args.len() < 2 {
                    return Err(err("missing argument for comparison".into()));
                }
                let hit = args[1..].iter().any(|b| values_equal(&args[0].v, &b.v));
                Value::Bool(if name == "eq" { hit } else { !hit })
            }
            "lt" | "le" | "gt" | "ge" => {
                want(2)?;
                let ord = compare(&args[0].v, &args[1].v)
                    .ok_or_else(|| err("incompatible types for comparison".into()))?;
                use std::cmp::Ordering::*;
                Value::Bool(match name {
                    "lt" => ord == Less,
                    "le" => ord != Greater,
                    "gt" => ord == Greater,
                    _ => ord != Less,
                })
            }
            "print" => Value::String(sprint(&args)),
            "println" => {
                let s: Vec<String> = args.iter().map(go_print).collect();
                Value::String(s.join(" ") + "\n")
            }
            "printf" => {
                if args.is_empty() {
                    return Err(err("missing format".into()));
                }
                Value::String(sprintf(&s(0)?, &args[1..]))
            }
            "json" => {
                want(1)?;
                // docker's structs' field order (`{{json .Config}}`), not sorted keys.
                let mut text =
                    super::docker_json::to_string(&args[0].v, super::docker_json::Style::Template);
                if self.escape_root_json && &args[0].v == self.root {
                    text = text
                        .replace('<', "\\u003c")
                        .replace('>', "\\u003e")
                        .replace('&', "\\u0026");
                }
                Value::String(text)
            }
            "split" => {
                want(2)?;
                let (a, sep) = (s(0)?, s(1)?);
                let parts: Vec<Value> = if sep.is_empty() {
                    a.chars().map(|c| Value::String(c.to_string())).collect()
                } else {
                    a.split(sep.as_str())
                        .map(|p| Value::String(p.to_string()))
                        .collect()
                };
                Value::Array(parts)
            }
            "join" => {
                want(2)?;
                let items = match &args[0].v {
                    Value::Array(a) => a
                        .iter()
                        .map(|x| go_print(&Val::of(x.clone())))
                        .collect::<Vec<_>>(),
                    Value::Null => Vec::new(),
                    other => {
                        return Err(err(format!(
                            "wrong type for value; expected []string; got {}",
                            type_name(other)
                        )))
                    }
                };
                Value::String(items.join(&s(1)?))
            }
            "title" => {
                want(1)?;
                Value::String(title(&s(0)?))
            }
            "lower" => {
                want(1)?;
                Value::String(s(0)?.to_lowercase())
            }
            "upper" => {
                want(1)?;
                Value::String(s(0)?.to_uppercase())
            }
            "pad" => {
                want(3)?;
                let text = s(0)?;
                if text.is_empty() {
                    Value::String(String::new())
                } else {
                    let (pre, post) = (int(1)?.max(0) as usize, int(2)?.max(0) as usize);
                    Value::String(format!("{}{text}{}", " ".repeat(pre), " ".repeat(post)))
                }
            }
            "truncate" => {
                want(2)?;
                let text = s(0)?;
                let n = int(1)?.max(0) as usize;
                Value::String(text.chars().take(n).collect())
            }
            "slice" => {
                if args.is_empty() {
                    return Err(err("missing item to slice".into()));
                }
                let from = if args.len() > 1 { int(1)? as usize } else { 0 };
                match &args[0].v {
                    Value::String(t) => {
                        let to = if args.len() > 2 {
                            int(2)? as usize
                        } else {
                            t.len()
                        };
                        Value::String(
                            t.get(from..to)
                                .ok_or_else(|| err("index out of range".into()))?
                                .to_string(),
                        )
                    }
                    Value::Array(a) => {
                        let to = if args.len() > 2 {
                            int(2)? as usize
                        } else {
                            a.len()
                        };
                        Value::Array(
                            a.get(from..to)
                                .ok_or_else(|| err("index out of range".into()))?
                                .to_vec(),
                        )
                    }
                    other => {
                        return Err(err(format!(
                            "can't slice item of type {}",
                            type_name(other)
                        )))
                    }
                }
            }
            _ => bail!("function {name:?} not defined"),
        };
        Ok(Val::of(v))
    }
}

fn fields(pos: usize, mut v: Val, path: &[String]) -> Result<Val> {
    for key in path {
        v = match &v.v {
            Value::Object(m) => match m.get(key) {
                Some(x) => Val {
                    v: x.clone(),
                    nil: nil_print(key),
                },
                None => match zero_value(key) {
                    Some(z) => z,
                    None => {
                        return Err(exec_err(
                            pos,
                            format!("at <.{key}>: map has no entry for key \"{key}\""),
                        ))
                    }
                },
            },
            Value::Null => {
                return Err(exec_err(
                    pos,
                    format!("at <.{key}>: nil pointer evaluating .{key}"),
                ))
            }
            other => {
                return Err(exec_err(
                    pos,
                    format!(
                        "at <.{key}>: can't evaluate field {key} in type {}",
                        type_name(other)
                    ),
                ))
            }
        };
    }
    Ok(v)
}

/// docker's struct fields that its JSON omits when empty (`omitempty`) but a template still
/// reads as their zero value: `{{.Config.User}}` is "" and `{{.Config.Healthcheck}}` `<nil>`
/// on an image that sets neither.
fn zero_value(key: &str) -> Option<Val> {
    let v = match key {
        "User" | "WorkingDir" | "StopSignal" | "Hostname" | "Domainname" | "Image" | "Author"
        | "Comment" | "Variant" | "MacAddress" | "Parent" | "DockerVersion" => {
            Value::String(String::new())
        }
        "ArgsEscaped" | "Tty" | "OpenStdin" | "StdinOnce" | "AttachStdin" | "AttachStdout"
        | "AttachStderr" | "NetworkDisabled" => Value::Bool(false),
        "Healthcheck" | "StopTimeout" => Value::Null,
        _ if nil_print(key) != "<nil>" => Value::Null,
        _ => return None,
    };
    Some(Val {
        v,
        nil: nil_print(key),
    })
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "<nil>",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float64",
        Value::Number(_) => "int",
        Value::String(_) => "string",
        Value::Array(_) => "[]interface {}",
        Value::Object(_) => "map[string]interface {}",
    }
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(m) => !m.is_empty(),
    }
}

fn values_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn compare(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

/// strings.Title: the first letter of each word upper-cased.
fn title(s: &str) -> String {
    let mut out = String::new();
    let mut prev_sep = true;
    for c in s.chars() {
        if prev_sep {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        prev_sep = !(c.is_alphanumeric() || c == '_' || c == '\'');
    }
    out
}

/// A value as Go's fmt prints it with %v.
fn go_print(v: &Val) -> String {
    let mut s = String::new();
    print_value(&mut s, &v.v, v.nil, true);
    s
}

fn print_value(out: &mut String, v: &Value, nil: &'static str, top: bool) {
    match v {
        Value::Null => out.push_str(if top { nil } else { "<nil>" }),
        Value::Bool(b) => {
            let _ = write!(out, "{b}");
        }
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                let _ = write!(out, "{i}");
            } else if let Some(u) = n.as_u64() {
                let _ = write!(out, "{u}");
            } else {
                let _ = write!(out, "{}", n.as_f64().unwrap_or(0.0));
            }
        }
        Value::String(s) => out.push_str(s),
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                print_value(out, x, "<nil>", false);
            }
            out.push(']');
        }
        Value::Object(m) => {
            // An empty struct (docker's `{}` in ExposedPorts, Volumes) prints `{}`.
            if m.is_empty() && !(top && nil == "map[]") {
                out.push_str("{}");
                return;
            }
            out.push_str("map[");
            for (i, (k, x)) in m.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                out.push_str(k);
                out.push(':');
                print_value(out, x, "<nil>", false);
            }
            out.push(']');
        }
    }
}

/// fmt.Sprint: operands printed with %v, a space between two operands when neither is a string.
fn sprint(args: &[Val]) -> String {
    let mut out = String::new();
    for (i, a) in args.iter().enumerate() {
        if i > 0 && !args[i - 1].v.is_string() && !a.v.is_string() {
            out.push(' ');
        }
        out.push_str(&go_print(a));
    }
    out
}

/// fmt.Sprintf for the verbs templates use: %v %s %d %q %t %%, with a width (`%-10s`).
fn sprintf(format: &str, args: &[Val]) -> String {
    let mut out = String::new();
    let mut it = format.chars().peekable();
    let mut next = args.iter();
    while let Some(c) = it.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut left = false;
        let mut width = String::new();
        while let Some(&f) = it.peek() {
            if f == '-' {
                left = true;
                it.next();
            } else if f.is_ascii_digit() {
                width.push(f);
                it.next();
            } else {
                break;
            }
        }
        let Some(verb) = it.next() else {
            out.push_str("%!(NOVERB)");
            break;
        };
        if verb == '%' {
            out.push('%');
            continue;
        }
        let Some(a) = next.next() else {
            let _ = write!(out, "%!{verb}(MISSING)");
            continue;
        };
        let text = match verb {
            'q' => match &a.v {
                Value::String(s) => serde_json::to_string(s).unwrap_or_default(),
                _ => go_print(a),
            },
            _ => go_print(a),
        };
        let w: usize = width.parse().unwrap_or(0);
        let pad = w.saturating_sub(text.chars().count());
        if left {
            out.push_str(&text);
            out.push_str(&" ".repeat(pad));
        } else {
            out.push_str(&" ".repeat(pad));
            out.push_str(&text);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// docker's `--format`: `table …`, a template per row, or the command's default.

/// A `--format` value of a listing command, as docker's formatter reads it.
pub enum Format {
    /// `table` alone or no format: the command's own table.
    DefaultTable,
    /// `json`: one JSON object per line.
    Json,
    /// `table TEMPLATE`: a header row from the command's header names, then padded rows.
    Table(Template),
    /// A template printed once per row, each followed by a newline.
    Rows(Template),
}

impl Format {
    /// Parses docker's `--format`: `table` prefix, `json`, or a template. `\t` and `\n` written
    /// as two characters (in single quotes on a shell line) are the tab and newline, as docker.
    pub fn parse(spec: Option<&str>) -> Result<Format> {
        let Some(spec) = spec else {
            return Ok(Format::DefaultTable);
        };
        match spec.trim() {
            "" | "table" => return Ok(Format::DefaultTable),
            "json" => return Ok(Format::Json),
            _ => {}
        }
        let (table, body) = match spec.strip_prefix("table") {
            Some(rest) if rest.starts_with([' ', '\t']) => (true, rest),
            _ => (false, spec),
        };
        let body = body
            .trim_matches(' ')
            .replace("\\t", "\t")
            .replace("\\n", "\n");
        let t = Template::parse(&body)?;
        Ok(if table {
            Format::Table(t)
        } else {
            Format::Rows(t)
        })
    }

    /// Renders `rows` with a template format (`headers`: field name to docker's column name).
    /// `None` for the default table and `json`, which the command prints itself.
    pub fn render(&self, headers: &[(&str, &str)], rows: &[Value]) -> Result<Option<String>> {
        let (t, table) = match self {
            Format::Table(t) => (t, true),
            Format::Rows(t) => (t, false),
            _ => return Ok(None),
        };
        let mut text = String::new();
        if table {
            let header: serde_json::Map<String, Value> = headers
                .iter()
                .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
                .collect();
            let h = t.run(&Value::Object(header), Mode::Header, false)?;
            text.push_str(&h);
            text.push('\n');
        }
        for row in rows {
            text.push_str(&t.run(row, Mode::Normal, true)?);
            text.push('\n');
        }
        Ok(Some(if table {
            super::table::tabwrite(&text)
        } else {
            text
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(t: &str, v: &Value) -> String {
        Template::parse(t).unwrap().execute(v).unwrap()
    }

    fn image() -> Value {
        json!({
            "Os": "linux",
            "Size": 1984172,
            "RepoTags": ["tplref:1"],
            "Config": {
                "Cmd": ["echo hi"], "Entrypoint": ["sh", "-c"], "Env": ["A=1", "FOO=bar"],
                "Labels": {"other": "a b", "k": "v"}, "ExposedPorts": {"8080/tcp": {}, "53/udp": {}},
                "User": "", "Healthcheck": null, "OnBuild": null
            }
        })
    }

    #[test]
    fn go_values_print_as_go_prints_them() {
        let v = image();
        assert_eq!(
            run("{{.Config.Cmd}}|{{.Config.Entrypoint}}|{{.Config.Labels}}|{{.Config.ExposedPorts}}|{{.Size}}|{{.Config.Healthcheck}}|{{.Config.OnBuild}}", &v),
            "[echo hi]|[sh -c]|map[k:v other:a b]|map[53/udp:{} 8080/tcp:{}]|1984172|<nil>|[]"
        );
        assert_eq!(
            run(r#"{{json .Config.Cmd}} {{index .Config.Labels "k"}}"#, &v),
            r#"["echo hi"] v"#
        );
    }

    #[test]
    fn label_is_a_method_of_list_rows() {
        let row = json!({"Names": "web", "Labels": "app=web,tier=front"});
        assert_eq!(
            run(
                r#"{{.Label "tier"}}|{{.Label "app"}}|{{.Label "missing"}}|{{.Names}}"#,
                &row
            ),
            "front|web||web"
        );
        let err = Template::parse(r#"{{.Names "x"}}"#)
            .unwrap()
            .execute(&row)
            .unwrap_err();
        assert!(err.to_string().contains("non-function"), "{err}");
    }

    #[test]
    fn control_flow_variables_and_pipelines() {
        let v = image();
        assert_eq!(
            run("{{range $k, $v := .Config.Labels}}{{$k}}={{$v}};{{end}}|{{range $i, $e := .Config.Env}}{{$i}}:{{$e}} {{end}}|{{with .Config.User}}user{{else}}nouser{{end}}|{{if eq .Os \"linux\"}}L{{end}}|{{if and .Config.Cmd (not .Config.User)}}yes{{end}}", &v),
            "k=v;other=a b;|0:A=1 1:FOO=bar |nouser|L|yes"
        );
        assert_eq!(
            run(
                r#"{{printf "%s-%d-%v-%q" .Os 7 .Config.Cmd .Os}}|{{.Config.Cmd | json}}|{{(index .Config.Cmd 0) | upper}}"#,
                &v
            ),
            r#"linux-7-[echo hi]-"linux"|["echo hi"]|ECHO HI"#
        );
        assert_eq!(
            run(
                r#"{{println .Os}}{{print .Os 1 2 "a" "b"}}{{- " trimmed" -}}  {{/* c */}}|{{$x := "v"}}{{$x}}|{{split "a,b,c" ","}}|{{len "abc"}}"#,
                &v
            ),
            "linux\nlinux1 2ab trimmed|v|[a b c]|3"
        );
        assert_eq!(
            run("{{if .Config.User}}a{{else if .Os}}b{{else}}c{{end}}", &v),
            "b"
        );
        assert_eq!(
            run("{{range .Config.Env}}{{.}},{{else}}none{{end}}", &v),
            "A=1,FOO=bar,"
        );
        assert_eq!(
            run("{{range .Config.OnBuild}}x{{else}}none{{end}}", &v),
            "none"
        );
        assert_eq!(run("{{$}}", &json!("root")), "root");
    }

    #[test]
    fn docker_functions() {
        let v =
            json!({"Repository": "127.0.0.1:5000/busybox", "Tag": "latest", "ID": "79b2387bcce2"});
        assert_eq!(
            run(
                r#"{{lower .Repository}}|{{upper .Tag}}|{{title "hello world"}}|{{pad .Tag 2 3}}|{{truncate .ID 5}}|{{join (split .Repository "/") ","}}"#,
                &v
            ),
            "127.0.0.1:5000/busybox|LATEST|Hello World|  latest   |79b23|127.0.0.1:5000,busybox"
        );
        assert_eq!(run(r#"{{pad "" 2 2}}|"#, &v), "|");
    }

    #[test]
    fn errors_are_one_clear_line() {
        let v = image();
        let e = Template::parse("{{.Config.Nope}}")
            .unwrap()
            .execute(&v)
            .unwrap_err();
        assert!(
            e.to_string().contains("map has no entry for key \"Nope\""),
            "{e}"
        );
        for bad in [
            "{{.Os",
            "{{if .Os}}x",
            "{{nofunc .Os}}",
            "{{end}}",
            "{{\"x}}",
        ] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn table_header_uses_header_names_and_functions() {
        let f = Format::parse(Some(
            r"table {{.Repository}}|{{lower .Repository}}|{{pad .Tag 2 3}}|{{truncate .ID 5}}",
        ))
        .unwrap();
        let rows = [json!({"Repository": "busybox", "Tag": "latest", "ID": "79b2387bcce2"})];
        let out = f
            .render(
                &[
                    ("Repository", "REPOSITORY"),
                    ("Tag", "TAG"),
                    ("ID", "IMAGE ID"),
                ],
                &rows,
            )
            .unwrap()
            .unwrap();
        assert_eq!(
            out,
            "REPOSITORY|REPOSITORY|  TAG   |IMAGE ID\nbusybox|busybox|  latest   |79b23\n"
        );
        let f = Format::parse(Some(r"table {{.Repository}}\t{{.Tag}}")).unwrap();
        let out = f
            .render(&[("Repository", "REPOSITORY"), ("Tag", "TAG")], &rows)
            .unwrap()
            .unwrap();
        assert_eq!(out, "REPOSITORY   TAG\nbusybox      latest\n");
        assert!(matches!(
            Format::parse(Some("table")).unwrap(),
            Format::DefaultTable
        ));
        assert!(matches!(Format::parse(Some("json")).unwrap(), Format::Json));
    }
}
