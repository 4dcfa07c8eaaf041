//! The collection's count tables: drained counts added within the `--max-memory` budget, and
//! what went to the spool taken back at the end.

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

    /// Takes back what the spool holds, the earliest first, as the drains would have kept it:
    /// past `--max-memory`, new keys are dropped and counted.
    pub(super) fn take_back_spooled(&mut self) {
        if !self.spool.holds_any() {
            return;
        }
        // What is still in memory came last: through the spool too, to keep the order.
        self.spool.keep_stacks(&mut self.stacks);
        self.spool
            .keep_counts(&mut self.counts, &mut self.offcpu, &mut self.io);
        let mut spool = std::mem::take(&mut self.spool);
        spool.replay(|record| match record {
            Record::UserStack(id, stack) => {
                self.stacks.user.entry(id).or_insert(stack);
            }
            Record::KernelStack(id, frames) => {
                self.stacks.kernel.entry(id).or_insert(frames);
            }
            Record::Sample(key, count) => {
                let full = self.state_bytes() >= self.max_state_bytes;
                self.add_sample(key, count, full);
            }
            Record::OffCpu(key, time) => {
                let full = self.state_bytes() >= self.max_state_bytes;
                self.add_offcpu(key, time, full);
            }
            Record::Io(key, total) => {
                let full = self.state_bytes() >= self.max_state_bytes;
                self.add_io(key, total, full);
            }
        });
        // Threads that exited since their counts were spooled.
        self.fold_exited_threads();
    }

    /// Adds to a key's count; a new key is dropped (counted) when `full`.
    pub(super) fn add_sample(&mut self, key: SampleKey, count: u64, full: bool) {
        match self.counts.get_mut(&key) {
            Some(total) => *total += count,
            None if full => self.memory_cap_dropped += count,
            None => {
                self.counts.insert(key, count);
            }
        }
    }

    pub(super) fn add_offcpu(&mut self, key: OffCpuKey, time: OffCpuTime, full: bool) {
        match self.offcpu.get_mut(&key) {
            Some(total) => *total += time,
            None if full => self.memory_cap_dropped += time.count,
            None => {
                self.offcpu.insert(key, time);
            }
        }
    }

    pub(super) fn add_io(&mut self, key: IoKey, io: IoTotal, full: bool) {
        match self.io.get_mut(&key) {
            Some(total) => *total += io,
            None if full => self.memory_cap_dropped += io.count,
            None => {
                self.io.insert(key, io);
            }
        }
    }
}
