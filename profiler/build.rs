//! Builds the eBPF programs (`profiler-ebpf`) with the nightly toolchain and bpf-linker, so that
//! `cargo build` on stable produces a binary with the programs embedded.
use std::{env, path::PathBuf};

use anyhow::{Context as _, anyhow};

/// Where `cargo xtask setup` installs bpf-linker (kept in sync with xtask).
fn toolchain_dir() -> Option<PathBuf> {
    if let Some(dir) = env::var_os("PROFILER_TOOLCHAIN_DIR") {
        return Some(PathBuf::from(dir));
    }
    env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/profiler-toolchain"))
}

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=PROFILER_TOOLCHAIN_DIR");
    // Let a plain `cargo build` find the bpf-linker that `cargo xtask setup` installed.
    if let Some(bin) = toolchain_dir().map(|dir| dir.join("bin"))
        && bin.join("bpf-linker").exists()
    {
        let path = env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![bin];
        paths.extend(env::split_paths(&path));
        // SAFETY: build scripts are single-threaded at this point.
        unsafe { env::set_var("PATH", env::join_paths(paths)?) };
    }
    if which_bpf_linker().is_none() && env::var_os("AYA_BUILD_SKIP").is_none() {
        return Err(anyhow!(
            "bpf-linker not found: run `cargo xtask setup` once to install the eBPF toolchain"
        ));
    }
    let manifest_dir = env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let ebpf_dir = PathBuf::from(manifest_dir).join("../profiler-ebpf");
    let ebpf_dir = ebpf_dir
        .to_str()
        .context("eBPF crate path is not UTF-8")?
        .to_owned();
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "profiler-ebpf",
            root_dir: &ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )?;
    // The same programs with the stack walker inlined, for kernels without private stacks
    // (see profiler-ebpf's `inline-walk`), in a folder of their own: aya-build writes to
    // `OUT_DIR`.
    let out_dir = PathBuf::from(env::var("OUT_DIR").context("OUT_DIR not set")?);
    let inline_dir = out_dir.join("inline-walk");
    std::fs::create_dir_all(&inline_dir)?;
    // SAFETY: the build script is single-threaded here.
    unsafe { env::set_var("OUT_DIR", &inline_dir) };
    let built = aya_build::build_ebpf(
        [aya_build::Package {
            name: "profiler-ebpf",
            root_dir: &ebpf_dir,
            features: &["inline-walk"],
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    );
    // SAFETY: as above.
    unsafe { env::set_var("OUT_DIR", &out_dir) };
    built
}

fn which_bpf_linker() -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join("bpf-linker"))
        .find(|candidate| candidate.exists())
}
