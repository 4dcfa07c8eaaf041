//! `profiler check`: what this kernel and this user can do, one line per capability, each with
//! what to do when it fails. Loads and attaches the real programs (to the profiler itself),
//! then drops them: nothing stays behind.

use std::{path::Path, time::Instant};

use crate::{
    kernel::{KernelProbes, LoadOptions, tracefs},
    target::{allocators, privileges, procfs},
    text::error_chain,
};

/// The outcome of one check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Works.
    Pass,
    /// Does not work; the profiler (or part of it) cannot run.
    Fail,
    /// Not used by the profiler; reported for the record.
    Info,
}

/// One line of the report.
#[derive(Clone, Debug)]
pub struct Check {
    /// What was checked.
    pub name: &'static str,
    /// The outcome.
    pub verdict: Verdict,
    /// What was found, and on failure what to do.
    pub detail: String,
}

impl Check {
    fn new(name: &'static str, result: Result<String, String>) -> Self {
        match result {
            Ok(detail) => Check {
                name,
                verdict: Verdict::Pass,
                detail,
            },
            Err(detail) => Check {
                name,
                verdict: Verdict::Fail,
                detail,
            },
        }
    }
}

/// Whether an error comes from a permission the kernel denied (EPERM, EACCES).
fn denied(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(err);
    while let Some(error) = cause {
        if error
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| matches!(io.raw_os_error(), Some(libc::EPERM | libc::EACCES)))
        {
            return true;
        }
        cause = error.source();
    }
    false
}

/// Runs every check, in the order a run would need them.
pub fn run_checks() -> Vec<Check> {
    let mut checks = Vec::new();
    checks.push(kernel(&crate::kernel::release()));
    let privileged = privileges::check();
    checks.push(Check::new(
        "capabilities",
        privileged
            .as_ref()
            .map(|()| "CAP_BPF and CAP_PERFMON (or root)".to_owned())
            .map_err(ToString::to_string),
    ));
    checks.push(if privileges::can_trace_others() {
        Check::new(
            "ptrace",
            Ok("CAP_SYS_PTRACE: processes of other users too".into()),
        )
    } else {
        // Not a failure: profiling one's own processes needs no more.
        Check {
            name: "ptrace",
            verdict: Verdict::Info,
            detail: "no CAP_SYS_PTRACE: other users' processes only where the kernel lets \
                     CAP_PERFMON read their memory map; run with sudo to be sure"
                .into(),
        }
    });
    checks.push(Check::new("BTF", btf()));
    checks.push(Check::new(
        "tracefs",
        tracefs::ensure_mounted()
            .map(|path| format!("{} (classic tracepoints)", path.display()))
            .map_err(|err| err.to_string()),
    ));
    checks.push(kprobes());
    if privileged.is_err() {
        checks.push(Check::new(
            "eBPF programs",
            Err("not tried: needs the capabilities above".into()),
        ));
        return checks;
    }
    let started = Instant::now();
    let options = LoadOptions {
        verbose: false,
        min_block_ns: 1000,
        offcpu_stack_sampling: true,
        cpu: true,
        scheduler: true,
        io: true,
        alloc: true,
        alloc_sample_bytes: 0,
        unwind_rows: Some(1024),
        sample_first: false,
        report_untargeted_execs: false,
        run_delays_from_wakeups: false,
    };
    let mut probes = match KernelProbes::load(options, &[]) {
        Ok(probes) => probes,
        Err(err) => {
            // Blame the verifier only when it was the verifier: a tracefs this user cannot
            // read, or a permission the kernel denied, says so itself.
            let hint = match &err {
                crate::kernel::ProbeError::Tracefs(_) => "",
                _ if err.refused_by_verifier() => "",
                _ if denied(&err) => ": permission denied; run as root (sudo)",
                _ => ": the kernel refused them; `profiler record -v` shows the verifier's log",
            };
            checks.push(Check::new(
                "eBPF programs",
                Err(format!("{}{hint}", error_chain(&err))),
            ));
            return checks;
        }
    };
    checks.push(Check::new(
        "eBPF programs",
        Ok(format!(
            "verified and loaded (CPU, scheduler, I/O, allocation, unwinder; bpf_loop, ring \
             buffer) in {:.0} ms",
            started.elapsed().as_secs_f64() * 1000.0
        )),
    ));
    checks.push(Check::new(
        "stack walker",
        Ok(if probes.stack_walker_inlined() {
            "inlined into each program that walks: this kernel gives BPF programs no private \
             stacks, so the walks of system-call exits and switch-outs are programs of their \
             own, entered by tail call"
        } else {
            "one function, verified once per program (private stacks)"
        }
        .to_owned()),
    ));
    let describe = |result: Result<(), crate::kernel::ProbeError>, ok: &str| {
        result
            .map(|()| ok.to_owned())
            .map_err(|err| error_chain(&err))
    };
    checks.push(Check::new(
        "perf events",
        describe(
            probes.attach_cpu_sampling(99),
            "CPU-clock sampling on every online CPU",
        ),
    ));
    checks.push(Check::new(
        "BTF tracepoints",
        describe(
            probes.attach_process_tracking(),
            "sched_process_fork, sched_process_exec",
        ),
    ));
    checks.push(Check::new(
        "tracepoints",
        describe(
            probes
                .attach_scheduler(0)
                .and_then(|()| probes.attach_syscalls())
                .and_then(|()| probes.attach_block()),
            "sched_switch (and sched_wakeup without sched_info), task_rename, raw_syscalls, \
             block_rq_issue/complete",
        ),
    ));
    checks.push(Check::new("uprobes", uprobes(&mut probes)));
    probes.detach_uprobes();
    drop(probes);
    checks
}

/// Oldest kernel whose verifier takes the programs: `bpf_loop` (5.17) and maps allocated on
/// demand in perf-event programs (6.1).
const MIN_KERNEL: (u32, u32) = (6, 1);

/// Kernel series the project tests, and how: `cargo xtask vm-test` boots Debian's 6.1, 6.12
/// and newest backported 7.x packages and runs `check` and a test of every event kind and both
/// unwinders in each; the whole suite runs on the development machines' 6.18.
const TESTED_KERNELS: &[((u32, u32), &str)] = &[
    ((6, 1), "Debian 12's kernel, by cargo xtask vm-test"),
    (
        (6, 12),
        "Debian 12 backports' kernel, by cargo xtask vm-test",
    ),
    ((6, 18), "the whole test suite"),
    (
        (7, 3),
        "Debian 13 backports' kernel, by cargo xtask vm-test",
    ),
];

fn kernel(release: &str) -> Check {
    let found = format!("Linux {release} {}", std::env::consts::ARCH);
    match crate::kernel::series(release) {
        Some((major, minor)) if (major, minor) < MIN_KERNEL => Check::new(
            "kernel",
            Err(format!(
                "{found}: the eBPF programs need Linux {}.{} or newer; profile on a newer kernel",
                MIN_KERNEL.0, MIN_KERNEL.1
            )),
        ),
        Some((major, minor)) => {
            let tested = TESTED_KERNELS
                .iter()
                .find(|(series, _)| *series == (major, minor));
            Check::new(
                "kernel",
                Ok(match tested {
                    Some((_, how)) => format!("{found}; a tested series ({how})"),
                    None => format!(
                        "{found}; not a tested series (tested: {}); the checks below say what \
                         works here",
                        TESTED_KERNELS
                            .iter()
                            .map(|((major, minor), _)| format!("{major}.{minor}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                }),
            )
        }
        None => Check::new("kernel", Ok(found)),
    }
}

fn btf() -> Result<String, String> {
    let path = Path::new(crate::kernel::btf::VMLINUX_BTF);
    std::fs::metadata(path)
        .map(|metadata| {
            format!(
                "{} ({:.1} MiB)",
                path.display(),
                metadata.len() as f64 / (1 << 20) as f64
            )
        })
        .map_err(|err| {
            format!(
                "{}: {err}: the kernel needs CONFIG_DEBUG_INFO_BTF=y (most distribution kernels \
                 have it)",
                path.display()
            )
        })
}

/// kprobes are not used (tracepoints and uprobes are the stable interfaces), only reported.
fn kprobes() -> Check {
    let available = Path::new("/sys/kernel/tracing/kprobe_events").exists()
        || Path::new("/sys/kernel/debug/tracing/kprobe_events").exists();
    Check {
        name: "kprobes",
        verdict: Verdict::Info,
        detail: if available {
            "available (not needed)".into()
        } else {
            "not available (CONFIG_KPROBES off): not needed".into()
        },
    }
}

/// Attaches the allocation probes to the profiler's own allocator.
fn uprobes(probes: &mut KernelProbes) -> Result<String, String> {
    let pid = std::process::id();
    let objects = allocators::allocator_objects(&procfs::proc_root(), pid, None);
    let Some(object) = objects.first() else {
        return Err("no allocator found in the profiler's own memory map to try".into());
    };
    probes
        .attach_allocator(pid, &object.attach_path, &object.probe_list())
        .map(|count| format!("{count} allocator functions in {}", object.path))
        .map_err(|err| error_chain(&err))
}

/// The report as text: one line per check, and whether everything needed passed.
pub fn report(checks: &[Check]) -> (String, bool) {
    let mut text = String::new();
    for check in checks {
        let label = match check.verdict {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::Info => "INFO",
        };
        text.push_str(&format!("{label}  {:<16} {}\n", check.name, check.detail));
    }
    let ok = checks.iter().all(|check| check.verdict != Verdict::Fail);
    (text, ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_older_than_6_1_fail() {
        assert_eq!(kernel("6.18.0-1-amd64").verdict, Verdict::Pass);
        assert_eq!(kernel("6.1.0-27-amd64").verdict, Verdict::Pass);
        assert!(kernel("6.1.0-27-amd64").detail.contains("a tested series"));
        let untested = kernel("6.8.0-1-generic");
        assert_eq!(untested.verdict, Verdict::Pass);
        assert!(
            untested
                .detail
                .contains("not a tested series (tested: 6.1, 6.12, 6.18, 7.3)"),
            "{}",
            untested.detail
        );
        assert_eq!(kernel("10.0").verdict, Verdict::Pass);
        let old = kernel("5.15.0-91-generic");
        assert_eq!(old.verdict, Verdict::Fail);
        assert!(old.detail.contains("Linux 6.1 or newer"), "{}", old.detail);
        // Unparseable: let the programs' own check speak.
        assert_eq!(kernel("").verdict, Verdict::Pass);
    }

    #[test]
    fn report_fails_on_any_failed_check() {
        let checks = vec![
            Check::new("BTF", Ok("/sys/kernel/btf/vmlinux".into())),
            Check {
                name: "kprobes",
                verdict: Verdict::Info,
                detail: "not available".into(),
            },
        ];
        let (text, ok) = report(&checks);
        assert!(ok);
        assert!(text.starts_with("PASS  BTF"), "{text}");
        let mut failing = checks.clone();
        failing.push(Check::new("tracefs", Err("not mounted: mount it".into())));
        let (text, ok) = report(&failing);
        assert!(!ok);
        assert!(
            text.contains("FAIL  tracefs          not mounted: mount it"),
            "{text}"
        );
    }
}
