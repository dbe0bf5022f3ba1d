//! The solver with a fake backend: which steps run, which hit the cache, what the config says.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use anyhow::Result;

use crate::dockerfile::Spanned;
use crate::oci::config::ImageConfigFile;
use crate::solver::cache::LayerRef;
use crate::solver::progress::{Mode, Progress};
use crate::solver::*;
use crate::source::local::BuildContext;

#[derive(Default)]
struct Fake {
    ran: Mutex<Vec<String>>,
    ops: Mutex<Vec<Op>>,
}

impl Backend for Fake {
    fn base_image(
        &self,
        name: &str,
        _pull: bool,
        platform: &crate::platform::Platform,
    ) -> Result<BaseImage> {
        let mut config = ImageConfigFile::scratch();
        config.config.cmd = Some(vec!["sh".into()]);
        config.architecture = platform.architecture.clone();
        Ok(BaseImage {
            id: format!("id-{name}-{platform}"),
            config,
            layers: vec![],
            platform_mismatch: None,
        })
    }
    fn has_layer(&self, _layer: &LayerRef) -> bool {
        true
    }
    fn execute(&self, req: ExecRequest) -> Result<Option<LayerRef>> {
        let desc = match &req.op {
            Op::Run(r) => format!("run {}", r.argv.last().cloned().unwrap_or_default()),
            Op::Copy(c) => format!("copy {:?} {}", c.sources, c.dest),
            Op::Mkdir { path, .. } => format!("mkdir {path}"),
        };
        if desc.contains("fail") {
            anyhow::bail!("process exited with 3");
        }
        self.ran.lock().unwrap().push(desc.clone());
        self.ops.lock().unwrap().push(req.op.clone());
        let n = req.parent.len();
        Ok(Some(LayerRef {
            digest: format!("sha256:l{n}-{desc}"),
            diff_id: format!("sha256:d{n}-{desc}"),
            size: 1,
            media_type: "m".into(),
        }))
    }
    fn parse_trigger(&self, _trigger: &str) -> Result<Spanned> {
        anyhow::bail!("no triggers here")
    }
}

/// Line numbers matter: errors name them.
const DOCKERFILE: &str = "\
ARG BASE=busybox
FROM $BASE AS a
RUN make a
FROM busybox AS unused
RUN never
FROM busybox
ARG VERSION=1
ENV APP=/app
WORKDIR $APP
COPY . .
COPY --from=a /out /out
RUN make
ENTRYPOINT [\"app\"]
LABEL x=$VERSION
";

struct Env {
    _dir: tempfile::TempDir,
    ctx: std::path::PathBuf,
    db: Arc<Mutex<rusqlite::Connection>>,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let ctx = dir.path().join("ctx");
    std::fs::create_dir(&ctx).unwrap();
    std::fs::write(ctx.join("app.js"), "1").unwrap();
    let db = Arc::new(Mutex::new(
        rusqlite::Connection::open(dir.path().join("db")).unwrap(),
    ));
    Env { _dir: dir, ctx, db }
}

fn build(
    env: &Env,
    fake: &Arc<Fake>,
    args: &[(&str, &str)],
    target: Option<&str>,
    dockerfile: &str,
) -> Result<StageResult> {
    let build_args = args
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect::<BTreeMap<_, _>>();
    let request = BuildRequest {
        dockerfile_name: "Dockerfile".into(),
        stages: crate::dockerfile::load(dockerfile, "Dockerfile", &build_args)?,
        place_id: "test".into(),
        target: target.map(str::to_string),
        no_cache: false,
        no_cache_filter: vec![],
        pull: false,
        network: Network::Host,
        labels: BTreeMap::new(),
        secrets: HashMap::new(),
        source_date_epoch: Some(1000),
        max_parallelism: 2,
        remote: None,
        record_steps: true,
        named_contexts: Default::default(),
        allow_insecure: false,
        checks: Default::default(),
        ssh: Default::default(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let ctx = Arc::new(BuildContext::from_dir(env.ctx.clone()));
    let progress = Arc::new(Progress::new(Mode::Quiet, false));
    let backend: Arc<dyn Backend> = fake.clone();
    rt.block_on(solve(request, backend, ctx, progress, env.db.clone()))
}

fn take(fake: &Fake) -> Vec<String> {
    let mut v = std::mem::take(&mut *fake.ran.lock().unwrap());
    v.sort();
    v
}

#[test]
fn solves_reached_stages_and_caches() {
    let env = env();
    let fake = Arc::new(Fake::default());
    let r = build(&env, &fake, &[], None, DOCKERFILE).unwrap();
    let ran = take(&fake);
    assert_eq!(ran.len(), 5, "{ran:?}");
    assert!(
        !ran.iter().any(|s| s.contains("never")),
        "the unused stage ran: {ran:?}"
    );
    assert_eq!(r.layers.len(), 4);
    let c = &r.config.config;
    assert_eq!(c.working_dir.as_deref(), Some("/app"));
    assert_eq!(c.entrypoint, Some(vec!["app".to_string()]));
    assert_eq!(c.cmd, None, "ENTRYPOINT resets an inherited CMD");
    assert_eq!(c.labels.as_ref().unwrap()["x"], "1");
    assert!(c
        .env
        .as_ref()
        .unwrap()
        .iter()
        .any(|e| e.starts_with("PATH=")));
    let created_by: Vec<&str> = r
        .config
        .history
        .iter()
        .filter_map(|h| h.created_by.as_deref())
        .collect();
    assert!(
        created_by.contains(&"RUN |1 VERSION=1 /bin/sh -c make # buildkit"),
        "{created_by:?}"
    );
    assert_eq!(r.config.rootfs.diff_ids.len(), 4);

    // No-op rebuild: nothing runs, same config.
    let again = build(&env, &fake, &[], None, DOCKERFILE).unwrap();
    assert!(take(&fake).is_empty());
    assert_eq!(again.config, r.config);

    // A changed file re-runs the COPY and what follows, not stage a.
    std::fs::write(env.ctx.join("app.js"), "2").unwrap();
    build(&env, &fake, &[], None, DOCKERFILE).unwrap();
    let ran = take(&fake);
    assert_eq!(ran.len(), 3, "{ran:?}");
    assert!(
        ran.iter()
            .any(|s| s == "run /bin/sh -c make" || s == "run make"),
        "{ran:?}"
    );

    // A changed build arg re-runs only the RUN that sees it.
    build(&env, &fake, &[("VERSION", "2")], None, DOCKERFILE).unwrap();
    assert_eq!(take(&fake), vec!["run make".to_string()]);
}

#[test]
fn target_and_failures() {
    let env = env();
    let fake = Arc::new(Fake::default());
    build(&env, &fake, &[], Some("a"), DOCKERFILE).unwrap();
    assert_eq!(take(&fake), vec!["run make a".to_string()]);
    let err = build(&env, &fake, &[], Some("zzz"), DOCKERFILE).unwrap_err();
    assert!(format!("{err:#}").contains("target stage \"zzz\" could not be found"));
    let err = build(&env, &fake, &[], None, &format!("{DOCKERFILE}RUN fail\n")).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("Dockerfile:15: RUN fail") && msg.contains("exited with 3"),
        "{msg}"
    );
    let with_missing = DOCKERFILE.replace("COPY . .\n", "COPY missing /x\nCOPY . .\n");
    let msg = format!(
        "{:#}",
        build(&env, &fake, &[], None, &with_missing).unwrap_err()
    );
    assert!(
        msg.contains("Dockerfile:10: COPY missing /x") && msg.contains("\"/missing\": not found"),
        "{msg}"
    );
}

#[test]
fn words_are_expanded_by_the_front_end_rules() {
    let env = env();
    let fake = Arc::new(Fake::default());
    let dockerfile = "FROM busybox\nARG N=world\nARG T=/cache\nCOPY <<EOF <<'RAW' /d/\nhi $N \"q\"\nEOF\n$N\nRAW\nRUN --mount=type=cache,target=$T,id=c-$N echo $T\n";
    build(&env, &fake, &[], None, dockerfile).unwrap();
    let ops = std::mem::take(&mut *fake.ops.lock().unwrap());
    let [Op::Copy(copy), Op::Run(run)] = &ops[..] else {
        panic!("{ops:?}")
    };
    // Heredoc bodies: variables expanded unless the delimiter is quoted, quotes kept as text.
    assert!(copy.sources.is_empty(), "{:?}", copy.sources);
    assert_eq!(
        copy.heredocs,
        vec![
            ("EOF".to_string(), "hi world \"q\"\n".to_string()),
            ("RAW".to_string(), "$N\n".to_string())
        ]
    );
    // RUN text goes to the shell as written; mount options and the ARG environment are expanded.
    assert_eq!(run.argv.last().map(String::as_str), Some("echo $T"));
    assert!(run.env.contains(&"T=/cache".to_string()), "{:?}", run.env);
    let [RunMount::Cache { target, id, .. }] = &run.mounts[..] else {
        panic!("{:?}", run.mounts)
    };
    assert_eq!((target.as_str(), id.as_str()), ("/cache", "c-world"));
}

#[test]
fn long_instructions_are_quoted_short() {
    assert_eq!(super::shorten("RUN true"), "RUN true");
    let long = format!("RUN echo {}", "é".repeat(5000));
    let short = super::shorten(&long);
    assert!(short.chars().count() < 250, "{short}");
    assert!(short.starts_with("RUN echo éé"));
    assert!(short.ends_with("(4809 more characters)"), "{short}");
}

/// Two graphs of one multi-platform build share the steps whose keys are equal: the
/// `--platform=$BUILDPLATFORM` builder runs once, each platform's own RUN once per platform.
#[test]
fn graphs_of_a_multi_platform_build_share_equal_steps() {
    let env = env();
    let fake = Arc::new(Fake::default());
    let df = "FROM --platform=$BUILDPLATFORM busybox AS builder\nRUN make tool\n\
              FROM busybox\nARG TARGETARCH\nCOPY --from=builder /tool /tool\nRUN echo $TARGETARCH\n";
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let flights = Arc::new(Flights::default());
    let ctx = Arc::new(BuildContext::from_dir(env.ctx.clone()));
    let progress = Arc::new(Progress::new(Mode::Quiet, false));
    let results = rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for p in ["linux/amd64", "linux/arm64"] {
            let platform = crate::platform::Platform::parse(p).unwrap();
            let request = BuildRequest {
                dockerfile_name: "Dockerfile".into(),
                stages: crate::dockerfile::load_for(
                    df,
                    "Dockerfile",
                    &BTreeMap::new(),
                    &platform,
                    None,
                )
                .unwrap(),
                place_id: "test".into(),
                target: None,
                no_cache: true,
                no_cache_filter: vec![],
                pull: false,
                network: Network::Host,
                labels: BTreeMap::new(),
                secrets: HashMap::new(),
                source_date_epoch: Some(1000),
                max_parallelism: 2,
                remote: None,
                record_steps: true,
                named_contexts: Default::default(),
                allow_insecure: false,
                checks: Default::default(),
                ssh: Default::default(),
            };
            let backend: Arc<dyn Backend> = fake.clone();
            set.spawn(solve_shared(
                request,
                backend,
                ctx.clone(),
                progress.clone(),
                env.db.clone(),
                flights.clone(),
                Some(p.to_string()),
            ));
        }
        let mut out = Vec::new();
        while let Some(r) = set.join_next().await {
            out.push(r.unwrap().unwrap());
        }
        out
    });
    let ran = take(&fake);
    assert_eq!(
        ran.iter().filter(|r| *r == "run make tool").count(),
        1,
        "{ran:?}"
    );
    assert_eq!(
        ran.iter().filter(|r| *r == "run echo $TARGETARCH").count(),
        2,
        "{ran:?}"
    );
    let mut archs: Vec<String> = results
        .iter()
        .map(|r| r.config.architecture.clone())
        .collect();
    archs.sort();
    assert_eq!(archs, vec!["amd64", "arm64"]);
    // The RUN of each platform is told which platform it runs for.
    let ops = fake.ops.lock().unwrap();
    let platforms: Vec<String> = ops
        .iter()
        .filter_map(|o| match o {
            Op::Run(r) => Some(r.platform.to_string()),
            _ => None,
        })
        .collect();
    assert!(
        platforms.contains(&"linux/arm64".to_string()),
        "{platforms:?}"
    );
}
