//! Writes the CRD YAML generated from the Rust types into crds/yaml/ (what the tests apply) and into the
//! chart's templates (charts/kubeha/templates/crd-*.yaml). A test fails while the committed files differ
//! from what this writes.

use std::path::Path;

fn main() -> std::io::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("yaml");
    std::fs::create_dir_all(&dir)?;
    for (file, yaml) in kubeha_crds::crd_yaml() {
        let path = dir.join(file);
        std::fs::write(&path, yaml)?;
        println!("wrote {}", path.display());
    }
    let templates = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/kubeha/templates");
    std::fs::create_dir_all(&templates)?;
    for (file, template) in kubeha_crds::chart_crd_templates() {
        let path = templates.join(file);
        std::fs::write(&path, template)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
