//! Compiles the test programs in `programs/` (C, C++ and Rust, with debug info, and shared
//! libraries from assembly) into `OUT_DIR`, so tests run binaries built from source here.
use std::{env, path::PathBuf, process::Command};

fn main() {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set"));
    let programs =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo")).join("programs");
    println!("cargo:rerun-if-changed={}", programs.display());
    let mut sources: Vec<PathBuf> = std::fs::read_dir(&programs)
        .expect("tests/programs exists")
        .map(|entry| entry.expect("readable directory").path())
        .collect();
    // Libraries (assembly) before the programs linked with them.
    sources.sort_by_key(|source| source.extension().is_none_or(|ext| ext != "s"));
    for source in sources {
        let name = source
            .file_stem()
            .and_then(|name| name.to_str())
            .expect("UTF-8 file name")
            .to_owned();
        let extension = source.extension().and_then(|ext| ext.to_str());
        if extension == Some("rs") {
            // Release builds, as shipped: with and without frame pointers.
            let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
            for (suffix, frame_pointers) in [("fp", "yes"), ("nofp", "no")] {
                let status = Command::new(&rustc)
                    .args([
                        "--edition",
                        "2024",
                        "-C",
                        "opt-level=3",
                        "-C",
                        "debuginfo=1",
                    ])
                    .arg(format!("-Cforce-frame-pointers={frame_pointers}"))
                    .arg("-o")
                    .arg(out_dir.join(format!("{name}_{suffix}")))
                    .arg(&source)
                    .status()
                    .expect("rustc runs");
                assert!(status.success(), "compiling {} failed", source.display());
            }
            continue;
        }
        if extension == Some("s") {
            // Assembled into a shared library, `lib<name>.so`.
            let compiler = env::var_os("CC").unwrap_or_else(|| "cc".into());
            let status = Command::new(&compiler)
                .args(["-shared", "-o"])
                .arg(out_dir.join(format!("lib{name}.so")))
                .arg(&source)
                .status()
                .expect("a C compiler (cc) is needed to build the test programs");
            assert!(status.success(), "assembling {} failed", source.display());
            continue;
        }
        let compiler = match extension {
            Some("c") => env::var_os("CC").unwrap_or_else(|| "cc".into()),
            Some("cpp") => env::var_os("CXX").unwrap_or_else(|| "c++".into()),
            _ => continue,
        };
        // `unwind_*` programs come in two builds: C as distributions build it (-O2, no frame
        // pointers) and with frame pointers; the others have frame pointers.
        let variants: &[(&str, &str)] = if name.starts_with("unwind_") {
            &[
                ("_fp", "-fno-omit-frame-pointer"),
                ("_nofp", "-fomit-frame-pointer"),
            ]
        } else {
            &[("", "-fno-omit-frame-pointer")]
        };
        // A program linked with a library of the folder names it after its own name.
        let library = programs.join(format!("{name}_lib.s"));
        let link: Vec<String> = if library.exists() {
            vec![
                format!("-L{}", out_dir.display()),
                format!("-l{name}_lib"),
                format!("-Wl,-rpath,{}", out_dir.display()),
            ]
        } else {
            Vec::new()
        };
        for (suffix, frame_pointers) in variants {
            let status = Command::new(&compiler)
                .args(["-O2", "-g", frame_pointers, "-pthread", "-o"])
                .arg(out_dir.join(format!("{name}{suffix}")))
                .arg(&source)
                .arg(format!("-I{}", programs.display()))
                .args(&link)
                .status()
                .expect("a C and C++ compiler (cc, c++) are needed to build the test programs");
            assert!(status.success(), "compiling {} failed", source.display());
        }
    }
    println!("cargo:rustc-env=TEST_PROGRAMS_DIR={}", out_dir.display());
}
