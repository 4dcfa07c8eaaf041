//! The collection's count tables: drained counts added within the `--max-memory` budget, and
//! what went to the spool taken back at the end.

use std::{collections::HashMap, hash::Hash, ops::AddAssign};

use profiler_common::{IoKey, IoTotal, OffCpuKey, OffCpuTime, SampleKey};

use super::{collection::Collection, spool::Record};

impl Collection {
    /// What the counts kept between drains take, roughly: entries times key, value and the
    /// hash table's own overhead.
    pub(super) fn state_bytes(&self) -> u64 {
        const TABLE_OVERHEAD: usize = 16;
        let size = |entries: usize, key: usize, value: usize| {
            (entries * (key + value + TABLE_OVERHEAD)) as u64
        };
        size(self.counts.len(), size_of::<SampleKey>(), 8)
            + size(
                self.offcpu.len(),
                size_of::<OffCpuKey>(),
                size_of::<OffCpuTime>(),
            )
            + size(self.io.len(), size_of::<IoKey>(), size_of::<IoTotal>())
    }

    /// Takes back what the spool holds, the earliest first, then what is still in memory,
    /// as the drains would have kept it: exited threads folded, and past `--max-memory` new
    /// keys dropped and counted.
    pub(super) fn take_back_spooled(&mut self) {
        if !self.spool.holds_any() {
            return;
        }
        let mut spool = std::mem::take(&mut self.spool);
        let recent = (
            std::mem::take(&mut self.stacks),
            std::mem::take(&mut self.counts),
            std::mem::take(&mut self.offcpu),
            std::mem::take(&mut self.io),
        );
        let live = self.live_threads();
        let add = |this: &mut Self, record: Record| {
            let full = this.state_bytes() >= this.max_state_bytes;
            match record {
                Record::UserStack(id, stack) => {
                    this.stacks.user.entry(id).or_insert(stack);
                }
                Record::KernelStack(id, frames) => {
                    this.stacks.kernel.entry(id).or_insert(frames);
                }
                Record::Sample(key, count) => {
                    let key = live.folded(&mut this.representatives, key);
                    this.add_sample(key, count, full);
                }
                Record::OffCpu(key, time) => {
                    let key = live.folded(&mut this.representatives, key);
                    this.add_offcpu(key, time, full);
                }
                Record::Io(key, total) => {
                    let key = live.folded(&mut this.representatives, key);
                    this.add_io(key, total, full);
                }
            }
        };
        spool.replay(|record| add(self, record));
        let (stacks, samples, offcpu, io) = recent;
        let records = (stacks.user.into_iter())
            .map(|(id, stack)| Record::UserStack(id, stack))
            .chain((stacks.kernel.into_iter()).map(|(id, frames)| Record::KernelStack(id, frames)))
            .chain(samples.into_iter().map(|(key, n)| Record::Sample(key, n)))
            .chain(offcpu.into_iter().map(|(key, t)| Record::OffCpu(key, t)))
            .chain(io.into_iter().map(|(key, t)| Record::Io(key, t)));
        for record in records {
            add(self, record);
        }
    }

    /// Adds to a key's count; a new key is dropped (counted) when `full`.
    pub(super) fn add_sample(&mut self, key: SampleKey, count: u64, full: bool) {
        let dropped = &mut self.memory_cap_dropped;
        add_to(&mut self.counts, dropped, key, count, count, full);
    }

    pub(super) fn add_offcpu(&mut self, key: OffCpuKey, time: OffCpuTime, full: bool) {
        let dropped = &mut self.memory_cap_dropped;
        add_to(&mut self.offcpu, dropped, key, time, time.count, full);
    }

    pub(super) fn add_io(&mut self, key: IoKey, io: IoTotal, full: bool) {
        let dropped = &mut self.memory_cap_dropped;
        add_to(&mut self.io, dropped, key, io, io.count, full);
    }
}

/// Adds `value` to `key`'s in `table`; a new key is dropped when `full`, and its `events`
/// added to `dropped`.
fn add_to<K: Eq + Hash, V: AddAssign>(
    table: &mut HashMap<K, V>,
    dropped: &mut u64,
    key: K,
    value: V,
    events: u64,
    full: bool,
) {
    match table.get_mut(&key) {
        Some(total) => *total += value,
        None if full => *dropped += events,
        None => {
            table.insert(key, value);
        }
    }
}
