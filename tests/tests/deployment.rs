//! The configs the Kubernetes manifests ship (`k8s/**/config.toml`, the ConfigMaps'
//! contents) are accepted by the service's own parser and build their blocks, so a
//! manifest change cannot ship a config the pods would refuse at start.

use std::path::{Path, PathBuf};

use resultstore::{Config, ResultStore};

fn configs(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read k8s/") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            configs(&path, out);
        } else if path.file_name().is_some_and(|n| n == "config.toml") {
            out.push(path);
        }
    }
}

#[test]
fn every_configmap_config_parses_and_builds_its_blocks() {
    let k8s = Path::new(env!("CARGO_MANIFEST_DIR")).join("../k8s");
    let mut found = Vec::new();
    configs(&k8s, &mut found);
    found.sort();
    let names: Vec<String> = found.iter().map(|p| p.strip_prefix(&k8s).unwrap().display().to_string()).collect();
    assert_eq!(
        names,
        [
            "base/config.toml",
            "examples/worker-sidecar/config.toml",
            "examples/worker-sidecar-tier/config.toml",
            "overlays/shared-tier/config.toml"
        ],
        "every ConfigMap config is checked here"
    );
    for path in &found {
        let text = std::fs::read_to_string(path).expect("read config");
        let config = Config::from_toml(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // Object stores are built without connecting: a block the pods could not build
        // fails here.
        ResultStore::new(&config).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(!text.contains("-----BEGIN"), "{}: key material belongs in a Secret", path.display());
        assert!(config.shutdown_grace_period > std::time::Duration::ZERO);
    }
}
