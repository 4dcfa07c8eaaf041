//! Idempotent installation of the eBPF toolchain, following `shared/docs/toolchain.md`:
//! the nightly toolchain's `rust-src`, and bpf-linker built against that toolchain's own LLVM.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::run;

/// bpf-linker release known to work with the nightly toolchain's LLVM 22.
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Toolchain that builds the eBPF crate (aya-build uses `nightly`).
const EBPF_TOOLCHAIN: &str = "nightly";

/// Where bpf-linker is installed; `profiler/build.rs` looks in the same place.
pub fn toolchain_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PROFILER_TOOLCHAIN_DIR") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/profiler-toolchain")
}

/// `PATH` with the toolchain's `bin` first.
pub fn path_with_toolchain() -> OsString {
    let mut paths = vec![toolchain_dir().join("bin")];
    if let Some(path) = std::env::var_os("PATH") {
        paths.extend(std::env::split_paths(&path));
    }
    std::env::join_paths(paths).expect("PATH entries are valid")
}

fn output(command: &mut Command) -> anyhow::Result<String> {
    let out = command
        .output()
        .with_context(|| format!("cannot run {command:?}"))?;
    if !out.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `cargo xtask setup`: installs what is missing.
pub fn install() -> anyhow::Result<()> {
    // The nightly toolchain comes with the machine; installing another would bring an LLVM
    // that does not match bpf-linker's.
    let sysroot =
        output(Command::new("rustc").args([&format!("+{EBPF_TOOLCHAIN}"), "--print", "sysroot"]))
            .context("the `nightly` Rust toolchain is needed to build the eBPF programs")?;
    let sysroot = PathBuf::from(sysroot);
    if !sysroot.join("lib/rustlib/src/rust/library/core").exists() {
        eprintln!("setup: adding rust-src to the {EBPF_TOOLCHAIN} toolchain");
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            EBPF_TOOLCHAIN,
        ]))?;
    }
    let llvm_so = std::fs::read_dir(sysroot.join("lib"))?
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .find(|name| name.starts_with("libLLVM.so") || name.starts_with("libLLVM-"))
        .context("the nightly toolchain ships no libLLVM shared library")?;
    let prefix = toolchain_dir();
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib)?;
    for name in ["libLLVM.so", llvm_so.as_str()] {
        let link = lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(sysroot.join("lib").join(&llvm_so), &link)?;
    }
    let stamp = prefix.join("bpf-linker.stamp");
    let wanted = format!("{BPF_LINKER_VERSION} {llvm_so}");
    let linker = prefix.join("bin/bpf-linker");
    let installed = std::fs::read_to_string(&stamp).unwrap_or_default();
    if installed.trim() == wanted && linker_works(&linker) {
        return Ok(());
    }
    eprintln!("setup: building bpf-linker {BPF_LINKER_VERSION} against {llvm_so} (about a minute)");
    run(
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args([
                "install",
                &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                "--locked",
                "--force",
            ])
            .args(["--no-default-features", "--features", "llvm-22", "--root"])
            .arg(&prefix)
            .env("LLVM_PREFIX", &prefix),
    )?;
    if !linker_works(&linker) {
        bail!(
            "bpf-linker was built but does not run: {}",
            linker.display()
        );
    }
    std::fs::write(stamp, wanted)?;
    Ok(())
}

fn linker_works(linker: &Path) -> bool {
    Command::new(linker)
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success())
}

fn works(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success())
}

/// Chromium, as Debian installs it; `PROFILER_CHROMIUM` names another.
fn chromium() -> PathBuf {
    std::env::var_os("PROFILER_CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

/// The independent readers the integration tests check outputs with: Node.js with the
/// `pprof-format` decoder and `playwright-core`, and a headless Chromium; PostgreSQL, the
/// server the verdict is tested on; OpenJDK 17, Go and CPython 3.11 (with its headers), whose
/// code the runtime tests name; the OTLP receiver's Python environment; bindfs, a FUSE file
/// system. Installed from Debian's packages and the npm registry when missing (as root;
/// otherwise the tests that need them skip, or fail under `CI=true`).
pub fn install_test_tools(root: &Path, as_root: bool) -> anyhow::Result<()> {
    let mut packages = Vec::new();
    if !works("node") || !works("npm") {
        packages.extend(["nodejs", "npm"]);
    }
    if !chromium().exists() {
        packages.push("chromium");
    }
    // Runtimes the runtime tests profile (tests/tests/runtimes.rs): Node.js above, Java, Go.
    if !works("javac") {
        packages.push("openjdk-17-jdk-headless");
    }
    let go = Command::new("go")
        .arg("version")
        .output()
        .is_ok_and(|output| output.status.success());
    if !go {
        packages.push("golang-go");
    }
    // Debian's CPython and its headers: the Python tests (tests/tests/python.rs) and the
    // check of the interpreter layout against the headers.
    if !Path::new("/usr/bin/python3.11").exists() {
        packages.push("python3.11");
    }
    if !Path::new("/usr/include/python3.11/internal/pycore_frame.h").exists() {
        packages.push("python3.11-dev");
    }
    // The agent tests' OTLP receiver runs in a virtual environment of Debian's Python.
    let venv_works = Command::new(SYSTEM_PYTHON)
        .args(["-c", "import ensurepip, venv"])
        .output()
        .is_ok_and(|output| output.status.success());
    if !venv_works {
        packages.push("python3-venv");
    }
    // A real server under load for the verdict test (tests/tests/postgres.rs).
    let has_pgbench = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .any(|version| version.path().join("bin/pgbench").exists());
    if !has_pgbench {
        packages.push("postgresql");
    }
    // A FUSE file system the safety tests mount (tests/tests/safety.rs).
    if !works("bindfs") {
        packages.push("bindfs");
    }
    if !packages.is_empty() {
        if !as_root {
            eprintln!(
                "setup: not root, not installing {}: the integration tests need them",
                packages.join(", ")
            );
            return Ok(());
        }
        eprintln!("setup: installing {} (for the tests)", packages.join(", "));
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&packages)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    install_otlp_receiver(root)?;
    let js = root.join("tests/js");
    let lock = js.join("package-lock.json");
    let installed = js.join("node_modules/.package-lock.json");
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    if modified(&installed).is_none() || modified(&installed) < modified(&lock) {
        eprintln!("setup: installing the tests' JavaScript tools (npm ci)");
        run(Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--prefix"])
            .arg(&js))?;
    }
    Ok(())
}

/// Debian's Python, which the OTLP receiver's virtual environment is made with.
const SYSTEM_PYTHON: &str = "/usr/bin/python3";

/// The agent tests' OTLP receiver (tests/otlp/receiver.py): a virtual environment with the
/// official opentelemetry-proto classes from PyPI, at the versions `requirements.txt` pins;
/// made again when those change.
pub fn install_otlp_receiver(root: &Path) -> anyhow::Result<()> {
    let otlp = root.join("tests/otlp");
    let venv = otlp.join("venv");
    let requirements = otlp.join("requirements.txt");
    let installed = venv.join("installed-requirements.txt");
    if std::fs::read(&installed).ok() == std::fs::read(&requirements).ok() {
        return Ok(());
    }
    eprintln!("setup: installing the OTLP receiver's Python packages (tests/otlp/venv)");
    let _ = std::fs::remove_dir_all(&venv);
    run(Command::new(SYSTEM_PYTHON).args(["-m", "venv"]).arg(&venv))?;
    run(Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
        .arg(&requirements))?;
    std::fs::copy(&requirements, &installed)?;
    Ok(())
}

/// qemu and a static busybox, for `vm-test` (as root, from Debian's packages).
pub fn install_vm_tools() -> anyhow::Result<()> {
    let mut packages = Vec::new();
    if !works("qemu-system-x86_64") {
        packages.push("qemu-system-x86");
    }
    // The static build: the VM has no libraries for it.
    let busybox_static = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "busybox-static"])
        .output()
        .is_ok_and(|output| output.stdout.starts_with(b"install ok installed"));
    if !busybox_static {
        packages.push("busybox-static");
    }
    if packages.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing {} (for vm-test)", packages.join(", "));
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&packages)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}
