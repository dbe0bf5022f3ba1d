//! The registry API the build engine calls: pushing an image kiln committed itself, and
//! `ensure_image` (FROM) with both pull policies, noticing when a tag moves.

mod common;
mod registry_support;

use std::io::Write;

use kiln::reference::Reference;
use kiln::registry::{
    self, config::RegistryConfig, local::open_store, Platform, PullPolicy, PushOptions,
    RegistryContext, RepoRef,
};
use oci_spec::image::{
    ConfigBuilder, Descriptor, ImageConfigurationBuilder, MediaType, RootFsBuilder,
};
use registry_support::*;

fn ctx(root: &std::path::Path) -> RegistryContext {
    RegistryContext {
        root: root.to_path_buf(),
        config: RegistryConfig::default(),
        quiet: true,
    }
}

#[test]
fn registry_push_committed_busybox_then_ensure_image_follows_tag() {
    let reg = Registry::start(AuthMode::None);
    let name = format!("{}/busybox:1", reg.host());
    let root = common::temp_root();
    let store = open_store(root.path()).unwrap();

    // An image as the build engine commits it: busybox as one gzip layer.
    let tar = std::fs::read(common::busybox_tar()).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let gz = gz.finish().unwrap();
    let blob = store.put_blob_bytes(&gz).unwrap();
    let config = ImageConfigurationBuilder::default()
        .architecture("amd64")
        .os("linux")
        .config(
            ConfigBuilder::default()
                .cmd(vec!["/bin/sh".to_string()])
                .build()
                .unwrap(),
        )
        .rootfs(
            RootFsBuilder::default()
                .typ("layers")
                .diff_ids(vec![sha256(&tar)])
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let layer = Descriptor::new(
        MediaType::ImageLayerGzip,
        blob.size,
        blob.digest.parse::<oci_spec::image::Digest>().unwrap(),
    );
    let committed = store
        .commit_image(&config, &[layer], &[Reference::parse(&name).unwrap()])
        .unwrap();

    let dest = RepoRef::parse(&name).unwrap();
    let pushed = registry::push(
        &ctx(root.path()),
        &store,
        &name,
        &dest,
        &PushOptions::default(),
    )
    .unwrap();
    assert_eq!(pushed.manifest_digest, committed.manifest_digest);
    let (digest, config_bytes) = skopeo_inspect(&reg, "busybox:1");
    assert_eq!(digest, committed.manifest_digest);
    assert_eq!(sha256(&config_bytes), committed.config_digest);

    // FROM in another root: pulled once, then served locally.
    let root2 = common::temp_root();
    let store2 = open_store(root2.path()).unwrap();
    let c2 = ctx(root2.path());
    let amd64 = Platform::linux_amd64();
    let first = registry::ensure_image(&c2, &store2, &dest, PullPolicy::Missing, &amd64).unwrap();
    assert!(first.pulled);
    assert_eq!(first.manifest_digest, committed.manifest_digest);
    assert_eq!(
        first.resolved_digest.as_deref(),
        Some(committed.manifest_digest.as_str())
    );
    let again = registry::ensure_image(&c2, &store2, &dest, PullPolicy::Missing, &amd64).unwrap();
    assert!(!again.pulled);
    assert_eq!(again.resolved_digest, first.resolved_digest);
    let listed = store2
        .image(&Reference::parse(&name).unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(listed.config_digest, committed.config_digest);

    // The tag moves: Missing keeps the local image, Always (`--pull`) sees the new digest.
    let fx = Fixture::image(4242, &[2000]);
    fx.push_with_skopeo(&reg, "busybox:1");
    let stale = registry::ensure_image(&c2, &store2, &dest, PullPolicy::Missing, &amd64).unwrap();
    assert!(!stale.pulled);
    assert_eq!(stale.manifest_digest, committed.manifest_digest);
    let fresh = registry::ensure_image(&c2, &store2, &dest, PullPolicy::Always, &amd64).unwrap();
    assert!(fresh.pulled);
    assert_eq!(fresh.manifest_digest, fx.manifest_digests[0]);
    assert_eq!(
        fresh.resolved_digest.as_deref(),
        Some(fx.top_digest.as_str())
    );
    assert_ne!(fresh.resolved_digest, first.resolved_digest);

    // Pinned by digest: never asks the registry again once present.
    let pinned = RepoRef::parse(&format!(
        "{}/busybox@{}",
        reg.host(),
        committed.manifest_digest
    ))
    .unwrap();
    let p = registry::ensure_image(&c2, &store2, &pinned, PullPolicy::Always, &amd64).unwrap();
    assert!(p.pulled, "the pinned name is new to this store");
    let p = registry::ensure_image(&c2, &store2, &pinned, PullPolicy::Always, &amd64).unwrap();
    assert!(!p.pulled);
    assert_eq!(p.manifest_digest, committed.manifest_digest);
    assert_store_clean(root2.path());
}
