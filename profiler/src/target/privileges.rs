//! Checking, before anything is loaded, that this process may use eBPF and perf events.

/// `CAP_SYS_PTRACE`: read memory maps of other users' processes.
pub const CAP_SYS_PTRACE: u32 = 19;
/// `CAP_SYS_ADMIN`: implies the BPF and perf capabilities on any kernel.
pub const CAP_SYS_ADMIN: u32 = 21;
/// `CAP_PERFMON`: open perf events.
pub const CAP_PERFMON: u32 = 38;
/// `CAP_BPF`: load eBPF programs and create maps.
pub const CAP_BPF: u32 = 39;

fn cap_name(cap: u32) -> &'static str {
    match cap {
        CAP_SYS_PTRACE => "CAP_SYS_PTRACE",
        CAP_SYS_ADMIN => "CAP_SYS_ADMIN",
        CAP_PERFMON => "CAP_PERFMON",
        CAP_BPF => "CAP_BPF",
        _ => "CAP_?",
    }
}

/// Effective capability mask from the text of `/proc/self/status`.
fn effective_caps(status: &str) -> Option<u64> {
    let hex = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// Capabilities missing for profiling, given an effective mask.
fn missing_caps(effective: u64) -> Vec<u32> {
    let has = |cap: u32| effective & (1 << cap) != 0;
    if has(CAP_SYS_ADMIN) {
        return Vec::new();
    }
    [CAP_BPF, CAP_PERFMON]
        .into_iter()
        .filter(|&cap| !has(cap))
        .collect()
}

/// This process lacks capabilities loading eBPF programs needs.
#[derive(Debug, thiserror::Error)]
#[error(
    "the profiler needs root or the capabilities CAP_BPF and CAP_PERFMON (missing: {}): run it \
     with sudo, or `setcap cap_bpf,cap_perfmon,cap_sys_ptrace+ep` on the binary",
    missing.join(", ")
)]
pub struct MissingCapabilities {
    /// Names of the capabilities missing.
    pub missing: Vec<&'static str>,
}

/// Fails with an explanation when this process lacks what loading eBPF programs needs.
pub fn check() -> Result<(), MissingCapabilities> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let Some(effective) = effective_caps(&status) else {
        return Ok(()); // Cannot tell; let the kernel decide and report.
    };
    let missing = missing_caps(effective);
    if missing.is_empty() {
        return Ok(());
    }
    Err(MissingCapabilities {
        missing: missing.iter().map(|&cap| cap_name(cap)).collect(),
    })
}

/// Whether this process may read the maps of processes of other users.
pub fn can_trace_others() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    effective_caps(&status).is_some_and(|caps| caps & (1 << CAP_SYS_PTRACE) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_capability_masks() {
        let status = "Name:\tx\nCapEff:\t000001ffffffffff\n";
        assert_eq!(effective_caps(status), Some(0x1ff_ffff_ffff));
        assert!(missing_caps(0x1ff_ffff_ffff).is_empty());
        assert_eq!(missing_caps(0), vec![CAP_BPF, CAP_PERFMON]);
        assert_eq!(missing_caps(1 << CAP_BPF), vec![CAP_PERFMON]);
        assert!(missing_caps(1 << CAP_SYS_ADMIN).is_empty());
        assert_eq!(effective_caps("Name: x\n"), None);
    }
}
