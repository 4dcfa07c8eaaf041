//! The allocator probes: attached in a process's allocator objects, as soon as their programs
//! are verified for a launched command, and detached all at once.

use std::path::{Path, PathBuf};

use aya::programs::{
    UProbe,
    uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLink, UProbeScope},
};

use super::{error::program_error, probes::KernelProbes, programs::ALLOC_PROGRAMS};
use crate::kernel::ProbeError;

/// The allocator functions of one object to probe in one process.
#[derive(Clone, Debug)]
pub struct AllocatorProbes {
    /// The process.
    pub pid: u32,
    /// The object's file, as the kernel should open it.
    pub path: PathBuf,
    /// `(function name, the probe's offset in the file, cookie, is free)` each.
    pub functions: Vec<(&'static str, u64, u64, bool)>,
}

/// Attaches program `program_name` (one of [`ALLOC_PROGRAMS`]) to the functions of `probes`
/// it serves: the allocating functions' entries and returns, or the freeing functions'
/// entries. Returns their links.
pub(super) fn attach(
    program_name: &str,
    program: &mut UProbe,
    probes: &AllocatorProbes,
) -> Result<Vec<UProbeLink>, ProbeError> {
    let AllocatorProbes {
        pid,
        path,
        functions,
    } = probes;
    let scope = UProbeScope::OneProcess(std::num::NonZeroU32::new(*pid).expect("pids are not 0"));
    let wants_free = program_name == "free_enter";
    let mut links = Vec::new();
    for &(name, offset, cookie, is_free) in functions {
        if is_free != wants_free {
            continue;
        }
        let point = UProbeAttachPoint {
            location: UProbeAttachLocation::AbsoluteOffset(offset),
            cookie: Some(cookie),
        };
        let what = || format!("attaching to {name} in {} of process {pid}", path.display());
        let id = program
            .attach(point, path, scope)
            .map_err(|err| program_error(what(), err))?;
        links.push(
            program
                .take_link(id)
                .map_err(|err| program_error(what(), err))?,
        );
    }
    Ok(links)
}

impl KernelProbes {
    /// Probes the allocator functions `functions` of the object at `path` in process `pid`
    /// (see [`AllocatorProbes::functions`]). Returns how many probes were attached.
    pub fn attach_allocator(
        &mut self,
        pid: u32,
        path: &Path,
        functions: &[(&'static str, u64, u64, bool)],
    ) -> Result<usize, ProbeError> {
        let probes = AllocatorProbes {
            pid,
            path: path.to_owned(),
            functions: functions.to_vec(),
        };
        let mut attached = 0;
        for program_name in ALLOC_PROGRAMS {
            let program: &mut UProbe = self
                .ebpf
                .program_mut(program_name)
                .expect("uprobe program is in the object")
                .try_into()
                .expect("uprobe program");
            let links = attach(program_name, program, &probes)?;
            attached += links.len();
            self.uprobe_links.extend(links);
        }
        Ok(attached)
    }

    /// Detaches the allocator probes, all at once (see [`detach_all`]).
    pub fn detach_uprobes(&mut self) {
        detach_all(std::mem::take(&mut self.uprobe_links));
    }
}

impl Drop for KernelProbes {
    /// A run that ends early (stopped while loading, a target gone) detaches its probes
    /// all at once too.
    fn drop(&mut self) {
        self.detach_uprobes();
    }
}

/// Detaches `links` all at once. Each uprobe detach waits for an RCU grace period (over
/// 100 ms here); one after the other, twenty of them took 2.6 s.
pub(super) fn detach_all(links: Vec<UProbeLink>) {
    std::thread::scope(|scope| {
        for link in links {
            scope.spawn(move || drop(link));
        }
    });
}
