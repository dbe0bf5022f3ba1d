#!/usr/bin/env python3
"""listing.py IMAGE.tar BASE.tar [MTIME_PATH...]: the expected-result listing of a docker-save
archive (`docker save` of the built image), relative to BASE.tar (a docker-save archive of the
base image, busybox:latest). Used by record.sh; tests/conformance_corpus.rs computes the same
listing for kiln's image. The format (one fact a line, sorted within each section):

  config <Field> <json>        a config field a Dockerfile controls, when set (null and "" = unset)
  author <json>                when set
  history <json created_by> [empty|nochange]   each history entry after the base image's own
                               (nochange: its layer is empty; kiln writes none, an empty_layer)
  fs <path> <type> <mode> <uid>:<gid> [<size> <sha256>] [-> <target>] [xattr <k>=<v>]... [mtime <s>]
                               each path of the flattened filesystem that is not exactly as in the
                               base (directories: no size); mtime only for MTIME_PATH prefixes
  fs <path> absent             a base path the image lacks (only the topmost one)
"""
import hashlib, json, sys, tarfile

FIELDS = ["Env", "Cmd", "Entrypoint", "WorkingDir", "User", "ExposedPorts", "Volumes",
          "Labels", "StopSignal", "Healthcheck", "OnBuild", "Shell"]


def load(path, mtimes=()):
    t = tarfile.open(path)
    manifest = json.load(t.extractfile("manifest.json"))[0]
    config = json.load(t.extractfile(manifest["Config"]))
    fs = {"/": ("dir", 0o755, 0, 0, None, None, None, (), 0)}
    empty = []
    for layer in manifest["Layers"]:
        empty.append(not apply(fs, tarfile.open(fileobj=t.extractfile(layer)), mtimes))
    # A step that changed nothing (BuildKit still writes a layer, empty or with entries exactly as
    # they were but for mtimes, such as /etc after a RUN).
    layers = iter(empty)
    for h in config.get("history") or []:
        if not h.get("empty_layer") and next(layers, False):
            h["nochange"] = True
    return config, fs


def norm(name):
    while name.startswith("./"):
        name = name[2:]
    name = name.lstrip("/")
    if name == ".":
        name = ""
    while name.endswith("/"):
        name = name[:-1]
    return "/" + name if name else "/"


def parent(p):
    return p.rsplit("/", 1)[0] or "/"


def remove_tree(fs, p, keep_self=False):
    prefix = p.rstrip("/") + "/"
    for k in [k for k in fs if k.startswith(prefix) and k != "/"]:
        del fs[k]
    if not keep_self and p in fs:
        del fs[p]


def apply(fs, layer, mtimes=()):
    """Applies a layer; whether it changed anything but mtimes."""
    changed = False
    for m in layer:
        p = norm(m.name)
        base = p.rsplit("/", 1)[1]
        # implicit parents, as an extraction would create them
        q, missing = parent(p), []
        while q not in fs:
            missing.append(q)
            q = parent(q)
        for q in missing:
            fs[q] = ("dir", 0o755, 0, 0, None, None, None, (), 0)
        if missing:
            changed = True
        if base == ".wh..wh..opq":
            changed = True
            remove_tree(fs, parent(p), keep_self=True)
            continue
        if base.startswith(".wh."):
            changed = True
            remove_tree(fs, parent(p).rstrip("/") + "/" + base[4:] if parent(p) != "/" else "/" + base[4:])
            continue
        xattrs = tuple(sorted((k[len("SCHILY.xattr."):], v) for k, v in m.pax_headers.items()
                              if k.startswith("SCHILY.xattr.")))
        old = fs.get(p)
        if old is not None and not (old[0] == "dir" and m.isdir()):
            remove_tree(fs, p)
        if m.isdir():
            entry = ("dir", m.mode, m.uid, m.gid, None, None, None, xattrs, int(m.mtime))
        elif m.issym():
            entry = ("symlink", m.mode, m.uid, m.gid, None, None, m.linkname, xattrs, int(m.mtime))
        elif m.islnk():
            target = fs[norm(m.linkname)]
            entry = target[:1] + (m.mode, m.uid, m.gid) + target[4:7] + (xattrs, int(m.mtime))
        elif m.isreg():
            data = layer.extractfile(m).read()
            entry = ("file", m.mode, m.uid, m.gid, len(data), hashlib.sha256(data).hexdigest(),
                     None, xattrs, int(m.mtime))
        elif m.isfifo():
            entry = ("fifo", m.mode, m.uid, m.gid, None, None, None, xattrs, int(m.mtime))
        elif m.ischr() or m.isblk():
            kind = "char" if m.ischr() else "block"
            entry = (kind, m.mode, m.uid, m.gid, None, None, "%d,%d" % (m.devmajor, m.devminor),
                     xattrs, int(m.mtime))
        else:
            continue
        if old is None or old[:8] != entry[:8] or (in_mtimes(p, mtimes) and old[8] != entry[8]):
            changed = True
        fs[p] = entry
    return changed


def in_mtimes(p, mtimes):
    return any(p == m or p.startswith(m.rstrip("/") + "/") for m in mtimes)


def line(p, e, mtimes):
    kind, mode, uid, gid, size, sha, link, xattrs, mtime = e
    s = "fs %s %s %04o %d:%d" % (json.dumps(p), kind, mode & 0o7777, uid, gid)
    if size is not None:
        s += " %d %s" % (size, sha)
    if link is not None:
        s += " -> %s" % json.dumps(link)
    for k, v in xattrs:
        s += " xattr %s=%s" % (k, json.dumps(v))
    if in_mtimes(p, mtimes):
        s += " mtime %d" % mtime
    return s


def listing(image, base, mtimes):
    config, fs = load(image, mtimes)
    bconfig, bfs = load(base)
    out = []
    c = config.get("config") or {}
    for f in FIELDS:
        if c.get(f) not in (None, ""):
            out.append("config %s %s" % (f, json.dumps(c[f], sort_keys=True, separators=(",", ":"))))
    if config.get("author"):
        out.append("author %s" % json.dumps(config["author"]))
    hist, bhist = config.get("history") or [], bconfig.get("history") or []
    if hist[:len(bhist)] == bhist:
        hist = hist[len(bhist):]
    for h in hist:
        out.append("history %s%s" % (json.dumps(h.get("created_by", "")),
                                     " empty" if h.get("empty_layer") else
                                     " nochange" if h.get("nochange") else ""))
    key = lambda e: e[:8]
    for p in sorted(fs):
        if p in bfs and key(bfs[p]) == key(fs[p]) and not in_mtimes(p, mtimes):
            continue
        out.append(line(p, fs[p], mtimes))
    for p in sorted(bfs):
        if p not in fs and parent(p) in fs:
            out.append("fs %s absent" % json.dumps(p))
    return out


if __name__ == "__main__":
    print("\n".join(listing(sys.argv[1], sys.argv[2], sys.argv[3:])))
