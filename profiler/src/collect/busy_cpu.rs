//! The CPUs' busy time, and how many there are, which the overhead budget measures the
//! programs' time against.

use std::io::{BufRead, Read as _};

/// Busy time of all CPUs so far, ns: `/proc/stat`'s first line less idle and I/O wait.
pub(super) fn busy_cpu_ns() -> Option<u64> {
    let file = std::fs::File::open("/proc/stat").ok()?;
    let mut line = String::new();
    std::io::BufReader::new(file)
        .take(4096)
        .read_line(&mut line)
        .ok()?;
    busy_ns_of(&line, clock_ticks_per_second())
}

/// CPUs online: all that `/proc/stat`'s busy time is of (the profiler's own affinity, which
/// `available_parallelism` follows, does not limit it).
pub(super) fn online_cpus() -> u64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as u64
}

fn busy_ns_of(line: &str, ticks_per_second: u64) -> Option<u64> {
    let mut fields = line.split_ascii_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let ticks: Vec<u64> = fields.map_while(|field| field.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal ...
    let &[user, nice, system, _idle, _iowait, irq, softirq, steal, ..] = ticks.as_slice() else {
        return None;
    };
    let busy = user + nice + system + irq + softirq + steal;
    Some(busy.saturating_mul(1_000_000_000 / ticks_per_second.max(1)))
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as u64 } else { 100 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_time_leaves_out_idle_and_io_wait() {
        let line = "cpu  100 5 50 1000 30 7 3 2 0 0\n";
        assert_eq!(busy_ns_of(line, 100), Some(167 * 10_000_000));
        assert_eq!(busy_ns_of("cpu0 1 2 3 4 5 6 7 8", 100), None);
        assert_eq!(busy_ns_of("cpu 1 2 3", 100), None);
    }
}
