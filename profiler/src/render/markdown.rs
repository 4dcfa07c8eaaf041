//! `summary.md`: the summary for people.

use std::fmt::Write as _;

use crate::{
    analysis::{
        Summary,
        io::IoSummary,
        memory::{MemorySite, MemorySummary},
        offcpu::OffCpuSummary,
    },
    text::{bytes, duration_us},
};

/// `summary.md`.
pub fn summary_markdown(summary: &Summary) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Profile of {}\n", md_code(&summary.run.target));
    md.push_str("## Verdict\n\n");
    for (rank, finding) in summary.verdict.iter().enumerate() {
        let _ = writeln!(md, "{}. {}", rank + 1, finding.text);
    }
    if summary.verdict.is_empty() {
        md.push_str("Nothing collected to judge.\n");
    }
    let _ = writeln!(md, "\n{}\n", summary.quality.text);
    let _ = writeln!(md, "- Command: {}", md_code(&summary.run.command.join(" ")));
    let pids: Vec<String> = summary.run.root_pids.iter().map(u32::to_string).collect();
    let _ = writeln!(
        md,
        "- Processes: {}{}",
        pids.join(", "),
        if summary.run.follow_children {
            " and their descendants"
        } else {
            ""
        }
    );
    let _ = write!(
        md,
        "- Duration: {:.2} s at {} Hz; stopped: {}",
        summary.run.duration_secs, summary.run.frequency_hz, summary.run.stop_reason
    );
    if let Some(code) = summary.run.exit_code {
        let _ = write!(md, " (exit code {code})");
    }
    md.push('\n');
    if let Some(attach) = summary.run.attach_ms {
        let _ = write!(
            md,
            "- Start-up: every program attached after {attach:.0} ms"
        );
        if let Some(first) = summary.run.first_sample_ms {
            let _ = write!(md, ", first sample after {first:.0} ms");
        }
        md.push('\n');
    }
    match &summary.run.unwind {
        Some(unwind) => {
            let _ = writeln!(
                md,
                "- User stacks: unwound with the `.eh_frame` tables of {} objects ({} of {} \
                 rows, built in {:.0} ms, {} from the cache); {} objects without tables \
                 walked by frame pointers",
                unwind.objects,
                unwind.rows,
                unwind.capacity,
                unwind.build_ms,
                unwind.from_cache,
                unwind.objects_without_tables
            );
            for object in &unwind.without_tables {
                let rows = if object.rows > 0 {
                    format!(" ({} rows)", object.rows)
                } else {
                    String::new()
                };
                let _ = writeln!(
                    md,
                    "  - `{}`: {}{rows}",
                    object.path,
                    object.reason.describe()
                );
            }
        }
        None => md.push_str("- User stacks: frame pointers only (`--unwind fp`)\n"),
    }
    if let Some(jit) = &summary.run.jit {
        let jvms = match jit.jvms {
            0 => String::new(),
            jvms => format!(
                "; {jvms} JVMs asked for theirs, {} maps written",
                jit.jvm_maps_written
            ),
        };
        let _ = writeln!(
            md,
            "- JIT code: {} processes, {} functions named by their runtimes' perf maps and \
             jitdump files{jvms} (see docs/runtimes.md)",
            jit.processes, jit.functions
        );
    }
    if let Some(python) = &summary.run.python {
        let _ = writeln!(
            md,
            "- Python: {} processes ({}), {} functions named, {} code objects unreadable (see \
             docs/runtimes.md)",
            python.processes,
            python.interpreters.join(", "),
            python.functions,
            python.unnamed
        );
    }
    if let Some(cpu) = &summary.cpu {
        let _ = writeln!(
            md,
            "- CPU samples: {} (lost: {}, stacks damaged: {}, unsymbolized frames: {:.1}%)",
            cpu.samples, cpu.lost_samples, cpu.damaged_stacks, cpu.unsymbolized_frames_percent
        );
        if summary.processes.len() > 1 {
            md.push_str(
                "\n## Processes\n\n| process | pid | samples | share |\n|---|---:|---:|---:|\n",
            );
            for process in &summary.processes {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {:.1}% |",
                    md_code(&process.name),
                    process.pid,
                    process.samples,
                    process.percent
                );
            }
        }
        for (title, list) in [
            (
                "Top functions by self time (leaf of the stack)",
                &cpu.top_self,
            ),
            (
                "Top functions by total time (anywhere on the stack)",
                &cpu.top_total,
            ),
        ] {
            let _ = writeln!(md, "\n## {title}\n");
            if list.is_empty() {
                md.push_str("No samples.\n");
                continue;
            }
            md.push_str("| share | samples | function | where |\n|---:|---:|---|---|\n");
            for function in list {
                let place = function
                    .location
                    .as_deref()
                    .or(function.module.as_deref())
                    .unwrap_or("");
                let _ = writeln!(
                    md,
                    "| {:.1}% | {} | {} | {} |",
                    function.percent,
                    function.samples,
                    md_code(&function.function),
                    md_code(place)
                );
            }
        }
        md.push_str("\n## Threads\n\n");
        if cpu.threads.is_empty() {
            md.push_str("No samples.\n");
        } else {
            md.push_str("| thread | pid | tid | samples | share |\n|---|---:|---:|---:|---:|\n");
            for thread in &cpu.threads {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {:.1}% |",
                    md_code(&thread.name),
                    thread.pid,
                    thread.tid,
                    thread.samples,
                    thread.percent
                );
            }
        }
    }
    if let Some(offcpu) = &summary.offcpu {
        offcpu_markdown(&mut md, offcpu);
    }
    if let Some(io) = &summary.io {
        io_markdown(&mut md, io);
    }
    if let Some(memory) = &summary.memory {
        memory_markdown(&mut md, memory);
    }
    let losses = &summary.losses;
    if losses.process_events_lost + losses.target_map_full > 0 {
        let _ = writeln!(
            md,
            "\n## Losses\n\n- process notifications lost: {}\n- child processes not followed (target map full): {}",
            losses.process_events_lost, losses.target_map_full
        );
    }
    md
}

fn md_code(text: &str) -> String {
    format!("`{}`", text.replace('`', "'").replace('|', "\\|"))
}

fn offcpu_markdown(md: &mut String, offcpu: &OffCpuSummary) {
    let _ = writeln!(
        md,
        "\n## Off-CPU time\n\n{} off-CPU in {} periods of at least {} µs ({} shorter periods, {}, \
         counted but not recorded).\n",
        duration_us(offcpu.total_us),
        offcpu.periods,
        offcpu.min_block_us,
        offcpu.filtered_periods,
        duration_us(offcpu.filtered_us)
    );
    if !offcpu.reasons.is_empty() {
        md.push_str("| reason | time | share |\n|---|---:|---:|\n");
        for reason in &offcpu.reasons {
            let _ = writeln!(
                md,
                "| {} | {} | {:.1}% |",
                reason.label,
                duration_us(reason.us),
                reason.percent
            );
        }
    }
    md.push_str("\n### Top blocking stacks\n\n");
    if offcpu.top_stacks.is_empty() {
        md.push_str("No off-CPU time recorded.\n");
    } else {
        md.push_str("| share | time | periods | thread | waiting in | called from | system call | reason |\n|---:|---:|---:|---|---|---|---|---|\n");
        for stack in &offcpu.top_stacks {
            let _ = writeln!(
                md,
                "| {:.1}% | {} | {} | {} | {} | {} | {} | {} |",
                stack.percent,
                duration_us(stack.us),
                stack.periods,
                md_code(&stack.thread),
                waiting_in(stack.function.as_deref(), stack.via.as_deref()),
                stack.caller.as_deref().map(md_code).unwrap_or_default(),
                stack.syscall.as_deref().map(md_code).unwrap_or_default(),
                stack.reason.label()
            );
        }
    }
    md.push_str("\n### Where each thread's time went\n\n");
    md.push_str("| thread | tid | on-CPU | blocked | runnable (waiting for a CPU) | total |\n|---|---:|---:|---:|---:|---:|\n");
    for thread in &offcpu.threads {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            md_code(&thread.name),
            thread.tid,
            thread
                .on_cpu_us
                .map(duration_us)
                .unwrap_or_else(|| "—".into()),
            duration_us(thread.blocked_us),
            duration_us(thread.runnable_us),
            duration_us(thread.total_us)
        );
    }
    md.push_str("\n### Run-queue latency (wakeup or preemption to running)\n\n");
    if offcpu.run_queue.is_empty() {
        md.push_str("No run-queue delays recorded.\n");
    } else {
        md.push_str("| thread | tid | delays | p50 | p99 | max | total |\n|---|---:|---:|---:|---:|---:|---:|\n");
        for rq in &offcpu.run_queue {
            let _ = writeln!(
                md,
                "| {} | {} | {} | ≤{} | ≤{} | {} | {} |",
                md_code(&rq.name),
                rq.tid,
                rq.count,
                duration_us(rq.p50_us),
                duration_us(rq.p99_us),
                duration_us(rq.max_us),
                duration_us(rq.total_us)
            );
        }
    }
}

fn io_markdown(md: &mut String, io: &IoSummary) {
    let _ = writeln!(
        md,
        "\n## I/O\n\n{} I/O system calls, {} in them.\n",
        io.calls,
        duration_us(io.total_us)
    );
    md.push_str("### Code paths by time in I/O calls\n\n");
    if io.top_stacks.is_empty() {
        md.push_str("No I/O calls recorded.\n");
    } else {
        md.push_str("| share | time | calls | call | function | caller | thread |\n|---:|---:|---:|---|---|---|---|\n");
        for stack in &io.top_stacks {
            let _ = writeln!(
                md,
                "| {:.1}% | {} | {} | {} | {} | {} | {} |",
                stack.percent,
                duration_us(stack.us),
                stack.calls,
                md_code(&stack.syscall),
                waiting_in(stack.function.as_deref(), stack.via.as_deref()),
                stack.caller.as_deref().map_or_else(String::new, md_code),
                md_code(&stack.thread)
            );
        }
    }
    md.push_str("\n### Files, pipes and sockets (slowest first)\n\n");
    if io.files.is_empty() {
        md.push_str("None.\n");
    } else {
        md.push_str("| path | kind | time | read | reads | written | writes | fsyncs | opens | errors |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for file in &io.files {
            let _ = writeln!(
                md,
                "| {} | {} | {:.0} µs | {} | {} | {} | {} | {} | {} | {} |",
                md_code(&file.path),
                file.kind,
                file.total_us,
                bytes(file.read_bytes),
                file.reads,
                bytes(file.write_bytes),
                file.writes,
                file.fsyncs,
                file.opens,
                file.errors
            );
        }
    }
    md.push_str("\n### System calls (slowest first)\n\n");
    if io.syscalls.is_empty() {
        md.push_str("None.\n");
    } else {
        md.push_str("| call | count | bytes | total | p50 | p99 | max | errors |\n|---|---:|---:|---:|---:|---:|---:|---:|\n");
        for call in &io.syscalls {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.0} µs | ≤{:.1} µs | ≤{:.1} µs | {:.1} µs | {} |",
                md_code(&call.name),
                call.count,
                bytes(call.bytes),
                call.total_us,
                call.p50_us,
                call.p99_us,
                call.max_us,
                call.errors
            );
        }
    }
    md.push_str("\n### Block devices (requests issued by the targets)\n\n");
    if io.devices.is_empty() {
        md.push_str("None: the targets issued no block requests themselves (page-cache hits, or writeback by kernel threads).\n");
    } else {
        md.push_str("| device | operation | requests | bytes | total | mean | max |\n|---|---|---:|---:|---:|---:|---:|\n");
        for device in &io.devices {
            let name = match &device.name {
                Some(name) => format!("{name} ({})", device.device),
                None => device.device.clone(),
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {:.0} µs | {:.1} µs | {:.1} µs |",
                md_code(&name),
                device.operation,
                device.requests,
                bytes(device.bytes),
                device.total_us,
                device.avg_us,
                device.max_us
            );
        }
    }
}

fn memory_markdown(md: &mut String, memory: &MemorySummary) {
    md.push_str("\n## Memory\n\n");
    if let Some(every) = memory.sampled_every_bytes {
        let _ = writeln!(
            md,
            "Sampled: about one allocation per {}, weighted up; figures are estimates.\n",
            bytes(every)
        );
    }
    let _ = writeln!(
        md,
        "- Allocated during the run: {} in {} allocations; freed {} ({}); live at the end {} ({})",
        bytes(memory.allocated_bytes),
        memory.allocations,
        bytes(memory.freed_bytes),
        memory.frees,
        bytes(memory.live_bytes),
        memory.live_allocations
    );
    let _ = writeln!(
        md,
        "- Peak heap in use: {} at {:.1} s; peak RSS: {} at {:.1} s (see `memory-timeline.svg`)",
        bytes(memory.peak_heap_bytes.max(0) as u64),
        memory.peak_heap_at_secs,
        bytes(memory.peak_rss_bytes),
        memory.peak_rss_at_secs
    );
    let m = &memory.mappings;
    let _ = writeln!(
        md,
        "- mmap: {} calls, {}; munmap: {} calls, {}; brk: {} calls, heap end moved {} bytes",
        m.mmap_count,
        bytes(m.mmap_bytes),
        m.munmap_count,
        bytes(m.munmap_bytes),
        m.brk_count,
        m.brk_bytes
    );
    let table = |md: &mut String, title: &str, sites: &[MemorySite], what: &str| {
        let _ = writeln!(md, "\n### {title}\n");
        if sites.is_empty() {
            md.push_str("None.\n");
            return;
        }
        let _ = writeln!(
            md,
            "| {what} | count | share | function | caller | via | live at end | mean lifetime | oldest live |\n|---:|---:|---:|---|---|---|---:|---:|---:|"
        );
        for site in sites {
            let _ = writeln!(
                md,
                "| {} | {} | {:.1}% | {} | {} | {} | {} | {:.1} µs | {:.1} s |",
                bytes(site.bytes),
                site.count,
                site.percent,
                site.function.as_deref().map_or_else(String::new, md_code),
                site.caller.as_deref().map_or_else(String::new, md_code),
                md_code(&site.allocator),
                bytes(site.live_bytes),
                site.mean_lifetime_us,
                site.oldest_live_secs
            );
        }
    };
    table(
        md,
        &format!(
            "Leak candidates (live at the end, older than {:.1} s)",
            memory.leak_age_secs
        ),
        &memory.leak_candidates,
        "leaked",
    );
    table(
        md,
        "Top allocating stacks",
        &memory.top_allocating,
        "allocated",
    );
    table(
        md,
        "Churn: allocations freed during the run",
        &memory.churn,
        "freed",
    );
}

/// A waiting function and the wrapper it waited through: `` `XLogFlush` via `fdatasync` ``.
fn waiting_in(function: Option<&str>, via: Option<&str>) -> String {
    match (function, via) {
        (Some(function), Some(via)) => format!("{} via {}", md_code(function), md_code(via)),
        (Some(function), None) => md_code(function),
        _ => String::new(),
    }
}
