//! store: blobs, the database helpers, images by name, removal and garbage collection.

use std::fs;
use std::sync::Arc;

use kiln::digest::sha256_digest;
use kiln::oci::compress::Compression;
use kiln::reference::Reference;
use kiln::store::Store;
use oci_spec::image::{
    ConfigBuilder, Descriptor, ImageConfiguration, ImageConfigurationBuilder, MediaType,
    RootFsBuilder,
};

fn temp_root() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("kiln-store-test.")
        .tempdir()
        .unwrap()
}

fn layer(store: &Store, content: &[u8]) -> (Descriptor, String) {
    let mut w =
        kiln::oci::compress::Compressor::new(store.blob_writer().unwrap(), Compression::Gzip)
            .unwrap();
    std::io::Write::write_all(&mut w, content).unwrap();
    let (bw, d) = w.finish().unwrap();
    let blob = bw.commit(Some(&d.digest)).unwrap();
    (
        Descriptor::new(
            MediaType::ImageLayerGzip,
            blob.size,
            blob.digest.parse::<oci_spec::image::Digest>().unwrap(),
        ),
        d.diff_id,
    )
}

fn config(diff_ids: Vec<String>, cmd: &str) -> ImageConfiguration {
    ImageConfigurationBuilder::default()
        .architecture("amd64")
        .os("linux")
        .created("2024-01-02T03:04:05Z")
        .config(
            ConfigBuilder::default()
                .cmd(vec![cmd.to_string()])
                .build()
                .unwrap(),
        )
        .rootfs(
            RootFsBuilder::default()
                .typ("layers")
                .diff_ids(diff_ids)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap()
}

#[test]
fn blobs_are_verified_and_content_addressed() {
    let root = temp_root();
    let store = Store::open(root.path()).unwrap();
    let blob = store.put_blob_bytes(b"hello").unwrap();
    assert_eq!(blob.digest, sha256_digest(b"hello"));
    assert!(store.has_blob(&blob.digest));
    assert_eq!(store.read_blob(&blob.digest).unwrap(), b"hello");
    // Same content again: fine.
    store.put_blob(&b"hello"[..], Some(&blob.digest)).unwrap();
    // Wrong expected digest: error, nothing stored, nothing left in tmp.
    let wrong = sha256_digest(b"other");
    let err = store.put_blob(&b"not other"[..], Some(&wrong)).unwrap_err();
    assert!(format!("{err:#}").contains("does not match"), "{err:#}");
    assert!(!store.has_blob(&wrong));
    assert!(!store.has_blob(&sha256_digest(b"not other")));
    assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
    assert!(store.blob_path("sha256:../../etc/passwd").is_err());
    assert!(store.open_blob(&sha256_digest(b"missing")).is_err());
}

#[test]
fn stale_tmp_files_are_removed_at_open_when_alone() {
    let root = temp_root();
    drop(Store::open(root.path()).unwrap());
    fs::write(root.path().join("tmp/blob.stale"), b"x").unwrap();
    fs::create_dir(root.path().join("tmp/dir.stale")).unwrap();
    let store = Store::open(root.path()).unwrap();
    assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
    // While that store is open, another opener must not delete its fresh temp files.
    fs::write(root.path().join("tmp/live"), b"x").unwrap();
    let _second = Store::open(root.path()).unwrap();
    assert!(root.path().join("tmp/live").exists());
}

#[test]
fn modules_migrate_their_own_tables() {
    let root = temp_root();
    let store = Store::open(root.path()).unwrap();
    let v1 = ["CREATE TABLE cache_test (k TEXT PRIMARY KEY, v TEXT)"];
    store.migrate("cachetest", &v1).unwrap();
    store.migrate("cachetest", &v1).unwrap();
    let v2 = [v1[0], "ALTER TABLE cache_test ADD COLUMN extra INTEGER"];
    store.migrate("cachetest", &v2).unwrap();
    store
        .transaction(|tx| {
            tx.execute(
                "INSERT INTO cache_test (k, v, extra) VALUES ('a', 'b', 1)",
                [],
            )?;
            Ok(())
        })
        .unwrap();
    // A failing transaction rolls back.
    let _: anyhow::Result<()> = store.transaction(|tx| {
        tx.execute("INSERT INTO cache_test (k, v) VALUES ('c', 'd')", [])?;
        anyhow::bail!("boom")
    });
    let n: i64 = store
        .with_conn(|c| Ok(c.query_row("SELECT COUNT(*) FROM cache_test", [], |r| r.get(0))?))
        .unwrap();
    assert_eq!(n, 1);
    assert!(
        store.migrate("cachetest", &v1).is_err(),
        "a newer schema must be refused"
    );
}

#[test]
fn images_commit_resolve_tag_and_remove_with_gc() {
    let root = temp_root();
    let store = Store::open(root.path()).unwrap();
    let (shared, shared_id) = layer(&store, b"shared layer");
    let (own, own_id) = layer(&store, b"own layer");
    let a = store
        .commit_image(
            &config(vec![shared_id.clone(), own_id.clone()], "a"),
            &[shared.clone(), own.clone()],
            &[Reference::parse("a").unwrap()],
        )
        .unwrap();
    let b = store
        .commit_image(
            &config(vec![shared_id.clone()], "b"),
            std::slice::from_ref(&shared),
            &[Reference::parse("localhost:5000/b:1").unwrap()],
        )
        .unwrap();
    let rec = store.resolve("a:latest").unwrap();
    assert_eq!(rec.manifest_digest, a.manifest_digest);
    assert_eq!(rec.created, 1704164645);
    assert_eq!(
        store
            .resolve(&a.config_digest[7..19])
            .unwrap()
            .manifest_digest,
        a.manifest_digest
    );
    assert_eq!(
        store.resolve(&b.manifest_digest).unwrap().manifest_digest,
        b.manifest_digest
    );
    assert_eq!(
        store.layer_by_diff_id(&own_id).unwrap().unwrap().digest,
        own.digest().to_string()
    );
    assert_eq!(
        store
            .config(&a.config_digest)
            .unwrap()
            .config()
            .as_ref()
            .unwrap()
            .cmd()
            .as_ref()
            .unwrap()[0],
        "a"
    );

    store.tag("a", &Reference::parse("a:v2").unwrap()).unwrap();
    let listed = store.list_images().unwrap();
    assert_eq!(listed.len(), 3);
    // An ID shared by two names needs -f.
    assert!(store.remove_image(&a.config_digest, false).is_err());
    assert_eq!(
        store.remove_image("a:v2", false).unwrap(),
        vec!["Untagged: a:v2"]
    );
    assert!(store.has_blob(own.digest().as_ref()));

    store
        .add_image_use(&a.manifest_digest, "container1")
        .unwrap();
    assert!(format!("{:#}", store.remove_image("a", false).unwrap_err()).contains("container1"));
    store.remove_image_uses("container1").unwrap();
    let report = store.remove_image("a", false).unwrap();
    assert!(
        report.contains(&format!("Deleted: {}", a.manifest_digest)),
        "{report:?}"
    );
    assert!(
        !store.has_blob(own.digest().as_ref()),
        "unshared layer collected"
    );
    assert!(!store.has_blob(&a.config_digest));
    assert!(
        store.has_blob(shared.digest().as_ref()),
        "layer shared with b kept"
    );
    assert!(store.resolve("a").is_err());
    assert_eq!(
        store.resolve("localhost:5000/b:1").unwrap().manifest_digest,
        b.manifest_digest
    );
}

#[test]
fn concurrent_stores_on_one_root_all_succeed() {
    let root = temp_root();
    let path = Arc::new(root.path().to_path_buf());
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let path = Arc::clone(&path);
            std::thread::spawn(move || {
                let store = Store::open(&path).unwrap();
                for j in 0..10 {
                    let (l, id) = layer(&store, format!("layer {i} {j}").as_bytes());
                    store
                        .commit_image(
                            &config(vec![id], "x"),
                            &[l],
                            &[Reference::parse(&format!("img{i}:{j}")).unwrap()],
                        )
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let store = Store::open(root.path()).unwrap();
    assert_eq!(store.list_images().unwrap().len(), 40);
}

#[test]
fn store_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Store>();
}

/// A layer kept unpacked as a build keeps it: its directory under `snapshots/layers/`, its entry
/// list as a blob, the store's record. Returns its DiffID.
fn unpacked_layer(store: &Store, file: &str, content: &str) -> String {
    use kiln::oci::change::Change;
    let tmp = tempfile::tempdir_in(store.root()).unwrap();
    fs::write(tmp.path().join(file), content).unwrap();
    let changes = vec![Change::Upsert(file.into())];
    let mut h = kiln::oci::compress::DiffIdWriter::new();
    kiln::oci::layer::write_layer(tmp.path(), &changes, &mut h, &Default::default()).unwrap();
    let (diff_id, size) = h.finish().unwrap();
    let dir = store.unpacked_layer_path(&diff_id).unwrap();
    fs::create_dir_all(dir.parent().unwrap()).unwrap();
    fs::rename(tmp.keep(), &dir).unwrap();
    let list = store
        .put_blob_bytes(&kiln::snapshot::built::encode_changes(&changes))
        .unwrap();
    store
        .record_unpacked_layer(&kiln::store::UnpackedLayerRecord {
            diff_id: diff_id.clone(),
            size,
            changes: list.digest,
            source_date_epoch: None,
        })
        .unwrap();
    diff_id
}

#[test]
fn unpacked_layers_are_exported_once_and_collected_with_their_image() {
    let root = temp_root();
    let store = Store::open(root.path()).unwrap();
    let kept = unpacked_layer(&store, "kept", "pinned\n");
    let gone = unpacked_layer(&store, "gone", "collected\n");
    store.pin_blob("build-cache", &kept).unwrap();
    let desc = |d: &str| {
        let size = store.unpacked_layer(d).unwrap().unwrap().size;
        Descriptor::new(
            MediaType::ImageLayer,
            size,
            d.parse::<oci_spec::image::Digest>().unwrap(),
        )
    };
    let name = Reference::parse("lazy:1").unwrap();
    let image = store
        .commit_image(
            &config(vec![kept.clone(), gone.clone()], "true"),
            &[desc(&kept), desc(&gone)],
            std::slice::from_ref(&name),
        )
        .unwrap();
    assert!(!store.has_blob(&kept) && !store.has_blob(&gone));

    // The export manifest: both layers as gzip blobs, made once.
    let exported =
        kiln::snapshot::blobs::export_manifest(&store, &image.manifest_digest, Compression::Gzip)
            .unwrap();
    let again =
        kiln::snapshot::blobs::export_manifest(&store, &image.manifest_digest, Compression::Gzip)
            .unwrap();
    assert_eq!(exported, again);
    let m: oci_spec::image::ImageManifest =
        serde_json::from_slice(&store.read_blob(&exported).unwrap()).unwrap();
    let gz: Vec<String> = m.layers().iter().map(|l| l.digest().to_string()).collect();
    for (d, diff_id) in gz.iter().zip([&kept, &gone]) {
        assert_eq!(&store.layer(d).unwrap().unwrap().diff_id, diff_id);
        let (_, mut plain) = kiln::oci::compress::decompress(store.open_blob(d).unwrap()).unwrap();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut plain, &mut bytes).unwrap();
        assert_eq!(&sha256_digest(&bytes), diff_id);
    }

    // Removing the image collects the unpinned layer (directory, entry list, gzip blob) and the
    // export manifest, and keeps the pinned one whole.
    store.remove_image("lazy:1", false).unwrap();
    assert!(!store.unpacked_layer_path(&gone).unwrap().exists());
    assert!(store.unpacked_layer(&gone).unwrap().is_none());
    assert!(!store.has_blob(&gz[1]));
    assert!(!store.has_blob(&exported));
    assert!(store.unpacked_layer_path(&kept).unwrap().is_dir());
    assert!(store.has_layer_content(&kept).unwrap());
    let rec = store.unpacked_layer(&kept).unwrap().unwrap();
    assert!(store.has_blob(&rec.changes));
    assert!(
        store.has_blob(&gz[0]),
        "the kept layer's blob is kept for the next export"
    );
    assert!(
        fs::read_dir(root.path().join("tmp"))
            .unwrap()
            .next()
            .is_none(),
        "the collected layer's directory is left in tmp/"
    );
}
