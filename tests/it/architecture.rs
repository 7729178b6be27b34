//! docs/architecture.md's layering, checked: each top-level module of `src/` imports
//! (`crate::X`) only the modules listed after it here.

const LAYERS: &[&str] = &[
    "commands",
    "bench",
    "eval",
    "calibrate",
    "serving",
    "dataset",
    "synthetic",
    "runtime",
    "quantize",
    "recipe",
    "numerics",
    "checkpoint",
    "format",
];

fn sources(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn modules_import_only_the_layers_below_them() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for (i, layer) in LAYERS.iter().enumerate() {
        let mut files = Vec::new();
        let dir = src.join(layer);
        match dir.is_dir() {
            true => sources(&dir, &mut files),
            false => files.push(src.join(format!("{layer}.rs"))),
        }
        assert!(!files.is_empty(), "{layer} has no sources");
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            for above in &LAYERS[..i] {
                assert!(
                    !text.contains(&format!("crate::{above}::")),
                    "{} imports crate::{above}, a layer above {layer}",
                    f.display()
                );
            }
        }
    }
}
