//! Threads that exited are folded, at each drain, into one thread of the same process and
//! name: a service starting a thread per request keeps a flat collector.

use std::{
    collections::{HashMap, HashSet},
    hash::Hash,
    ops::AddAssign,
};

use profiler_common::{COMM_LEN, IoKey, OffCpuKey, SampleKey};

use super::collection::Collection;
use crate::target::procfs;

/// A key of the per-thread tables the kernel fills: whose thread it counts, and the same key
/// for another thread.
pub(super) trait ThreadKey: Copy + Eq + Hash {
    fn thread(&self) -> (u32, u32, [u8; COMM_LEN]);
    fn with_tid(self, tid: u32) -> Self;
}

macro_rules! thread_key {
    ($($key:ty),*) => {$(
        impl ThreadKey for $key {
            fn thread(&self) -> (u32, u32, [u8; COMM_LEN]) {
                (self.tgid, self.tid, self.comm)
            }

            fn with_tid(self, tid: u32) -> Self {
                Self { tid, ..self }
            }
        }
    )*};
}

thread_key!(SampleKey, OffCpuKey, IoKey);

/// Moves the values of exited threads' keys to the thread `into` names for them.
fn fold<K: ThreadKey, V: AddAssign + Default>(
    table: &mut HashMap<K, V>,
    exited: impl Fn(u32, u32) -> bool,
    mut into: impl FnMut(u32, u32, [u8; COMM_LEN]) -> u32,
) {
    let moved: Vec<K> = table
        .keys()
        .filter(|key| {
            let (tgid, tid, _) = key.thread();
            exited(tgid, tid)
        })
        .copied()
        .collect();
    for key in moved {
        let (tgid, tid, comm) = key.thread();
        let target = into(tgid, tid, comm);
        if target != tid
            && let Some(value) = table.remove(&key)
        {
            *table.entry(key.with_tid(target)).or_default() += value;
        }
    }
}

/// The targets' threads alive at one moment.
pub(super) struct LiveThreads(HashSet<u32>);

impl Collection {
    /// The targets' threads alive now.
    pub(super) fn live_threads(&self) -> LiveThreads {
        LiveThreads(
            self.processes
                .processes
                .keys()
                .flat_map(|&pid| procfs::threads(pid).into_iter().map(|thread| thread.tid))
                .collect(),
        )
    }

    /// `key`, or the same key for the thread the counts of its thread are folded into, if
    /// its thread is not in `live`.
    pub(super) fn folded<K: ThreadKey>(&mut self, live: &LiveThreads, key: K) -> K {
        let (tgid, tid, comm) = key.thread();
        if tid == tgid || live.0.contains(&tid) {
            return key;
        }
        key.with_tid(*self.representatives.entry((tgid, comm)).or_insert(tid))
    }

    /// Folds the counts of threads that exited into one thread per (process, name), the first
    /// seen: a service that starts a thread per request would otherwise grow the collector's
    /// state by a key per thread, forever. Exited threads' samples stay, under that thread.
    pub(super) fn fold_exited_threads(&mut self) {
        let live = self.live_threads().0;
        let exited = |tgid: u32, tid: u32| tid != tgid && !live.contains(&tid);
        let representatives = &mut self.representatives;
        let mut into = |tgid: u32, tid: u32, comm: [u8; COMM_LEN]| {
            *representatives.entry((tgid, comm)).or_insert(tid)
        };
        fold(&mut self.counts, exited, &mut into);
        fold(&mut self.offcpu, exited, &mut into);
        fold(&mut self.io, exited, &mut into);
    }
}
