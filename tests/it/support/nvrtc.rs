//! NVRTC for the kernel compile checks, and what they read from a cubin (registers and
//! launch bounds per kernel).

use qforge::runtime::cuda::nvrtc::Nvrtc;
use std::path::PathBuf;
use std::process::Command;

/// Site-packages folders as Python reports them (empty when there is no python3).
pub fn python_site_packages() -> Vec<PathBuf> {
    let code = "import site,sys;print('\\n'.join(site.getsitepackages()+[site.getusersitepackages()]+sys.path))";
    Command::new("python3")
        .args(["-c", code])
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| !l.is_empty())
                .map(PathBuf::from)
                .collect()
        })
        .unwrap_or_default()
}

/// NVRTC: the env vars and the library's own search first, then python's site-packages.
pub fn find_nvrtc() -> Result<Nvrtc, String> {
    let first = match Nvrtc::find() {
        Ok(nv) => return Ok(nv),
        Err(e) => e.to_string(),
    };
    for sp in python_site_packages() {
        for sub in [
            "nvidia/cu13/lib/libnvrtc.so.13",
            "nvidia/cuda_nvrtc/lib/libnvrtc.so.12",
        ] {
            let p = sp.join(sub);
            if p.exists() {
                return Nvrtc::open(&p).map_err(|e| e.to_string());
            }
        }
    }
    Err(first)
}

/// NVRTC, for tests marked `#[requires(nvrtc)]`: the build found it (or
/// QFORGE_REQUIRE_NVRTC is set, as in CI), so it must load.
pub fn nvrtc() -> Nvrtc {
    find_nvrtc().unwrap_or_else(|e| panic!("NVRTC is required but unusable: {e}"))
}

/// What a cubin says of each kernel: registers per thread (`EIATTR_REGCOUNT` in `.nv.info`,
/// keyed by symbol) and the `__launch_bounds__` block (`EIATTR_MAX_THREADS` in
/// `.nv.info.<kernel>`). The cubin is a little-endian ELF64; `.nv.info*` sections hold
/// records of (format, attribute, and a 2-byte value or a 2-byte size + that many bytes).
#[derive(Debug, Default, Clone, Copy)]
pub struct Facts {
    pub regs: Option<u32>,
    pub bound: Option<u32>,
}

/// The NUL-terminated string at byte `o` of `elf`.
pub fn cstr(elf: &[u8], o: usize) -> String {
    let end = elf[o..].iter().position(|&b| b == 0).unwrap();
    String::from_utf8_lossy(&elf[o..o + end]).into_owned()
}

/// (name, offset, size, link) of every section of a cubin (a little-endian ELF64).
pub fn sections(elf: &[u8]) -> Vec<(String, usize, usize, usize)> {
    let u16_at = |o: usize| u16::from_le_bytes(elf[o..o + 2].try_into().unwrap()) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap()) as usize;
    assert_eq!(&elf[..5], b"\x7fELF\x02", "not an ELF64 cubin");
    let (shoff, shentsize, shnum, shstrndx) =
        (u64_at(0x28), u16_at(0x3A), u16_at(0x3C), u16_at(0x3E));
    let names = u64_at(shoff + shstrndx * shentsize + 24);
    (0..shnum)
        .map(|i| shoff + i * shentsize)
        .map(|h| {
            let name = cstr(elf, names + word(elf, h) as usize);
            let link = word(elf, h + 40) as usize;
            (name, u64_at(h + 24), u64_at(h + 32), link)
        })
        .collect()
}

pub fn cubin_facts(elf: &[u8]) -> std::collections::HashMap<String, Facts> {
    let u16_at = |o: usize| u16::from_le_bytes(elf[o..o + 2].try_into().unwrap()) as usize;
    let u32_at = |o: usize| word(elf, o);
    let sections = sections(elf);
    // Records (attribute, value bytes) of one .nv.info section.
    let records = |off: usize, size: usize| {
        let mut out = Vec::new();
        let mut p = off;
        while p < off + size {
            let (format, attr) = (elf[p], elf[p + 1]);
            if format == 4 {
                let n = u16_at(p + 2);
                out.push((attr, elf[p + 4..p + 4 + n].to_vec()));
                p += 4 + n;
            } else {
                out.push((attr, elf[p + 2..p + 4].to_vec()));
                p += 4;
            }
        }
        out
    };
    let symtab = sections.iter().find(|s| s.0 == ".symtab").unwrap();
    let strtab = sections[symtab.3].1;
    let symbol = |i: usize| cstr(elf, strtab + u32_at(symtab.1 + 24 * i) as usize);
    let mut facts: std::collections::HashMap<String, Facts> = Default::default();
    for (name, off, size, _) in &sections {
        if name == ".nv.info" {
            for (attr, v) in records(*off, *size) {
                if attr == 0x2f {
                    let (sym, regs) = (word(&v, 0), word(&v, 4));
                    facts.entry(symbol(sym as usize)).or_default().regs = Some(regs);
                }
            }
        } else if let Some(kernel) = name.strip_prefix(".nv.info.") {
            for (attr, v) in records(*off, *size) {
                if attr == 0x05 {
                    let (x, y, z) = (word(&v, 0), word(&v, 4), word(&v, 8));
                    facts.entry(kernel.to_string()).or_default().bound = Some(x * y * z);
                }
            }
        }
    }
    facts
}

/// The little-endian u32 at byte `o` of `v`.
pub fn word(v: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(v[o..o + 4].try_into().unwrap())
}
