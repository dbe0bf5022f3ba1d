//! The solver with a fake backend: which steps run, which hit the cache, what the config says.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use anyhow::Result;

use super::cache::LayerRef;
use super::context::BuildContext;
use super::imageconfig::ImageConfigFile;
use super::model::*;
use super::progress::{Mode, Progress};
use super::solver::*;

#[derive(Default)]
struct Fake {
    ran: Mutex<Vec<String>>,
}

impl Backend for Fake {
    fn base_image(&self, name: &str, _pull: bool) -> Result<BaseImage> {
        let mut config = ImageConfigFile::scratch();
        config.config.cmd = Some(vec!["sh".into()]);
        Ok(BaseImage {
            id: format!("id-{name}"),
            config,
            layers: vec![],
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
        let n = req.parent.len();
        Ok(Some(LayerRef {
            digest: format!("sha256:l{n}-{desc}"),
            diff_id: format!("sha256:d{n}-{desc}"),
            size: 1,
            media_type: "m".into(),
        }))
    }
    fn parse_trigger(&self, _trigger: &str) -> Result<Instr> {
        anyhow::bail!("no triggers here")
    }
}

fn instr(line: usize, original: &str, kind: InstrKind) -> Instr {
    Instr {
        line,
        original: original.into(),
        kind,
    }
}

fn run(cmd: &str) -> InstrKind {
    InstrKind::Run {
        command: CommandForm::Shell(cmd.into()),
        heredocs: vec![],
        mounts: vec![],
        network: None,
        security: None,
    }
}

fn copy(src: &str, dest: &str, from: Option<&str>) -> InstrKind {
    InstrKind::Copy(CopyArgs {
        sources: vec![src.into()],
        dest: dest.into(),
        from: from.map(str::to_string),
        ..Default::default()
    })
}

fn model() -> DockerfileModel {
    DockerfileModel {
        global_args: vec![("BASE".into(), Some("busybox".into()))],
        stages: vec![
            Stage {
                name: Some("a".into()),
                base: "$BASE".into(),
                platform: None,
                line: 2,
                instructions: vec![instr(3, "RUN make a", run("make a"))],
            },
            Stage {
                name: Some("unused".into()),
                base: "busybox".into(),
                platform: None,
                line: 4,
                instructions: vec![instr(5, "RUN never", run("never"))],
            },
            Stage {
                name: None,
                base: "busybox".into(),
                platform: None,
                line: 6,
                instructions: vec![
                    instr(
                        7,
                        "ARG VERSION=1",
                        InstrKind::Arg(vec![("VERSION".into(), Some("1".into()))]),
                    ),
                    instr(
                        8,
                        "ENV APP=/app",
                        InstrKind::Env(vec![("APP".into(), "/app".into())]),
                    ),
                    instr(9, "WORKDIR $APP", InstrKind::Workdir("$APP".into())),
                    instr(10, "COPY . .", copy(".", ".", None)),
                    instr(
                        11,
                        "COPY --from=a /out /out",
                        copy("/out", "/out", Some("a")),
                    ),
                    instr(12, "RUN make", run("make")),
                    instr(
                        13,
                        "ENTRYPOINT [\"app\"]",
                        InstrKind::Entrypoint(CommandForm::Exec(vec!["app".into()])),
                    ),
                    instr(
                        14,
                        "LABEL x=$VERSION",
                        InstrKind::Label(vec![("x".into(), "$VERSION".into())]),
                    ),
                ],
            },
        ],
    }
}

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
    model: DockerfileModel,
) -> Result<StageResult> {
    let request = BuildRequest {
        model,
        escape: '\\',
        place_id: "test".into(),
        build_args: args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        target: target.map(str::to_string),
        no_cache: false,
        no_cache_filter: vec![],
        pull: false,
        network: Network::Host,
        labels: BTreeMap::new(),
        secrets: HashMap::new(),
        source_date_epoch: Some(1000),
        max_parallelism: 2,
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
    let r = build(&env, &fake, &[], None, model()).unwrap();
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
    let again = build(&env, &fake, &[], None, model()).unwrap();
    assert!(take(&fake).is_empty());
    assert_eq!(again.config, r.config);

    // A changed file re-runs the COPY and what follows, not stage a.
    std::fs::write(env.ctx.join("app.js"), "2").unwrap();
    build(&env, &fake, &[], None, model()).unwrap();
    let ran = take(&fake);
    assert_eq!(ran.len(), 3, "{ran:?}");
    assert!(
        ran.iter()
            .any(|s| s == "run /bin/sh -c make" || s == "run make"),
        "{ran:?}"
    );

    // A changed build arg re-runs only the RUN that sees it.
    build(&env, &fake, &[("VERSION", "2")], None, model()).unwrap();
    assert_eq!(take(&fake), vec!["run make".to_string()]);
}

#[test]
fn target_and_failures() {
    let env = env();
    let fake = Arc::new(Fake::default());
    build(&env, &fake, &[], Some("a"), model()).unwrap();
    assert_eq!(take(&fake), vec!["run make a".to_string()]);
    let err = build(&env, &fake, &[], Some("zzz"), model()).unwrap_err();
    assert!(format!("{err:#}").contains("target stage \"zzz\" could not be found"));
    let mut m = model();
    m.stages[2]
        .instructions
        .push(instr(15, "RUN fail", run("fail")));
    let err = build(&env, &fake, &[], None, m).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("Dockerfile:15: RUN fail") && msg.contains("exited with 3"),
        "{msg}"
    );
    let mut m = model();
    m.stages[2]
        .instructions
        .insert(3, instr(10, "COPY missing /x", copy("missing", "/x", None)));
    let msg = format!("{:#}", build(&env, &fake, &[], None, m).unwrap_err());
    assert!(
        msg.contains("Dockerfile:10: COPY missing /x") && msg.contains("\"/missing\": not found"),
        "{msg}"
    );
}
