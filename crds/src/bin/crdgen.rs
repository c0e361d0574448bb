//! Writes the CRD YAML generated from the Rust types into crds/yaml/, where the chart and the tests take it
//! from. A test fails while the committed files differ from what this writes.

use std::path::Path;

fn main() -> std::io::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("yaml");
    std::fs::create_dir_all(&dir)?;
    for (file, yaml) in kubeha_crds::crd_yaml() {
        let path = dir.join(file);
        std::fs::write(&path, yaml)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
