//! The image `make image` wrote (target/image): what is in it, as a user's runtime unpacks it. Its
//! reproducibility (the same digest from a rebuild) is checked by `scripts/build-image.sh
//! --check-reproducible`, which `make test` runs before the tests: a test cannot run cargo while cargo
//! runs the tests.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().expect("runs");
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn blob(layout: &Path, digest: &str) -> std::path::PathBuf {
    layout.join("blobs/sha256").join(digest.strip_prefix("sha256:").unwrap())
}

#[test]
fn the_image_holds_two_static_binaries_and_nothing_else() {
    kubeha_e2e::skip_unless_root!();
    let archive = kubeha_e2e::kubeha_image().expect("make image ran");
    let dir = std::env::temp_dir().join(format!("kh-image-test-{}", std::process::id()));
    let layout = dir.join("layout");
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(&layout).unwrap();
    std::fs::create_dir_all(&rootfs).unwrap();
    sh(Command::new("tar").arg("-xf").arg(&archive).arg("-C").arg(&layout));

    // The layout as containerd and skopeo read it: one manifest, named for both.
    assert_eq!(json(&layout.join("oci-layout"))["imageLayoutVersion"], "1.0.0");
    let index = json(&layout.join("index.json"));
    let [entry] = index["manifests"].as_array().unwrap().as_slice() else { panic!("one manifest: {index}") };
    let reference = kubeha_e2e::kubeha_image_ref();
    assert_eq!(entry["annotations"]["io.containerd.image.name"], reference.as_str());
    assert_eq!(entry["annotations"]["org.opencontainers.image.ref.name"], env!("CARGO_PKG_VERSION"));
    assert_eq!(entry["platform"]["architecture"], "amd64");
    let manifest = json(&blob(&layout, entry["digest"].as_str().unwrap()));
    let config = json(&blob(&layout, manifest["config"]["digest"].as_str().unwrap()));

    // The labels a registry and a scanner read.
    let labels = &config["config"]["Labels"];
    assert_eq!(labels["org.opencontainers.image.source"], "https://github.com/kubeha/kubeha");
    assert_eq!(labels["org.opencontainers.image.version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(labels["org.opencontainers.image.licenses"], "Apache-2.0");
    let revision = labels["org.opencontainers.image.revision"].as_str().unwrap();
    assert!(revision.trim_end_matches("-dirty").len() == 40, "a commit id: {revision}");
    assert_eq!(config["config"]["User"], "65532:65532");

    // One layer, whose files are exactly these, owned by root, with these modes.
    let [layer] = manifest["layers"].as_array().unwrap().as_slice() else { panic!("one layer: {manifest}") };
    let layer = blob(&layout, layer["digest"].as_str().unwrap());
    let listing = sh(Command::new("tar").arg("-tvzf").arg(&layer).arg("--numeric-owner"));
    let mut files: Vec<(String, String, String)> = listing
        .lines()
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w[5].trim_end_matches('/').to_string(), w[0].to_string(), w[1].to_string())
        })
        .collect();
    files.sort();
    let want = [
        ("etc", "drwxr-xr-x"),
        ("etc/group", "-rw-r--r--"),
        ("etc/passwd", "-rw-r--r--"),
        ("usr", "drwxr-xr-x"),
        ("usr/local", "drwxr-xr-x"),
        ("usr/local/bin", "drwxr-xr-x"),
        ("usr/local/bin/kubeha-agent", "-rwxr-xr-x"),
        ("usr/local/bin/kubeha-operator", "-rwxr-xr-x"),
    ];
    let got: Vec<(&str, &str)> = files.iter().map(|(n, m, _)| (n.as_str(), m.as_str())).collect();
    assert_eq!(got, want, "no shell, no package manager, nothing else");
    assert!(files.iter().all(|(_, _, owner)| owner == "0/0"), "{listing}");

    sh(Command::new("tar").arg("-xzf").arg(&layer).arg("-C").arg(&rootfs));
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
    assert!(passwd.lines().any(|l| l.starts_with("nonroot:x:65532:65532:")), "{passwd}");
    for bin in ["kubeha-agent", "kubeha-operator"] {
        let path = rootfs.join("usr/local/bin").join(bin);
        let headers = sh(Command::new("readelf").arg("-lW").arg(&path));
        assert!(!headers.contains("program interpreter"), "{bin} is dynamically linked:\n{headers}");
        let symbols = sh(Command::new("readelf").arg("-SW").arg(&path));
        assert!(!symbols.contains(".symtab") && !symbols.contains(".debug_info"), "{bin} is not stripped");
        // Static, it runs with nothing of the machine's libraries.
        let version = sh(Command::new(&path).arg("--version"));
        assert!(version.contains(env!("CARGO_PKG_VERSION")), "{bin} --version: {version}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
