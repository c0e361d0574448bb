//! Writes the CRD YAML generated from the Rust types into crds/yaml/ (what the tests apply) and into the
//! chart's templates (charts/kubeha/templates/crd-*.yaml). A test fails while the committed files differ
//! from what this writes.

use std::path::Path;

fn main() -> std::io::Result<()> {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let crds = kubeha_crds::crd_yaml().into_iter().map(|(f, y)| (f.to_string(), y)).collect();
    write_all(&here.join("yaml"), crds)?;
    write_all(&here.join("../charts/kubeha/templates"), kubeha_crds::chart_crd_templates())
}

fn write_all(dir: &Path, files: Vec<(String, String)>) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (file, text) in files {
        let path = dir.join(file);
        std::fs::write(&path, text)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
