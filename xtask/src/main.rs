//! Project tasks: `cargo xtask setup | build | demo | test | lint | bench-cpu | bench-offcpu |
//! bench-io | bench-alloc | bench-render | bench-unwind | bench-soak | bench-startup |
//! bench-longrun | bench-server | bench-bystander | bench-jit | bench-python | vm-test | fuzz`.
//!
//! Everything a fresh machine needs is installed here, idempotently, so the README's two
//! commands (`cargo xtask demo`, `cargo xtask test`) work from a clean clone.

mod bench;
mod bench_agent;
mod bench_bystander;
mod bench_jit;
mod bench_longrun;
mod bench_python;
mod bench_rustc;
mod bench_server;
mod bench_soak;
mod bench_startup;
mod bench_unwind;
mod layout;
mod report;
mod setup;
mod vm_test;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "Project tasks for the profiler")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the eBPF toolchain (rust-src, bpf-linker); quick when already done.
    Setup,
    /// Set up and build the profiler (release).
    Build,
    /// Set up, build, and profile the bundled demo program; prints where the results are.
    Demo,
    /// Set up, build, and run every check: formatting, clippy, unit and integration tests, and
    /// (as root) vm-test.
    Test,
    /// Formatting and clippy only.
    Lint,
    /// CPU sampling overhead against perf and bpftrace; writes docs/performance/cpu-results.md.
    BenchCpu(bench::CpuBenchArgs),
    /// Off-CPU tracing cost per context switch against bpftrace; writes
    /// docs/performance/offcpu-results.md.
    BenchOffcpu(bench::OffCpuBenchArgs),
    /// I/O tracing cost per system call against bpftrace; writes docs/performance/io-results.md.
    BenchIo(bench::IoBenchArgs),
    /// Allocation tracking cost per malloc/free pair against bpftrace; writes
    /// docs/performance/alloc-results.md.
    BenchAlloc(bench::AllocBenchArgs),
    /// Time to render every output file of a million-sample profile; writes
    /// docs/performance/render-results.md.
    BenchRender(bench::RenderBenchArgs),
    /// Cost per sample and start-up of `.eh_frame` unwinding against frame pointers; writes
    /// docs/performance/unwind-results.md.
    BenchUnwind(bench_unwind::UnwindBenchArgs),
    /// Every event kind for minutes on a service-like load: the profiler's RSS, CPU and
    /// reported losses; writes docs/performance/soak-results.md.
    BenchSoak(bench_soak::SoakBenchArgs),
    /// Time to the first sample for `record` and `attach`, with CPU sampling alone and every
    /// event kind, against perf and bpftrace; writes docs/performance/startup-results.md.
    BenchStartup(bench_startup::StartupBenchArgs),
    /// A minute at 999 Hz over many distinct stacks against perf: stacks kept, CPU, RSS over
    /// time, stop time; writes docs/performance/longrun-results.md.
    BenchLongrun(bench_longrun::LongRunBenchArgs),
    /// PostgreSQL under pgbench, alone and under the profiler, perf and bpftrace: throughput
    /// kept; writes docs/performance/server-results.md.
    BenchServer(bench_server::ServerBenchArgs),
    /// A system-call loop and a pipe ping-pong the profiler does not watch, while it watches a
    /// sleeping process, against bpftrace: what tracing costs the rest of the machine; writes
    /// docs/performance/bystander-results.md.
    BenchBystander(bench_bystander::BystanderBenchArgs),
    /// A JVM with 20 000+ compiled methods, alone and under the profiler (which asks it for its
    /// perf map) and perf: throughput kept, map size, time to write and read it; writes
    /// docs/performance/jit-results.md.
    BenchJit(bench_jit::JitBenchArgs),
    /// Debian's python3.11 alone, under the profiler (99 and 999 Hz, with and without Python
    /// frames) and under py-spy: throughput kept, per-sample cost; writes
    /// docs/performance/python-results.md.
    BenchPython(bench_python::PythonBenchArgs),
    /// `profiler agent --all` at its defaults for minutes with process churn, its windows sent
    /// to the tests' OTLP receiver, perf alongside: CPU, RSS, windows delivered; writes
    /// docs/performance/agent-results.md.
    BenchAgent(bench_agent::AgentBenchArgs),
    /// Boot Debian's 6.1, 6.12 and newest backported 7.x kernels under qemu and run, inside,
    /// `profiler check` and the integration tests that cover every event kind and both
    /// unwinders; prints PASS/FAIL per kernel and check.
    VmTest(vm_test::VmTestArgs),
    /// Fuzz the saved-profile reader with cargo-fuzz (installed if missing), growing the
    /// corpus in fuzz/corpus/load_profile.
    Fuzz {
        /// How long to fuzz, seconds.
        #[arg(long, default_value_t = 300)]
        seconds: u64,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::install(),
        Task::Build => build(),
        Task::Demo => demo(),
        Task::Test => test(),
        Task::Lint => lint(),
        Task::BenchCpu(args) => {
            build()?;
            bench::cpu(&args)
        }
        Task::BenchOffcpu(args) => {
            build()?;
            bench::offcpu(&args)
        }
        Task::BenchIo(args) => {
            build()?;
            bench::io(&args)
        }
        Task::BenchAlloc(args) => {
            build()?;
            bench::alloc(&args)
        }
        Task::BenchRender(args) => {
            build()?;
            bench::render(&args)
        }
        Task::BenchUnwind(args) => {
            build()?;
            bench_unwind::unwind(&args)
        }
        Task::BenchSoak(args) => {
            build()?;
            bench_soak::soak(&args)
        }
        Task::BenchStartup(args) => {
            build()?;
            bench_startup::startup(&args)
        }
        Task::BenchLongrun(args) => {
            build()?;
            bench_longrun::longrun(&args)
        }
        Task::BenchServer(args) => {
            build()?;
            bench_server::server(&args)
        }
        Task::BenchBystander(args) => {
            build()?;
            bench_bystander::bystander(&args)
        }
        Task::BenchJit(args) => {
            build()?;
            bench_jit::jit(&args)
        }
        Task::BenchAgent(args) => {
            build()?;
            bench_agent::agent(&args)
        }
        Task::BenchPython(args) => {
            build()?;
            bench_python::python(&args)
        }
        Task::VmTest(args) => vm_test::vm_test(&args),
        Task::Fuzz { seconds } => fuzz(seconds),
    }
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// The release profiler binary.
pub fn profiler_bin() -> PathBuf {
    root().join("target/release/profiler")
}

/// Runs a command in the workspace root, failing if it fails.
pub fn run(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .current_dir(root())
        .status()
        .with_context(|| format!("cannot run {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed with {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.env("PATH", setup::path_with_toolchain());
    command
}

fn build() -> anyhow::Result<()> {
    setup::install()?;
    run(cargo().args(["build", "--release", "--package", "profiler"]))
}

/// Whether this process runs as root (the profiler needs it, or CAP_BPF + CAP_PERFMON).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .and_then(|uids| uids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// Compiles a C program from `tests/programs` with frame pointers into `target/programs`.
pub fn compile_program(name: &str) -> anyhow::Result<PathBuf> {
    let out_dir = root().join("target/programs");
    std::fs::create_dir_all(&out_dir)?;
    let output = out_dir.join(name);
    run(Command::new("cc")
        .args(["-O2", "-g", "-fno-omit-frame-pointer", "-pthread", "-o"])
        .arg(&output)
        .arg(root().join(format!("tests/programs/{name}.c")))
        .arg(format!("-I{}", root().join("tests/programs").display())))?;
    Ok(output)
}

fn demo() -> anyhow::Result<()> {
    build()?;
    let program = compile_program("demo")?;
    let output = root().join("benchmarks/demo");
    // Where the demo writes (and deletes) its log: on disk, so fsync costs what it costs.
    let log = root().join("target/demo.log");
    let mut command = if is_root() {
        Command::new(profiler_bin())
    } else {
        eprintln!("xtask: the profiler needs root; running it with sudo");
        let mut sudo = Command::new("sudo");
        sudo.arg(profiler_bin());
        sudo
    };
    command
        .args([
            "record",
            "--events",
            "cpu,offcpu,io,alloc",
            "--frequency",
            "499",
        ])
        .arg("--output")
        .arg(&output)
        .arg("--")
        .arg(&program)
        .arg("3")
        .arg(&log);
    run(&mut command)?;
    println!("\nDemo results in {}:", output.display());
    for entry in std::fs::read_dir(&output)? {
        println!("  {}", entry?.path().display());
    }
    println!(
        "Open report.html in a browser (verdict, flamegraphs, memory, I/O); summary.md opens \
         with the verdict:\n"
    );
    let summary = std::fs::read_to_string(output.join("summary.md"))?;
    for line in summary.lines().take(12) {
        println!("  {line}");
    }
    Ok(())
}

/// Runs the `load_profile` fuzz target for `seconds`; new interesting inputs land in the
/// corpus, which `cargo xtask test` replays (`saved_profile_corpus_never_panics`).
fn fuzz(seconds: u64) -> anyhow::Result<()> {
    setup::install()?;
    let installed = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|out| out.status.success());
    if !installed {
        run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    run(Command::new("cargo")
        .env("PATH", setup::path_with_toolchain())
        .args([
            "+nightly",
            "fuzz",
            "run",
            "--fuzz-dir",
            "fuzz",
            "load_profile",
        ])
        .args(["fuzz/corpus/load_profile", "--"])
        .arg(format!("-max_total_time={seconds}"))
        // Saved profiles are gzip: a few KiB of input can be megabytes of JSON.
        .args(["-max_len=65536", "-rss_limit_mb=2048"]))
}

fn lint() -> anyhow::Result<()> {
    run(cargo().args(["fmt", "--all", "--check"]))?;
    layout::check(&root())?;
    run(cargo().args([
        "clippy",
        "--release",
        "--workspace",
        // Only builds for the BPF target; its code is compiled (with warnings) by aya-build.
        "--exclude",
        "profiler-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))
}

fn test() -> anyhow::Result<()> {
    build()?;
    lint()?;
    setup::install_test_tools(&root(), is_root())?;
    if !is_root() {
        eprintln!(
            "xtask: not root: integration tests will skip (they need root to load eBPF programs); \
             run `sudo -E cargo xtask test` for the full suite"
        );
    }
    run_tests(
        cargo()
            .args([
                "test",
                "--release",
                "--workspace",
                "--exclude",
                "profiler-ebpf",
            ])
            .env("PROFILER_BIN", profiler_bin()),
    )?;
    // The kernel matrix: about a minute and a half per kernel under emulation.
    if is_root() {
        vm_test::vm_test(&vm_test::VmTestArgs::every_kernel())
    } else {
        eprintln!("xtask: not root: vm-test skipped (it fetches kernel packages with apt-get)");
        Ok(())
    }
}

/// Runs `cargo test`, passing its output through, and ends with one line totalling every test
/// binary's results (cargo prints one `test result:` line per binary, the last often for a
/// crate without tests).
fn run_tests(command: &mut Command) -> anyhow::Result<()> {
    use std::io::{BufRead as _, BufReader};

    let mut child = command
        .current_dir(root())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {command:?}"))?;
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    let stdout = child.stdout.take().context("stdout is piped")?;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(result) = line.strip_prefix("test result: ") {
            let count = |what: &str| -> u64 {
                result
                    .split(';')
                    .find_map(|part| {
                        part.trim()
                            .strip_suffix(what)?
                            .rsplit(' ')
                            .next()?
                            .parse()
                            .ok()
                    })
                    .unwrap_or(0)
            };
            passed += count(" passed");
            failed += count(" failed");
            ignored += count(" ignored");
        }
    }
    let status = child.wait()?;
    println!("{passed} passed, {failed} failed, {ignored} skipped");
    if !status.success() {
        bail!("tests failed ({status})");
    }
    Ok(())
}
