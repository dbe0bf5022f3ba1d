//! The differential corpus: every case under testdata/conformance/<case>/ is built with kiln and
//! its image compared with `expected`, what Docker 28's BuildKit built for the same case (recorded
//! by testdata/conformance/record.sh; see there for a case's files). The comparison is
//! listing.py's listing, computed here the same way from kiln's image: the config fields a
//! Dockerfile controls, the history after the base image's, and every path of the flattened
//! filesystem that is not exactly as in the base (type, mode, owner, size, sha256, link target,
//! xattrs; mtimes only for the paths a case's `mtimes` names). A case BuildKit rejects must be
//! rejected by kiln too, with an error.
//!
//! Both builders start from the same `busybox:latest` layer: testdata/conformance/make-base.sh
//! makes it from Debian's busybox-static exactly as reference-env makes Docker's, byte for byte.
//!
//! `KILN_CONFORMANCE_CASES=a,b` builds only the named cases; `KILN_CONFORMANCE_JOBS=N` builds N
//! at once (default 4).
mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use serde_json::Value;

const FIELDS: [&str; 12] = [
    "Env",
    "Cmd",
    "Entrypoint",
    "WorkingDir",
    "User",
    "ExposedPorts",
    "Volumes",
    "Labels",
    "StopSignal",
    "Healthcheck",
    "OnBuild",
    "Shell",
];

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/conformance")
}

/// make-base.sh's tarball, made once under target/test-fixtures.
fn base_tar() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-fixtures");
    std::fs::create_dir_all(&dir).unwrap();
    let tar = dir.join("conformance-base.tar");
    if !tar.exists() {
        let status = Command::new("sh")
            .arg(corpus_dir().join("make-base.sh"))
            .arg(&tar)
            .status()
            .expect("run make-base.sh");
        assert!(status.success(), "make-base.sh failed");
    }
    tar
}

/// Stores the base layer as `busybox:latest` with the config `docker import` gives it (none).
fn import_base(root: &Path) {
    let store = kiln::store::Store::open(root).unwrap();
    let tar = base_tar();
    let layer =
        kiln::oci::layer::store_layer(&store, kiln::oci::compress::Compression::Gzip, |w| {
            std::io::copy(&mut std::fs::File::open(&tar)?, w)?;
            Ok(())
        })
        .unwrap();
    let config: oci_spec::image::ImageConfiguration = serde_json::from_value(serde_json::json!({
        "created": "2024-01-01T00:00:00Z",
        "architecture": kiln::oci::image::host_architecture(),
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
        "history": [{"created": "2024-01-01T00:00:00Z", "comment": "Imported from -"}]
    }))
    .unwrap();
    let name = kiln::reference::Reference::parse("busybox:latest").unwrap();
    store
        .commit_image(&config, &[layer.descriptor], &[name])
        .unwrap();
}

#[derive(Clone, PartialEq, Debug)]
struct Entry {
    kind: &'static str,
    mode: u32,
    uid: u64,
    gid: u64,
    size_sha: Option<(u64, String)>,
    link: Option<String>,
    xattrs: Vec<(String, String)>,
    mtime: u64,
}

impl Entry {
    fn dir() -> Entry {
        Entry {
            kind: "dir",
            mode: 0o755,
            uid: 0,
            gid: 0,
            size_sha: None,
            link: None,
            xattrs: Vec::new(),
            mtime: 0,
        }
    }
    fn same(&self, other: &Entry) -> bool {
        Entry {
            mtime: 0,
            ..self.clone()
        } == Entry {
            mtime: 0,
            ..other.clone()
        }
    }
}

type Tree = BTreeMap<String, Entry>;

fn norm(name: &str) -> String {
    let mut n = name;
    while let Some(rest) = n.strip_prefix("./") {
        n = rest;
    }
    let n = n.trim_start_matches('/').trim_end_matches('/');
    if n.is_empty() || n == "." {
        "/".into()
    } else {
        format!("/{n}")
    }
}

fn parent(p: &str) -> String {
    match p.rfind('/') {
        Some(0) | None => "/".into(),
        Some(i) => p[..i].into(),
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

fn remove_tree(fs: &mut Tree, p: &str, keep_self: bool) {
    let prefix = if p == "/" {
        "/".to_string()
    } else {
        format!("{p}/")
    };
    fs.retain(|k, _| k == "/" || !k.starts_with(&prefix));
    if !keep_self {
        fs.remove(p);
    }
}

/// Applies one uncompressed layer tarball to the flattened tree, as listing.py does.
fn apply(fs: &mut Tree, layer: impl Read) {
    let mut archive = tar::Archive::new(layer);
    for entry in archive.entries().unwrap() {
        let mut e = entry.unwrap();
        let p = norm(&String::from_utf8_lossy(&e.path_bytes()));
        let base = p.rsplit('/').next().unwrap_or("").to_string();
        let mut q = parent(&p);
        let mut missing = Vec::new();
        while !fs.contains_key(&q) {
            missing.push(q.clone());
            q = parent(&q);
        }
        for q in missing {
            fs.insert(q, Entry::dir());
        }
        if base == ".wh..wh..opq" {
            remove_tree(fs, &parent(&p), true);
            continue;
        }
        if let Some(name) = base.strip_prefix(".wh.") {
            remove_tree(fs, &join(&parent(&p), name), false);
            continue;
        }
        let mut xattrs: Vec<(String, String)> = Vec::new();
        if let Ok(Some(exts)) = e.pax_extensions() {
            for ext in exts.flatten() {
                if let (Ok(k), Ok(v)) = (ext.key(), ext.value()) {
                    if let Some(k) = k.strip_prefix("SCHILY.xattr.") {
                        xattrs.push((k.to_string(), v.to_string()));
                    }
                }
            }
        }
        xattrs.sort();
        let h = e.header().clone();
        let et = h.entry_type();
        let mode = h.mode().unwrap();
        let (uid, gid, mtime) = (h.uid().unwrap(), h.gid().unwrap(), h.mtime().unwrap());
        let link = || e_link(&h).unwrap_or_default();
        let is_dir = et.is_dir();
        if let Some(old) = fs.get(&p) {
            if !(old.kind == "dir" && is_dir) {
                remove_tree(fs, &p, false);
            }
        }
        let entry = if is_dir {
            Entry {
                mode,
                uid,
                gid,
                mtime,
                xattrs,
                ..Entry::dir()
            }
        } else if et.is_symlink() {
            Entry {
                kind: "symlink",
                link: Some(link()),
                mode,
                uid,
                gid,
                mtime,
                xattrs,
                size_sha: None,
            }
        } else if et.is_hard_link() {
            let target = fs.get(&norm(&link())).cloned().unwrap_or_else(Entry::dir);
            Entry {
                mode,
                uid,
                gid,
                mtime,
                xattrs,
                ..target
            }
        } else if et.is_file() || et == tar::EntryType::Continuous {
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            Entry {
                kind: "file",
                size_sha: Some((
                    data.len() as u64,
                    kiln::digest::sha256_digest(&data)
                        .trim_start_matches("sha256:")
                        .to_string(),
                )),
                mode,
                uid,
                gid,
                mtime,
                xattrs,
                link: None,
            }
        } else if et.is_fifo() {
            Entry {
                kind: "fifo",
                mode,
                uid,
                gid,
                mtime,
                xattrs,
                ..Entry::dir()
            }
        } else if et.is_character_special() || et.is_block_special() {
            let dev = format!(
                "{},{}",
                h.device_major().ok().flatten().unwrap_or(0),
                h.device_minor().ok().flatten().unwrap_or(0)
            );
            Entry {
                kind: if et.is_character_special() {
                    "char"
                } else {
                    "block"
                },
                link: Some(dev),
                mode,
                uid,
                gid,
                mtime,
                xattrs,
                size_sha: None,
            }
        } else {
            continue;
        };
        fs.insert(p, entry);
    }
}

fn e_link(h: &tar::Header) -> Option<String> {
    h.link_name_bytes()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// An image's config and flattened filesystem, from kiln's store.
fn load(root: &Path, name: &str) -> (Value, Tree) {
    let store = kiln::store::Store::open(root).unwrap();
    let rec = store.resolve(name).unwrap();
    let config: Value =
        serde_json::from_slice(&store.read_blob(&rec.config_digest).unwrap()).unwrap();
    let manifest = store.manifest(&rec.manifest_digest).unwrap();
    let mut fs = Tree::new();
    fs.insert("/".into(), Entry::dir());
    for l in manifest.layers() {
        // A built layer is kept unpacked (digest = DiffID): its tar is written again.
        let d = l.digest().to_string();
        let reader = kiln::snapshot::blobs::open_layer_tar(&store, &d, &d).unwrap();
        apply(&mut fs, std::io::BufReader::new(reader));
    }
    (config, fs)
}

fn in_mtimes(p: &str, mtimes: &[String]) -> bool {
    mtimes
        .iter()
        .any(|m| p == m || p.starts_with(&format!("{}/", m.trim_end_matches('/'))))
}

fn fs_line(p: &str, e: &Entry, mtimes: &[String]) -> String {
    let mut s = format!(
        "fs {} {} {:04o} {}:{}",
        Value::from(p),
        e.kind,
        e.mode & 0o7777,
        e.uid,
        e.gid
    );
    if let Some((size, sha)) = &e.size_sha {
        s += &format!(" {size} {sha}");
    }
    if let Some(l) = &e.link {
        s += &format!(" -> {}", Value::from(l.as_str()));
    }
    for (k, v) in &e.xattrs {
        s += &format!(" xattr {k}={}", Value::from(v.as_str()));
    }
    if in_mtimes(p, mtimes) {
        s += &format!(" mtime {}", e.mtime);
    }
    s
}

/// Serializes as Python's json.dumps(sort_keys=True, separators=(",", ":")) does for these values.
fn compact(v: &Value) -> String {
    // serde_json's maps are sorted (no preserve_order feature), and its compact form has no spaces.
    ascii_escaped(&serde_json::to_string(v).unwrap())
}

/// Python's json.dumps writes every non-ASCII character as `\uXXXX` (UTF-16 units), serde_json
/// writes it as is: inside JSON text, both are the same string.
fn ascii_escaped(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
    out
}

fn listing(root: &Path, image: &str, mtimes: &[String]) -> Vec<String> {
    let (config, fs) = load(root, image);
    let (bconfig, bfs) = load(root, "busybox:latest");
    let mut out = Vec::new();
    let c = &config["config"];
    for f in FIELDS {
        match &c[f] {
            Value::Null => {}
            Value::String(s) if s.is_empty() => {}
            v => out.push(format!("config {f} {}", compact(v))),
        }
    }
    if let Some(a) = config["author"].as_str().filter(|a| !a.is_empty()) {
        out.push(format!("author {}", Value::from(a)));
    }
    let hist = config["history"].as_array().cloned().unwrap_or_default();
    let bhist = bconfig["history"].as_array().cloned().unwrap_or_default();
    let skip = if hist.len() >= bhist.len() && hist[..bhist.len()] == bhist[..] {
        bhist.len()
    } else {
        0
    };
    for h in &hist[skip..] {
        let cb = h["created_by"].as_str().unwrap_or("");
        let empty = if h["empty_layer"] == Value::Bool(true) {
            " empty"
        } else {
            ""
        };
        out.push(format!("history {}{empty}", Value::from(cb)));
    }
    for (p, e) in &fs {
        if let Some(b) = bfs.get(p) {
            if b.same(e) && !in_mtimes(p, mtimes) {
                continue;
            }
        }
        out.push(fs_line(p, e, mtimes));
    }
    for p in bfs.keys() {
        if !fs.contains_key(p) && fs.contains_key(&parent(p)) {
            out.push(format!("fs {} absent", Value::from(p.as_str())));
        }
    }
    out.iter().map(|l| ascii_escaped(l)).collect()
}

fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

/// Builds one case; None when kiln gives what BuildKit gave, else the differences.
fn run_case(name: &str) -> Option<String> {
    let dir = corpus_dir().join(name);
    let expected = lines_of(&dir.join("expected"));
    if expected.is_empty() {
        return Some("no expected file: run testdata/conformance/record.sh".into());
    }
    let root = common::temp_root();
    import_base(root.path());
    let empty = tempfile::tempdir().unwrap();
    let context = if dir.join("context").is_dir() {
        dir.join("context")
    } else {
        empty.path().to_path_buf()
    };
    let tag = format!("conformance-{}", name.replace('_', "-"));
    let mut args: Vec<String> = vec![
        "build".into(),
        "--progress".into(),
        "plain".into(),
        "-t".into(),
        tag.clone(),
        "-f".into(),
        dir.join("Dockerfile").display().to_string(),
    ];
    args.extend(lines_of(&dir.join("args")));
    args.push(context.display().to_string());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = common::kiln(root.path(), &refs);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if expected == ["rejected"] {
        return if out.status.success() {
            Some("BuildKit rejects this build; kiln built it".into())
        } else if !stderr.contains("kiln: ") {
            Some(format!("kiln failed without a clear error:\n{stderr}"))
        } else {
            None
        };
    }
    if !out.status.success() {
        let tail: Vec<&str> = stderr.lines().rev().take(8).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Some(format!(
            "kiln failed to build it:\n    {}",
            tail.join("\n    ")
        ));
    }
    // A step that changed nothing: BuildKit writes an empty layer, kiln none (an empty_layer
    // history entry), on purpose (README).
    let expected: Vec<String> = expected
        .into_iter()
        .map(|l| match l.strip_suffix(" nochange") {
            Some(h) => format!("{h} empty"),
            None => l,
        })
        .collect();
    let mtimes = lines_of(&dir.join("mtimes"));
    let got = listing(root.path(), &tag, &mtimes);
    if got == expected {
        return None;
    }
    let mut diffs = Vec::new();
    for l in &expected {
        if !got.contains(l) {
            diffs.push(format!("- {l}"));
        }
    }
    for l in &got {
        if !expected.contains(l) {
            diffs.push(format!("+ {l}"));
        }
    }
    if diffs.is_empty() {
        diffs.push("the same lines in another order".into());
    }
    let more = diffs.len().saturating_sub(12);
    diffs.truncate(12);
    if more > 0 {
        diffs.push(format!("... and {more} more"));
    }
    Some(format!(
        "differs from BuildKit (- BuildKit, + kiln):\n    {}",
        diffs.join("\n    ")
    ))
}

fn case_names() -> Vec<String> {
    let only: Option<Vec<String>> = std::env::var("KILN_CONFORMANCE_CASES")
        .ok()
        .map(|s| s.split(',').map(str::to_string).collect());
    let mut names: Vec<String> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("Dockerfile").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| only.as_ref().map_or(true, |o| o.contains(n)))
        .collect();
    names.sort();
    names
}

#[test]
fn corpus_matches_buildkit() {
    common::require_root();
    base_tar();
    let names = case_names();
    assert!(!names.is_empty(), "no conformance cases selected");
    let queue = Mutex::new(names.clone());
    let failures = Mutex::new(BTreeMap::new());
    std::thread::scope(|s| {
        for _ in 0..jobs() {
            s.spawn(|| loop {
                let Some(name) = queue.lock().unwrap().pop() else {
                    break;
                };
                if let Some(why) = run_case(&name) {
                    failures.lock().unwrap().insert(name, why);
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    let mut report = format!(
        "{}/{} conformance cases give BuildKit's image\n",
        names.len() - failures.len(),
        names.len()
    );
    let known = known_differences();
    let mut unexpected = Vec::new();
    for (name, why) in &failures {
        if known.contains(name) {
            report += &format!("\n{name} (known, in known-differences): {why}\n");
        } else {
            report += &format!("\n{name}: {why}\n");
            unexpected.push(name.clone());
        }
    }
    let now_matching: Vec<&String> = known
        .iter()
        .filter(|k| names.contains(k) && !failures.contains_key(*k))
        .collect();
    eprintln!("{report}");
    assert!(
        unexpected.is_empty(),
        "cases that differ from BuildKit: {unexpected:?}\n{report}"
    );
    assert!(
        now_matching.is_empty(),
        "these cases now give BuildKit's image: delete their lines from \
         testdata/conformance/known-differences: {now_matching:?}"
    );
}

/// How many cases are built at once: `KILN_CONFORMANCE_JOBS`, else 4 (a case waits on its
/// syncs and process starts more than it computes, so more builds than cores keep them busy).
fn jobs() -> usize {
    std::env::var("KILN_CONFORMANCE_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(4)
}

/// The cases listed in `testdata/conformance/known-differences` (first word of each line).
fn known_differences() -> Vec<String> {
    std::fs::read_to_string(corpus_dir().join("known-differences"))
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}
