//! Compiles the test programs in `programs/` (C, C++ and Rust, with debug info) into `OUT_DIR`,
//! so tests run binaries built from source in this repository.
use std::{env, path::PathBuf, process::Command};

fn main() {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set"));
    let programs =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo")).join("programs");
    println!("cargo:rerun-if-changed={}", programs.display());
    for entry in std::fs::read_dir(&programs).expect("tests/programs exists") {
        let source = entry.expect("readable directory").path();
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
        for (suffix, frame_pointers) in variants {
            let status = Command::new(&compiler)
                .args(["-O2", "-g", frame_pointers, "-pthread", "-o"])
                .arg(out_dir.join(format!("{name}{suffix}")))
                .arg(&source)
                .arg(format!("-I{}", programs.display()))
                .status()
                .expect("a C and C++ compiler (cc, c++) are needed to build the test programs");
            assert!(status.success(), "compiling {} failed", source.display());
        }
    }
    println!("cargo:rustc-env=TEST_PROGRAMS_DIR={}", out_dir.display());
}
