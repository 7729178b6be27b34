//! `#[requires(..)]` for qforge's integration tests: a test whose requirement (the SmolLM2
//! model, NVRTC, the CUDA emulator, ...) is missing when the tests are compiled gets
//! `#[ignore = "needs ..."]`, so `cargo test` counts it as ignored and says why, instead of
//! passing a test that checked nothing. `met!(name)` is the same decision as a `bool`.
//!
//! The decision is made when the test crate compiles. Each expansion also emits
//! `option_env!` for the variables it read, so rustc records them in the crate's dep-info
//! and cargo rebuilds the test crate (only that one, not the library) when one changes.
//! Programs found on PATH (a C++ compiler, python3) and the CUDA driver library are not
//! tracked (cargo changes PATH-like variables for rustc): after installing one,
//! `touch tests/it/main.rs`.
//!
//! `QFORGE_REQUIRE_NVRTC` / `QFORGE_REQUIRE_EMU` (set by CI) count their requirement as met,
//! so the test runs and fails when the thing is missing, instead of being ignored.

use proc_macro::{Delimiter, Group, Ident, Literal, Punct, Spacing, Span, TokenStream, TokenTree};
use std::env;
use std::path::{Path, PathBuf};

/// One requirement a test can name.
struct Requirement {
    name: &'static str,
    /// The environment variables the decision reads (tracked for rebuilds).
    vars: &'static [&'static str],
    met: fn() -> bool,
    /// Why the test is ignored, and how to meet the requirement.
    reason: &'static str,
}

const REQUIREMENTS: &[Requirement] = &[
    Requirement {
        name: "smollm2",
        vars: &["QFORGE_SMOLLM2"],
        met: smollm2,
        reason: "needs QFORGE_SMOLLM2, the BF16 SmolLM2 folder (scripts/test.sh builds it)",
    },
    Requirement {
        name: "small_fs",
        vars: &["QFORGE_SMALL_FS"],
        met: small_fs,
        reason: "needs QFORGE_SMALL_FS, a filesystem of a few MB (.ci/run mounts a 3 MB tmpfs)",
    },
    Requirement {
        name: "nvrtc",
        vars: &[
            "QFORGE_REQUIRE_NVRTC",
            "QFORGE_NVRTC_LIB",
            "QFORGE_NVRTC_DIR",
            "CUDA_PATH",
            "CUDA_HOME",
        ],
        met: nvrtc,
        reason: "needs NVRTC: eval \"$(scripts/install_nvrtc.sh DIR)\" sets QFORGE_NVRTC_LIB",
    },
    Requirement {
        name: "emulator",
        vars: &["QFORGE_REQUIRE_EMU", "CXX"],
        met: emulator,
        reason: "needs the CUDA emulator: a C++ compiler (c++, or $CXX) on an x86-64 host",
    },
    Requirement {
        name: "cuda_device",
        vars: &["QFORGE_REQUIRE_EMU", "CXX"],
        met: cuda_device,
        reason: "needs the CUDA emulator (a C++ compiler: c++, or $CXX) or a CUDA driver",
    },
    Requirement {
        name: "python3",
        vars: &["QFORGE_REQUIRE_EMU"],
        met: python3,
        reason: "needs python3 on PATH",
    },
    Requirement {
        name: "no_cuda_driver",
        vars: &["QFORGE_CUDA_EMULATE"],
        met: no_cuda_driver,
        reason: "runs only without a CUDA driver and without QFORGE_CUDA_EMULATE",
    },
];

/// `#[requires(a, b, ..)]` before `#[test]`: the test is ignored, with the reasons, unless
/// every named requirement is met.
#[proc_macro_attribute]
pub fn requires(attr: TokenStream, item: TokenStream) -> TokenStream {
    let reqs = match parse(attr) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let mut out = track(&reqs);
    let unmet: Vec<&str> = reqs
        .iter()
        .filter(|r| !(r.met)())
        .map(|r| r.reason)
        .collect();
    if !unmet.is_empty() {
        out.extend(ignore_attribute(&unmet.join("; ")));
    }
    out.extend(item);
    out
}

/// `met!(name)`: `true` when the requirement is met (as `#[requires(name)]` decides).
#[proc_macro]
pub fn met(input: TokenStream) -> TokenStream {
    let reqs = match parse(input) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let mut body = track(&reqs);
    let all = reqs.iter().all(|r| (r.met)());
    body.extend([TokenTree::Ident(Ident::new(
        if all { "true" } else { "false" },
        Span::call_site(),
    ))]);
    TokenStream::from(TokenTree::Group(Group::new(Delimiter::Brace, body)))
}

/// The requirements named by a comma-separated list, or a `compile_error!`.
fn parse(attr: TokenStream) -> Result<Vec<&'static Requirement>, TokenStream> {
    let mut out = Vec::new();
    for tt in attr {
        match tt {
            TokenTree::Ident(id) => {
                let name = id.to_string();
                match REQUIREMENTS.iter().find(|r| r.name == name) {
                    Some(r) => out.push(r),
                    None => {
                        let known: Vec<&str> = REQUIREMENTS.iter().map(|r| r.name).collect();
                        let msg = format!("unknown requirement `{name}`; known: {known:?}");
                        return Err(compile_error(&msg));
                    }
                }
            }
            TokenTree::Punct(p) if p.as_char() == ',' => {}
            other => return Err(compile_error(&format!("unexpected `{other}`"))),
        }
    }
    if out.is_empty() {
        return Err(compile_error("name at least one requirement"));
    }
    Ok(out)
}

/// `const _: Option<&str> = option_env!("VAR");` for every variable the requirements read.
fn track(reqs: &[&Requirement]) -> TokenStream {
    let mut vars: Vec<&str> = reqs.iter().flat_map(|r| r.vars.iter().copied()).collect();
    vars.sort_unstable();
    vars.dedup();
    vars.iter()
        .map(|v| format!("const _: ::core::option::Option<&str> = ::core::option_env!({v:?});"))
        .collect::<String>()
        .parse()
        .expect("valid tokens")
}

fn ignore_attribute(reason: &str) -> TokenStream {
    let args = TokenStream::from_iter([
        TokenTree::Ident(Ident::new("ignore", Span::call_site())),
        TokenTree::Punct(Punct::new('=', Spacing::Alone)),
        TokenTree::Literal(Literal::string(reason)),
    ]);
    TokenStream::from_iter([
        TokenTree::Punct(Punct::new('#', Spacing::Alone)),
        TokenTree::Group(Group::new(Delimiter::Bracket, args)),
    ])
}

fn compile_error(msg: &str) -> TokenStream {
    format!("::core::compile_error!({msg:?});")
        .parse()
        .expect("valid tokens")
}

/// A variable that is set and not empty.
fn set(var: &str) -> bool {
    env::var_os(var).is_some_and(|v| !v.is_empty())
}

/// `QFORGE_SMOLLM2` names a folder; `skip` (as scripts/test.sh takes it) counts as unset.
fn smollm2() -> bool {
    set("QFORGE_SMOLLM2") && env::var_os("QFORGE_SMOLLM2").is_some_and(|v| v != "skip")
}

fn small_fs() -> bool {
    set("QFORGE_SMALL_FS")
}

/// The variables scripts/install_nvrtc.sh sets, or a CUDA toolkit's libnvrtc.so.
fn nvrtc() -> bool {
    if set("QFORGE_REQUIRE_NVRTC") || set("QFORGE_NVRTC_LIB") || set("QFORGE_NVRTC_DIR") {
        return true;
    }
    let roots = ["CUDA_PATH", "CUDA_HOME"]
        .iter()
        .filter_map(|v| env::var_os(v).map(PathBuf::from))
        .chain([PathBuf::from("/usr/local/cuda")]);
    roots
        .flat_map(|r| [r.join("lib64"), r.join("lib")])
        .any(|dir| has_file_starting(&dir, "libnvrtc.so"))
}

/// The emulator builds the kernels with the host C++ compiler, on x86-64 only.
fn emulator() -> bool {
    if set("QFORGE_REQUIRE_EMU") {
        return true;
    }
    let cxx = env::var("CXX").unwrap_or_else(|_| "c++".to_string());
    cfg!(target_arch = "x86_64") && on_path(&cxx)
}

fn cuda_device() -> bool {
    emulator() || cuda_driver()
}

fn python3() -> bool {
    set("QFORGE_REQUIRE_EMU") || on_path("python3")
}

fn no_cuda_driver() -> bool {
    !set("QFORGE_CUDA_EMULATE") && !cuda_driver()
}

/// libcuda.so.1 in LD_LIBRARY_PATH or a usual library folder.
fn cuda_driver() -> bool {
    let mut dirs: Vec<PathBuf> = env::var_os("LD_LIBRARY_PATH")
        .map(|p| env::split_paths(&p).collect())
        .unwrap_or_default();
    for d in [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
        "/lib/x86_64-linux-gnu",
        "/lib64",
        "/usr/lib/wsl/lib",
        "/usr/local/nvidia/lib64",
    ] {
        dirs.push(PathBuf::from(d));
    }
    dirs.iter().any(|d| d.join("libcuda.so.1").exists())
}

/// `program` as a path, or an executable file of that name in a PATH folder.
fn on_path(program: &str) -> bool {
    let p = Path::new(program);
    if p.components().count() > 1 {
        return p.is_file();
    }
    env::var_os("PATH").is_some_and(|path| env::split_paths(&path).any(|d| d.join(p).is_file()))
}

fn has_file_starting(dir: &Path, prefix: &str) -> bool {
    std::fs::read_dir(dir).is_ok_and(|rd| {
        rd.filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().starts_with(prefix))
    })
}
