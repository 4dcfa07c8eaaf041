//! `profiler`: low-overhead eBPF profiler for Linux.
//!
//! `profiler attach PID` and `profiler record -- CMD` collect CPU samples with eBPF programs
//! (see `profiler-ebpf`), symbolize them and write folded stacks, flamegraphs and a summary.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use profiler::{
    analysis::{self, Summary},
    check,
    cli::{Cli, Command},
    collect,
    collect::config::{RunConfig, TargetSpec},
    model::{PROFILE_FILE, Profile, synthetic},
    output::{self, OutputDir},
    render,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let verbose = match &cli.command {
        Command::Attach { options, .. } | Command::Record { options, .. } => {
            options.collect.verbose
        }
        Command::Agent(args) => args.collect.verbose,
        Command::Report { .. }
        | Command::Diff { .. }
        | Command::Synthesize { .. }
        | Command::Check => false,
    };
    // The eBPF programs log under the `profiler` target, like the collector; dependencies stay
    // at warnings even with --verbose.
    env_logger::Builder::new()
        .filter_level(log::LevelFilter::Warn)
        .filter_module(
            "profiler",
            if verbose {
                log::LevelFilter::Debug
            } else {
                log::LevelFilter::Warn
            },
        )
        .format_timestamp(None)
        .init();
    match run(cli.command) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("profiler: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Exit code of `diff` when a function grew past `--fail-above`.
const REGRESSION_EXIT_CODE: u8 = 3;
/// Exit code when the results could not be written to the output folder and went to a
/// temporary folder instead (printed).
const RESULTS_ELSEWHERE_EXIT_CODE: u8 = 4;

/// A saved profile from an output folder or the file itself, read with the sudo user's rights.
fn load_profile(path: &std::path::Path) -> anyhow::Result<Profile> {
    let (file, path) = output::open_for_reading(path, PROFILE_FILE)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(Profile::read(
        std::io::BufReader::new(file),
        &path.display().to_string(),
    )?)
}

fn diff(
    before: &std::path::Path,
    after: &std::path::Path,
    output: Option<std::path::PathBuf>,
    fail_above: Option<f64>,
) -> anyhow::Result<ExitCode> {
    let before = load_profile(before)?;
    let after = load_profile(after)?;
    let dir = output.unwrap_or_else(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        output::default_dir(
            &format!("diff-{}", after.run.target),
            &output::local_stamp(now),
        )
    });
    let out = OutputDir::prepare(&dir)
        .with_context(|| format!("cannot use output folder {}", dir.display()))?;
    let (summary, written) = render::diff::write_diff(&before, &after, fail_above, &out)
        .with_context(|| format!("writing the diff to {}", dir.display()))?;
    if summary.kinds.is_empty() {
        eprintln!("profiler: warning: the two profiles have no event kind in common");
    }
    for kind in &summary.kinds {
        if let Some(top) = kind.grew.first() {
            eprintln!(
                "profiler: {}: `{}` grew most, {:.1}% → {:.1}% ({:+.1} points)",
                kind.kind, top.function, top.before_percent, top.after_percent, top.delta_points
            );
        }
    }
    eprintln!(
        "profiler: results in {}/ ({})",
        dir.display(),
        written.join(", ")
    );
    if summary.regressions.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    for regression in &summary.regressions {
        eprintln!("profiler: regression: {regression}");
    }
    Ok(ExitCode::from(REGRESSION_EXIT_CODE))
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    let (spec, config) = match command {
        Command::Check => {
            let (text, ok) = check::report(&check::run_checks());
            print!("{text}");
            return Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        Command::Report { dir } => {
            let profile = load_profile(&dir)?;
            let output = OutputDir::prepare(&dir)
                .with_context(|| format!("cannot use output folder {}", dir.display()))?;
            let summary = analysis::summarize(&profile);
            let written = render::render_all(&profile, &summary, &output)
                .with_context(|| format!("writing results to {}", dir.display()))?;
            eprintln!(
                "profiler: rendered {} in {}",
                written.join(", "),
                dir.display()
            );
            return Ok(ExitCode::SUCCESS);
        }
        Command::Synthesize {
            samples,
            stacks,
            output,
        } => {
            let profile = synthetic::cpu_profile(samples, stacks.max(1));
            let out = OutputDir::prepare(&output)?;
            let mut saved = Vec::new();
            profile.save(&mut saved)?;
            out.write(PROFILE_FILE, &saved)?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Diff {
            before,
            after,
            output,
            fail_above,
        } => return diff(&before, &after, output, fail_above),
        Command::Agent(args) => return profiler::agent::run(args),
        Command::Attach {
            pids,
            select,
            children,
            options,
        } => (
            match select.selection() {
                Some(selection) => TargetSpec::System(selection),
                None => TargetSpec::Attach { pids, children },
            },
            RunConfig::from(options),
        ),
        Command::Record {
            no_children,
            select,
            options,
            command,
        } => (
            TargetSpec::Launch {
                argv: command,
                children: !no_children,
                others: select.selection(),
            },
            RunConfig::from(options),
        ),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let collect::Outcome {
        profile,
        output,
        exit_code,
        detaching,
    } = runtime.block_on(collect::run(spec, config))?;
    let result = write_results(&profile, &output, exit_code);
    // Nothing stays attached: the programs finish detaching before the profiler exits.
    if detaching.join().is_err() {
        eprintln!("profiler: warning: detaching the eBPF programs failed");
    }
    result
}

/// Writes the results into the output folder, or into a temporary folder if that fails.
fn write_results(
    profile: &Profile,
    output: &OutputDir,
    exit_code: i32,
) -> anyhow::Result<ExitCode> {
    // Computed once: the files and the lines printed here say the same.
    let summary = analysis::summarize(profile);
    match render::render_all(profile, &summary, output) {
        Ok(written) => {
            print_result(&summary, output, &written);
            Ok(ExitCode::from(u8::try_from(exit_code).unwrap_or(1)))
        }
        Err(err) => {
            // Never lose what was collected: fall back to a new private (0700) folder, made
            // like the output folder (the sudo user's, by their rights).
            let fallback_output = OutputDir::private_temporary()
                .context("cannot create a temporary folder for the results")?;
            let fallback = fallback_output.path();
            let written = render::render_all(profile, &summary, &fallback_output)
                .with_context(|| format!("writing results to {}", fallback.display()))?;
            print_result(&summary, &fallback_output, &written);
            eprintln!(
                "profiler: error: cannot write results to {}: {err}; they were saved in {} instead",
                output.path().display(),
                fallback.display()
            );
            Ok(ExitCode::from(RESULTS_ELSEWHERE_EXIT_CODE))
        }
    }
}

fn print_result(summary: &Summary, output: &OutputDir, written: &[String]) {
    if let Some(cpu) = &summary.cpu {
        let top = cpu
            .top_self
            .first()
            .map(|f| format!("; hottest: {} ({:.1}%)", f.function, f.percent))
            .unwrap_or_default();
        eprintln!(
            "profiler: {} samples in {:.1} s ({}), {} lost{top}",
            cpu.samples, summary.run.duration_secs, summary.run.stop_reason, cpu.lost_samples
        );
    }
    eprintln!(
        "profiler: results in {}/ ({})",
        output.path().display(),
        written.join(", ")
    );
}
