//! The README's two set-up commands are the ones CI runs, so they cannot silently drift.

use std::path::Path;

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap()
}

#[test]
fn readme_quick_start_and_test_commands_are_run_by_ci() {
    let readme = read("README.md");
    let ci = read(".ci/run");
    let quick = readme
        .lines()
        .find(|l| l.starts_with("cargo run --release -- quantize"))
        .expect("README has a quick-start quantize command");
    let ci_quick = quick.replacen(
        "cargo run --release --",
        "cargo run --release --locked --",
        1,
    );
    assert!(
        ci.contains(&ci_quick),
        "CI does not run the README quick start:\n{quick}"
    );
    assert!(quick.contains("--model fixtures/tiny-random-llama") && quick.contains("--verify"));
    assert!(
        readme.lines().any(|l| l == "scripts/test.sh"),
        "README names scripts/test.sh"
    );
    assert!(ci.contains("scripts/test.sh"), "CI runs scripts/test.sh");
}
