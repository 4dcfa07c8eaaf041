//! Compiles the test programs in `programs/` (C and C++, with frame pointers and debug info) into
//! `OUT_DIR`, so tests run binaries built from source in this repository.
use std::{env, path::PathBuf, process::Command};

fn main() {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set"));
    let programs =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo")).join("programs");
    println!("cargo:rerun-if-changed={}", programs.display());
    for entry in std::fs::read_dir(&programs).expect("tests/programs exists") {
        let source = entry.expect("readable directory").path();
        let compiler = match source.extension().and_then(|ext| ext.to_str()) {
            Some("c") => env::var_os("CC").unwrap_or_else(|| "cc".into()),
            Some("cpp") => env::var_os("CXX").unwrap_or_else(|| "c++".into()),
            _ => continue,
        };
        let name = source.file_stem().expect("file name").to_owned();
        let output = out_dir.join(&name);
        let status = Command::new(compiler)
            .args(["-O2", "-g", "-fno-omit-frame-pointer", "-pthread", "-o"])
            .arg(&output)
            .arg(&source)
            .arg(format!("-I{}", programs.display()))
            .status()
            .expect("a C and C++ compiler (cc, c++) are needed to build the test programs");
        assert!(status.success(), "compiling {} failed", source.display());
    }
    println!("cargo:rustc-env=TEST_PROGRAMS_DIR={}", out_dir.display());
}
