//! Compiles the test programs in `programs/` (C with frame pointers and debug info) into
//! `OUT_DIR`, so tests run binaries built from source in this repository.
use std::{env, path::PathBuf, process::Command};

fn main() {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set"));
    let programs =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo")).join("programs");
    println!("cargo:rerun-if-changed={}", programs.display());
    for entry in std::fs::read_dir(&programs).expect("tests/programs exists") {
        let source = entry.expect("readable directory").path();
        if source.extension().is_none_or(|ext| ext != "c") {
            continue;
        }
        let name = source.file_stem().expect("file name").to_owned();
        let output = out_dir.join(&name);
        let status = Command::new(env::var_os("CC").unwrap_or_else(|| "cc".into()))
            .args(["-O2", "-g", "-fno-omit-frame-pointer", "-pthread", "-o"])
            .arg(&output)
            .arg(&source)
            .status()
            .expect("a C compiler (cc) is needed to build the test programs");
        assert!(status.success(), "compiling {} failed", source.display());
    }
    println!("cargo:rustc-env=TEST_PROGRAMS_DIR={}", out_dir.display());
}
