//! The big-binary part of `bench-unwind`: rustc, whose `librustc_driver` and `libLLVM` are
//! well over 100 MB, compiling a generated file of 1000 functions. Alone, under the profiler
//! at its default settings and with `--unwind fp`, and under `perf record --call-graph dwarf`,
//! all at 99 Hz, in interleaved rounds. Reported: rustc's own wall time against its time alone
//! in the same round, the share of samples with complete stacks, and what the unwind tables
//! took.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::Context as _;

use crate::{bench_unwind::folded_complete_percent, profiler_bin, report};

/// Who watches rustc.
#[derive(Clone, Copy)]
enum Watcher {
    Nothing,
    /// `profiler record -F 99` with these options.
    Profiler(&'static [&'static str]),
    /// `perf record -F 99 --call-graph dwarf`.
    PerfDwarf,
}

impl Watcher {
    fn label(self) -> String {
        match self {
            Watcher::Nothing => "rustc alone".to_owned(),
            Watcher::Profiler([]) => "profiler, default settings".to_owned(),
            Watcher::Profiler(options) => format!("profiler `{}`", options.join(" ")),
            Watcher::PerfDwarf => "perf `record --call-graph dwarf`".to_owned(),
        }
    }
}

const WATCHERS: [Watcher; 4] = [
    Watcher::Nothing,
    Watcher::Profiler(&[]),
    Watcher::Profiler(&["--unwind", "fp"]),
    Watcher::PerfDwarf,
];

/// One run's figures.
#[derive(Default)]
struct RustcRun {
    /// rustc's own wall time, s.
    seconds: f64,
    /// Share of samples whose stack starts at an entry function (`None`: not profiled).
    complete_percent: Option<f64>,
    /// Unwind tables built in, ms, and their rows (profiler with tables only).
    tables: Option<(f64, f64)>,
}

/// A Rust file of `functions` small functions calling one another, the same every time.
pub(crate) fn generate_source(path: &Path, functions: u32) -> anyhow::Result<()> {
    let mut source = String::new();
    for i in 0..functions {
        let _ = writeln!(
            source,
            "pub fn f{i}(x: u64) -> u64 {{ let v: Vec<u64> = (0..x % 7).map(|k| k * {i} + x)\
             .collect(); v.iter().map(|y| y ^ {i}).sum::<u64>() + if x > 3 {{ f{}(x - 1) }} \
             else {{ 0 }} }}",
            i.saturating_sub(1)
        );
    }
    source.push_str("fn main() { let mut s = 0;");
    for i in (0..functions).step_by(7) {
        let _ = write!(source, " s += f{i}({});", i % 11);
    }
    source.push_str(" println!(\"{s}\"); }\n");
    std::fs::write(path, source)?;
    Ok(())
}

/// The toolchain's rustc itself, not rustup's proxy (which would be what is profiled first).
pub(crate) fn rustc() -> anyhow::Result<PathBuf> {
    let out = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .context("running rustc --print sysroot")?;
    let sysroot = String::from_utf8(out.stdout)?;
    Ok(Path::new(sysroot.trim()).join("bin/rustc"))
}

/// Share of the samples in `perf script` output whose outermost frame is an entry function
/// (perf's unwinder ends a thread's stack at `start_thread`, one frame short of `clone3`).
fn perf_complete_percent(script: &str) -> f64 {
    let (mut total, mut complete) = (0u64, 0u64);
    for sample in script.split("\n\n") {
        // The header line, then one line per frame, innermost first.
        let Some(outermost) = sample
            .lines()
            .skip(1)
            .filter(|line| !line.trim().is_empty())
            .last()
        else {
            continue;
        };
        total += 1;
        let symbol = outermost.split_whitespace().nth(1).unwrap_or("");
        let symbol = symbol.split('+').next().unwrap_or(symbol);
        if ["_start", "clone3", "__clone3", "start_thread"].contains(&symbol) {
            complete += 1;
        }
    }
    if total == 0 {
        0.0
    } else {
        100.0 * complete as f64 / total as f64
    }
}

fn measure(
    watcher: Watcher,
    rustc: &Path,
    source: &Path,
    scratch: &Path,
) -> anyhow::Result<RustcRun> {
    let out_dir = scratch.join("rustc-profile");
    let _ = std::fs::remove_dir_all(&out_dir);
    let wall_file = scratch.join("rustc-wall");
    let _ = std::fs::remove_file(&wall_file);
    let perf_data = scratch.join("rustc-perf.data");
    // rustc's own wall time, whatever watches it: the watcher's start and stop are not in it.
    let timed: Vec<std::ffi::OsString> = [
        "/usr/bin/time".into(),
        "-f".into(),
        "%e".into(),
        "-o".into(),
        wall_file.clone().into_os_string(),
        rustc.as_os_str().to_owned(),
        "-O".into(),
        "--edition".into(),
        "2021".into(),
        source.as_os_str().to_owned(),
        "-o".into(),
        scratch.join("rustc-big").into_os_string(),
    ]
    .into();
    let mut command = match watcher {
        Watcher::Nothing => Command::new(&timed[0]),
        Watcher::Profiler(options) => {
            let mut command = Command::new(profiler_bin());
            command
                .args(["record", "-F", "99"])
                .args(options)
                .arg("-o")
                .arg(&out_dir)
                .arg("--")
                .arg(&timed[0]);
            command
        }
        Watcher::PerfDwarf => {
            let mut command = Command::new("perf");
            command
                .args(["record", "-q", "-F", "99", "--call-graph", "dwarf", "-o"])
                .arg(&perf_data)
                .arg("--")
                .arg(&timed[0]);
            command
        }
    };
    let status = command
        .args(&timed[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("running rustc under {}", watcher.label()))?;
    anyhow::ensure!(status.success(), "{}: {status}", watcher.label());
    let seconds: f64 = std::fs::read_to_string(&wall_file)
        .context("rustc's wall time")?
        .trim()
        .parse()?;
    let mut run = RustcRun {
        seconds,
        ..RustcRun::default()
    };
    match watcher {
        Watcher::Nothing => {}
        Watcher::Profiler(_) => {
            run.complete_percent = Some(folded_complete_percent(&out_dir.join("cpu.folded")));
            let summary: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(out_dir.join("summary.json")).context("summary.json")?,
            )?;
            let number = |pointer: &str| summary.pointer(pointer).and_then(|v| v.as_f64());
            run.tables = number("/unwind/build_ms").zip(number("/unwind/rows"));
        }
        Watcher::PerfDwarf => {
            let script = Command::new("perf")
                .args(["script", "--no-inline", "-F", "comm,ip,sym", "-i"])
                .arg(&perf_data)
                .stderr(Stdio::null())
                .output()
                .context("running perf script")?;
            run.complete_percent = Some(perf_complete_percent(&String::from_utf8_lossy(
                &script.stdout,
            )));
        }
    }
    Ok(run)
}

/// Runs the rustc rounds; returns the results page's section.
pub(crate) fn section(runs: usize, scratch: &Path) -> anyhow::Result<String> {
    let source = scratch.join("big.rs");
    generate_source(&source, 1000)?;
    let rustc = rustc()?;
    let mut results: Vec<Vec<RustcRun>> = WATCHERS.iter().map(|_| Vec::new()).collect();
    let mut slowdowns: Vec<Vec<f64>> = WATCHERS.iter().map(|_| Vec::new()).collect();
    for round in 0..runs {
        let mut alone = None;
        for (index, watcher) in WATCHERS.iter().enumerate() {
            let run = measure(*watcher, &rustc, &source, scratch)?;
            let base = *alone.get_or_insert(run.seconds);
            eprintln!(
                "bench: rustc round {}/{runs} {}: {:.2} s ({:+.1}%), {} complete",
                round + 1,
                watcher.label(),
                run.seconds,
                100.0 * (run.seconds / base - 1.0),
                run.complete_percent
                    .map_or("—".to_owned(), |share| format!("{share:.1}%")),
            );
            slowdowns[index].push(100.0 * (run.seconds / base - 1.0));
            results[index].push(run);
        }
    }
    let mut table = String::from(
        "| configuration | rustc wall time | slower than alone, same round | complete stacks | \
         unwind tables |\n|---|---:|---:|---:|---|\n",
    );
    for (index, watcher) in WATCHERS.iter().enumerate() {
        let runs = &results[index];
        let seconds: Vec<f64> = runs.iter().map(|run| run.seconds).collect();
        let complete: Vec<f64> = runs.iter().filter_map(|run| run.complete_percent).collect();
        let tables = runs
            .iter()
            .filter_map(|run| run.tables)
            .map(|(ms, rows)| format!("{ms:.0} ms, {rows:.0} rows"))
            .next_back()
            .unwrap_or_else(|| "—".to_owned());
        let _ = writeln!(
            table,
            "| {} | {} | {} | {} | {tables} |",
            watcher.label(),
            report::median_and_range(&seconds, 2, " s"),
            if index == 0 {
                "—".to_owned()
            } else {
                report::median_and_range(&slowdowns[index], 1, "%")
            },
            if complete.is_empty() {
                "—".to_owned()
            } else {
                report::median_and_range(&complete, 1, "%")
            },
        );
    }
    Ok(format!(
        "## A big binary: rustc\n\n`rustc -O` ({}) compiling a generated file of 1000 \
         functions, at 99 Hz; each configuration once per round, in turn; median and range of \
         {runs} rounds. rustc's own wall time (`/usr/bin/time`), so the tools' start and stop \
         are not in it. Complete: the sample's stack starts at `_start` or `clone3` (for perf, \
         whose unwinder ends a thread's stack one frame short, at `start_thread`). Unwind \
         tables: as of the last round.\n\n{table}",
        rustc.display()
    ))
}
