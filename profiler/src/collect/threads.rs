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

/// Moves the values of the keys `folded` maps to another key there.
fn fold<K: ThreadKey, V: AddAssign + Default>(
    table: &mut HashMap<K, V>,
    mut folded: impl FnMut(K) -> K,
) {
    let moved: Vec<(K, K)> = table
        .keys()
        .filter_map(|&key| {
            let into = folded(key);
            (into != key).then_some((key, into))
        })
        .collect();
    for (key, into) in moved {
        if let Some(value) = table.remove(&key) {
            *table.entry(into).or_default() += value;
        }
    }
}

/// The targets' threads alive at one moment.
pub(super) struct LiveThreads(HashSet<u32>);

impl LiveThreads {
    /// `key`, or, if its thread is not alive, the same key for the thread its counts are
    /// folded into: the first of its process and name in `representatives`.
    pub(super) fn folded<K: ThreadKey>(
        &self,
        representatives: &mut HashMap<(u32, [u8; COMM_LEN]), u32>,
        key: K,
    ) -> K {
        let (tgid, tid, comm) = key.thread();
        if tid == tgid || self.0.contains(&tid) {
            return key;
        }
        key.with_tid(*representatives.entry((tgid, comm)).or_insert(tid))
    }
}

/// The threads of `pids` alive now.
fn live_threads_of(pids: impl IntoIterator<Item = u32>) -> LiveThreads {
    LiveThreads(pids.into_iter().flat_map(procfs::thread_ids).collect())
}

impl Collection {
    /// The targets' threads alive now.
    pub(super) fn live_threads(&self) -> LiveThreads {
        live_threads_of(self.processes.live_pids())
    }

    /// Folds the counts of threads that exited into one thread per (process, name), the first
    /// seen: a service that starts a thread per request would otherwise grow the collector's
    /// state by a key per thread, forever. Exited threads' samples stay, under that thread.
    pub(super) fn fold_exited_threads(&mut self) {
        // Only processes with counts of threads other than their first: host-wide, listing
        // every process's threads each drain was much of the collector's work.
        let pids: HashSet<u32> = (self.counts.keys().map(ThreadKey::thread))
            .chain(self.offcpu.keys().map(ThreadKey::thread))
            .chain(self.io.keys().map(ThreadKey::thread))
            .filter(|&(tgid, tid, _)| tgid != tid)
            .map(|(tgid, ..)| tgid)
            .collect();
        let live = live_threads_of(pids);
        let representatives = &mut self.representatives;
        fold(&mut self.counts, |key| live.folded(representatives, key));
        fold(&mut self.offcpu, |key| live.folded(representatives, key));
        fold(&mut self.io, |key| live.folded(representatives, key));
    }
}
