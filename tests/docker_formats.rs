//! `--format` and `inspect -f` as a docker user types them. Each expected string is what Docker
//! 28.5 printed for the same template on the same image (recorded with docker-ref on busybox and
//! the Dockerfile below); fields that differ by nature (IDs, sizes, times) are left out.

mod common;

use std::path::Path;

const DOCKERFILE: &str = "FROM busybox\nLABEL k=v other=\"a b\"\nENV FOO=bar\n\
EXPOSE 8080/tcp 53/udp\nVOLUME /data\nWORKDIR /app\nENTRYPOINT [\"sh\", \"-c\"]\nCMD [\"echo hi\"]\n";

fn root_with_image() -> tempfile::TempDir {
    common::require_root();
    let root = common::temp_root();
    let tar = common::busybox_tar();
    common::kiln_ok(
        root.path(),
        &["import", "-q", tar.to_str().unwrap(), "busybox:latest"],
    );
    let ctx = root.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("Dockerfile"), DOCKERFILE).unwrap();
    common::kiln_ok(
        root.path(),
        &["build", "-q", "-t", "tplref:1", ctx.to_str().unwrap()],
    );
    root
}

fn fmt(root: &Path, args: &[&str]) -> String {
    common::kiln_ok(root, args)
}

#[test]
fn inspect_templates_print_what_docker_prints() {
    let root = root_with_image();
    let r = root.path();
    let inspect = |t: &str| fmt(r, &["image", "inspect", "-f", t, "tplref:1"]);
    assert_eq!(
        inspect(r#"{{.Config.Cmd}}|{{json .Config.Cmd}}|{{.Config.Entrypoint}}|{{.Config.Labels}}|{{index .Config.Labels "k"}}|{{.Config.Env}}|{{.Config.ExposedPorts}}|{{.Config.Volumes}}|{{.Config.WorkingDir}}|{{json .Config.Labels}}|{{.RepoTags}}|{{len .Config.Env}}"#),
        "[echo hi]|[\"echo hi\"]|[sh -c]|map[k:v other:a b]|v|[PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin FOO=bar]|map[53/udp:{} 8080/tcp:{}]|map[/data:{}]|/app|{\"k\":\"v\",\"other\":\"a b\"}|[tplref:1]|2\n"
    );
    assert_eq!(
        inspect(r#"{{range $k, $v := .Config.Labels}}{{$k}}={{$v}};{{end}}|{{range $i, $e := .Config.Env}}{{$i}}:{{$e}} {{end}}|{{with .Config.User}}user{{else}}nouser{{end}}|{{if eq .Os "linux"}}L{{end}}|{{if and .Config.Cmd (not .Config.User)}}yes{{end}}|{{printf "%s-%d-%v-%q" .Os 7 .Config.Cmd .Os}}|{{.Config.Cmd | json}}|{{(index .Config.Cmd 0) | upper}}"#),
        "k=v;other=a b;|0:PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin 1:FOO=bar |nouser|L|yes|linux-7-[echo hi]-\"linux\"|[\"echo hi\"]|ECHO HI\n"
    );
    assert_eq!(
        inspect(
            r#"{{println .Os}}{{print .Os 1 2 "a" "b"}}{{- " trimmed" -}}  {{/* c */}}|{{$x := "v"}}{{$x}}|{{split "a,b,c" ","}}|{{len "abc"}}|{{index .Config.ExposedPorts "8080/tcp"}}|{{.Config.Healthcheck}}|{{.Config.OnBuild}}"#
        ),
        "linux\nlinux1 2ab trimmed|v|[a b c]|3|{}|<nil>|[]\n"
    );
    // A field docker's document lacks: an error naming it, exit 1 (docker: `map has no entry
    // for key "Nope"`).
    let out = common::kiln(r, &["inspect", "-f", "{{.Nope}}", "tplref:1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("map has no entry for key \"Nope\""));
}

#[test]
fn listing_templates_and_table_headers() {
    let root = root_with_image();
    let r = root.path();
    assert_eq!(
        fmt(
            r,
            &["images", "--format", "{{.Repository}}:{{.Tag}}", "tplref"]
        ),
        "tplref:1\n"
    );
    // docker: `REPOSITORY|REPOSITORY|TAG|hello world|  TAG   |IMAGE ID|REPOSITORY` as header.
    let out = fmt(
        r,
        &[
            "images",
            "--format",
            r#"table {{.Repository}}|{{lower .Repository}}|{{upper .Tag}}|{{title "hello world"}}|{{pad .Tag 2 3}}|{{truncate .Repository 3}}|{{join (split .Repository "e") ","}}"#,
            "tplref",
        ],
    );
    assert_eq!(
        out,
        "REPOSITORY|REPOSITORY|TAG|hello world|  TAG   |REPOSITORY|REPOSITORY\n\
         tplref|tplref|1|Hello World|  1   |tpl|tplr,f\n"
    );
    // Padded as docker's tabwriter: `REPOSITORY   TAG` over `tplref       1`.
    assert_eq!(
        fmt(
            r,
            &[
                "image",
                "ls",
                "--format",
                r"table {{.Repository}}\t{{.Tag}}",
                "tplref"
            ]
        ),
        "REPOSITORY   TAG\ntplref       1\n"
    );
    let history = fmt(
        r,
        &[
            "history",
            "--format",
            r"table {{.CreatedBy}}\t{{.Size}}",
            "tplref:1",
        ],
    );
    let lines: Vec<&str> = history.lines().collect();
    assert!(
        lines[0].starts_with("CREATED BY   ") && lines[0].ends_with("SIZE"),
        "{history}"
    );
    assert!(lines[1].starts_with("CMD [\"echo hi\"]"), "{history}");
    let json = fmt(r, &["images", "--format", "{{json .}}", "tplref"]);
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(v["Repository"], "tplref");
    assert_eq!(v["Tag"], "1");
    assert!(
        json.contains("\\u003cnone\\u003e"),
        "docker escapes <none> in {{json .}}: {json}"
    );
    assert!(fmt(r, &["version", "--format", "{{json .Client.Os}}"]) == "\"linux\"\n");
    assert_eq!(fmt(r, &["info", "--format", "{{.Images}}"]), "2\n");
    let bad = common::kiln(r, &["images", "--format", "{{.Repository"]);
    assert_eq!(bad.status.code(), Some(1));
}

#[test]
fn container_templates() {
    let root = root_with_image();
    let r = root.path();
    common::kiln_ok(
        r,
        &[
            "run",
            "--name",
            "tplps",
            "--network",
            "none",
            "-v",
            "tplvol:/v",
            "busybox",
            "true",
        ],
    );
    // docker (for a `sleep 300` container it prints the same columns).
    assert_eq!(
        fmt(r, &["ps", "-a", "--format", r"table {{.Names}}\t{{.Image}}\t{{.Command}}\t{{.Ports}}\t{{.State}}"]),
        "NAMES     IMAGE     COMMAND   PORTS     STATE\ntplps     busybox   \"true\"              exited\n"
    );
    assert_eq!(
        fmt(
            r,
            &[
                "container",
                "ls",
                "-a",
                "--format",
                "{{.Names}} {{.Mounts}} {{.LocalVolumes}} {{.Networks}}"
            ]
        ),
        "tplps tplvol 1 none\n"
    );
    assert_eq!(
        fmt(
            r,
            &[
                "volume",
                "ls",
                "--format",
                r"table {{.Name}}\t{{.Driver}}\t{{.Scope}}"
            ]
        ),
        "VOLUME NAME   DRIVER    SCOPE\ntplvol        local     local\n"
    );
    // docker: `running|[sleep 300]|/tplps|none|tplvol:/v|sleep [300]` for its `sleep 300`.
    assert_eq!(
        fmt(r, &["inspect", "-f", "{{.State.Status}}|{{.Config.Cmd}}|{{.Name}}|{{.HostConfig.NetworkMode}}|{{range .Mounts}}{{.Name}}:{{.Destination}}{{end}}|{{.Path}} {{.Args}}", "tplps"]),
        "exited|[true]|/tplps|none|tplvol:/v|true []\n"
    );
}

/// `{{json .X}}` and `inspect`'s document in docker's field order and indentation, where
/// serde_json would sort the keys (testdata/docker/inspect-json-order.txt).
#[test]
fn json_comes_in_dockers_field_order() {
    let root = root_with_image();
    let r = root.path();
    // Docker 28.5's line, `"ArgsEscaped":true` (set by every CMD) last.
    assert_eq!(
        fmt(r, &["inspect", "-f", "{{json .Config}}", "tplref:1"]),
        "{\"ExposedPorts\":{\"53/udp\":{},\"8080/tcp\":{}},\"Env\":[\"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\",\"FOO=bar\"],\"Entrypoint\":[\"sh\",\"-c\"],\"Cmd\":[\"echo hi\"],\"Volumes\":{\"/data\":{}},\"WorkingDir\":\"/app\",\"Labels\":{\"k\":\"v\",\"other\":\"a b\"},\"ArgsEscaped\":true}\n"
    );
    let doc = fmt(r, &["inspect", "tplref:1"]);
    assert!(
        doc.starts_with("[\n    {\n        \"Id\": \"sha256:"),
        "{doc}"
    );
    // The document's keys in docker's order (GraphDriver: kiln has none), kiln's after.
    let keys: Vec<&str> = doc
        .lines()
        .filter(|l| l.starts_with("        \"") && !l.starts_with("         "))
        .map(|l| l.trim().split('"').nth(1).unwrap())
        .collect();
    assert_eq!(
        keys.join(" "),
        "Id RepoTags RepoDigests Parent Comment Created DockerVersion Author Architecture Os \
         Size RootFS Metadata Config ManifestDigest Manifest ImageConfig"
    );
    // Its Config as the daemon sends it: sorted, with the legacy fields docker fills in.
    let parsed: serde_json::Value = serde_json::from_str(&doc).unwrap();
    let config = &parsed[0]["Config"];
    assert_eq!(config["OnBuild"], serde_json::Value::Null);
    assert_eq!(config["User"], "");
    assert!(doc.contains(
        "        \"Config\": {\n            \"ArgsEscaped\": true,\n            \"Cmd\": [\n                \"echo hi\"\n            ],\n            \"Entrypoint\": ["
    ));

    common::kiln_ok(
        r,
        &[
            "run",
            "--name",
            "c1",
            "--network",
            "none",
            "-e",
            "A=1",
            "tplref:1",
            "true",
        ],
    );
    let state = fmt(r, &["container", "inspect", "-f", "{{json .State}}", "c1"]);
    assert!(
        state.starts_with(
            "{\"Status\":\"exited\",\"Running\":false,\"Paused\":false,\"Restarting\":false,\
             \"OOMKilled\":false,\"Dead\":false,\"Pid\":0,\"ExitCode\":0,\"Error\":\"\",\"StartedAt\":"
        ),
        "{state}"
    );
    let config = fmt(r, &["inspect", "-f", "{{json .Config}}", "c1"]);
    let keys: Vec<String> = {
        let v: serde_json::Value = serde_json::from_str(&config).unwrap();
        let order: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        // serde_json sorts on parse: take the order from the text instead.
        let mut found: Vec<(usize, String)> = order
            .into_iter()
            .map(|k| (config.find(&format!("\"{k}\":")).unwrap(), k))
            .collect();
        found.sort();
        found.into_iter().map(|(_, k)| k).collect()
    };
    // docker's container.Config order, for the fields kiln has.
    assert_eq!(
        keys.join(" "),
        "Hostname User ExposedPorts Tty OpenStdin Env Cmd Image WorkingDir Entrypoint Labels StopSignal"
    );
    let doc = fmt(r, &["container", "inspect", "c1"]);
    assert!(doc.starts_with("[\n    {\n        \"Id\": \""), "{doc}");
}

/// `inspect --raw` gives the OCI documents as stored; `Comment` is the last step's, as
/// docker's (`buildkit.dockerfile.v0`); ps's Labels column lists the image's labels (docker:
/// `a=b,k=v` for a container of an image with LABEL a=b run with --label k=v).
#[test]
fn raw_documents_comment_and_ps_labels() {
    let root = root_with_image();
    let r = root.path();
    let raw: serde_json::Value =
        serde_json::from_str(&fmt(r, &["inspect", "--raw", "tplref:1"])).unwrap();
    let doc = &raw[0];
    let id = fmt(r, &["inspect", "-f", "{{.Id}}", "tplref:1"]);
    assert_eq!(doc["ConfigDigest"].as_str().unwrap(), id.trim());
    assert_eq!(doc["Manifest"]["config"]["digest"], doc["ConfigDigest"]);
    assert_eq!(
        doc["Config"]["config"]["Cmd"],
        serde_json::json!(["echo hi"])
    );
    let manifest_digest = doc["ManifestDigest"].as_str().unwrap();
    assert!(manifest_digest.starts_with("sha256:"));
    assert_eq!(
        fmt(r, &["inspect", "-f", "{{.Comment}}", "tplref:1"]),
        "buildkit.dockerfile.v0\n"
    );
    common::kiln_ok(
        r,
        &["run", "--name", "lab", "--network", "none", "tplref:1"],
    );
    assert_eq!(
        fmt(r, &["ps", "-a", "--format", "{{.Names}} {{.Labels}}"]),
        "lab k=v,other=a b\n"
    );
}
