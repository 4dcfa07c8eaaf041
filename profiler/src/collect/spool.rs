//! What the collection drained, kept on disk once it outgrows a few megabytes, until the run
//! ends. Over a long capture of a program with many distinct stacks, the stacks and their
//! counts were the collector's memory, growing with the samples (478 MiB after ten minutes at
//! 999 Hz), and nothing reads them before the end. Like perf's `perf.data`, the capture goes to
//! a file; this one has no name (`O_TMPFILE`), so no one else can open it and it is gone when
//! the profiler is, however it ends.

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    io::{self, BufReader, BufWriter, Read, Seek, Write},
};

use profiler_common::{COMM_LEN, IoKey, IoTotal, OffCpuKey, OffCpuTime, SampleKey};

use crate::kernel::WalkedStack;

/// On disk: `/tmp` may be memory.
const SPOOL_FOLDER: &str = "/var/tmp";

/// More frames than any stack the kernel stores: a record claiming more is not one.
const MAX_FRAMES: usize = 1 << 12;

/// The stacks of a run, by id, as the collection keeps them.
#[derive(Default)]
pub(super) struct Stacks {
    /// User stacks: frames and how the walk ended.
    pub(super) user: HashMap<u32, WalkedStack>,
    /// Kernel stacks.
    pub(super) kernel: HashMap<u32, Vec<u64>>,
}

impl Stacks {
    /// What they take in memory, roughly: frames and a table entry each.
    pub(super) fn bytes(&self) -> u64 {
        const ENTRY: usize = 48;
        let frames: usize = self
            .user
            .values()
            .map(|(frames, _)| frames.len())
            .sum::<usize>()
            + self.kernel.values().map(Vec::len).sum::<usize>();
        (8 * frames + ENTRY * (self.user.len() + self.kernel.len())) as u64
    }
}

/// One thing spooled, as it comes back.
pub(super) enum Record {
    UserStack(u32, WalkedStack),
    KernelStack(u32, Vec<u64>),
    Sample(SampleKey, u64),
    OffCpu(OffCpuKey, OffCpuTime),
    Io(IoKey, IoTotal),
}

/// Record kinds, the first byte of each record.
const USER_STACK: u8 = 1;
const KERNEL_STACK: u8 = 2;
const SAMPLE: u8 = 3;
const OFF_CPU: u8 = 4;
const IO: u8 = 5;

/// Plain data written as its bytes.
///
/// # Safety
/// `#[repr(C)]` without padding, and every bit pattern a valid value.
unsafe trait Plain: Copy {}
// SAFETY: `#[repr(C)]` integers and byte arrays; the sizes below leave no room for padding.
unsafe impl Plain for SampleKey {}
// SAFETY: as above.
unsafe impl Plain for OffCpuKey {}
// SAFETY: as above.
unsafe impl Plain for OffCpuTime {}
// SAFETY: as above.
unsafe impl Plain for IoKey {}
// SAFETY: as above.
unsafe impl Plain for IoTotal {}
// SAFETY: an integer.
unsafe impl Plain for u64 {}
// Each the sum of its fields: a field added without its size here fails the build.
const _: () = assert!(size_of::<SampleKey>() == 4 * 4 + COMM_LEN);
const _: () = assert!(size_of::<OffCpuKey>() == 6 * 4 + COMM_LEN);
const _: () = assert!(size_of::<IoKey>() == 6 * 4 + 8 + COMM_LEN);
const _: () = assert!(size_of::<OffCpuTime>() == 3 * 8);
const _: () = assert!(size_of::<IoTotal>() == 5 * 8);

fn bytes_of<T: Plain>(value: &T) -> &[u8] {
    // SAFETY: `T: Plain` has no padding, so all its bytes are initialized.
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
}

fn read_plain<T: Plain>(reader: &mut impl Read) -> io::Result<T> {
    let mut value = std::mem::MaybeUninit::<T>::zeroed();
    // SAFETY: zeroed, so initialized; any bytes read make a valid `T`.
    let bytes =
        unsafe { std::slice::from_raw_parts_mut(value.as_mut_ptr().cast::<u8>(), size_of::<T>()) };
    reader.read_exact(bytes)?;
    // SAFETY: every byte written, and any bit pattern is a `T`.
    Ok(unsafe { value.assume_init() })
}

/// Where the collection puts what it drained until the run ends.
#[derive(Default)]
pub(super) struct Spool {
    file: Option<BufWriter<File>>,
    /// Records and bytes written.
    records: u64,
    bytes: u64,
    /// The most the file may hold; past it, the collection keeps the rest in memory.
    max_bytes: u64,
    /// Why it takes no more: a write failed, or it holds `max_bytes`.
    closed: bool,
    /// What the call that failed could not write.
    kept: Vec<Record>,
}

impl Spool {
    /// A spool of at most `max_bytes`, its file made on first use.
    pub(super) fn new(max_bytes: u64) -> Self {
        Spool {
            max_bytes,
            ..Spool::default()
        }
    }

    /// Whether it takes more: once a write failed or it is full, the collection's tables stay
    /// in memory, under `--max-memory`, as they would without a spool.
    pub(super) fn accepts(&self) -> bool {
        !self.closed
    }

    /// Whether anything was spooled.
    pub(super) fn holds_any(&self) -> bool {
        self.records > 0 || !self.kept.is_empty()
    }

    /// Moves the stacks out of `stacks` into the spool, but those `stay` picks.
    pub(super) fn keep_stacks(&mut self, stacks: &mut Stacks, stay: impl Fn(&[u64]) -> bool) {
        let user: Vec<_> = stacks
            .user
            .extract_if(|_, (frames, _)| !stay(frames))
            .collect();
        for (id, stack) in user {
            self.add(Record::UserStack(id, stack));
        }
        for (id, frames) in stacks.kernel.drain() {
            self.add(Record::KernelStack(id, frames));
        }
    }

    /// Moves the counts out of the tables into the spool, but those `hot` keeps: keys counted
    /// in the last drain are likely counted again, and would be written again.
    pub(super) fn keep_counts(
        &mut self,
        samples: &mut HashMap<SampleKey, u64>,
        offcpu: &mut HashMap<OffCpuKey, OffCpuTime>,
        io: &mut HashMap<IoKey, IoTotal>,
        hot: &HotKeys,
    ) {
        let samples: Vec<_> = samples
            .extract_if(|key, _| !hot.samples.contains(key))
            .collect();
        for (key, count) in samples {
            self.add(Record::Sample(key, count));
        }
        let offcpu: Vec<_> = offcpu
            .extract_if(|key, _| !hot.offcpu.contains(key))
            .collect();
        for (key, time) in offcpu {
            self.add(Record::OffCpu(key, time));
        }
        let io: Vec<_> = io.extract_if(|key, _| !hot.io.contains(key)).collect();
        for (key, total) in io {
            self.add(Record::Io(key, total));
        }
    }

    fn add(&mut self, record: Record) {
        if !self.closed && self.bytes >= self.max_bytes {
            log::info!(
                "what the collector spooled in {SPOOL_FOLDER} reached {} MiB: it keeps the \
                 rest in memory, under --max-memory",
                self.bytes >> 20
            );
            self.closed = true;
        }
        if !self.closed {
            match self.write(&record) {
                Ok(()) => return,
                Err(err) => {
                    log::warn!(
                        "writing the collected stacks to {SPOOL_FOLDER}: {err}; the collector \
                         keeps them in memory from now on, under --max-memory"
                    );
                    self.closed = true;
                }
            }
        }
        self.kept.push(record);
    }

    fn write(&mut self, record: &Record) -> io::Result<()> {
        if self.file.is_none() {
            let file = tempfile::tempfile_in(SPOOL_FOLDER)?;
            self.file = Some(BufWriter::with_capacity(1 << 16, file));
        }
        let writer = self.file.as_mut().expect("made above");
        let written = write_record(writer, record)?;
        self.records += 1;
        self.bytes += written as u64;
        Ok(())
    }

    /// Every record, in the order they were kept; calls `each` with each.
    pub(super) fn replay(&mut self, mut each: impl FnMut(Record)) {
        if let Some(writer) = self.file.take() {
            // The file, then what is still buffered (all of it after a failed write, which
            // keeps what it could not write): the records in order, without writing again.
            let (file, buffered) = writer.into_parts();
            let buffered = io::Cursor::new(buffered.unwrap_or_default());
            let mut read = 0;
            let result = read_back(file, buffered, &mut |record| {
                read += 1;
                each(record);
            });
            if let Err(err) = result {
                log::warn!(
                    "reading the collected stacks back: {err}; {} of {} records read, the \
                     stacks of the rest are shown as lost",
                    read,
                    self.records
                );
            }
        }
        self.records = 0;
        self.bytes = 0;
        for record in std::mem::take(&mut self.kept) {
            each(record);
        }
    }
}

/// Keys counted in the last drain: left in memory when the rest goes to the spool.
#[derive(Default)]
pub(super) struct HotKeys {
    pub(super) samples: HashSet<SampleKey>,
    pub(super) offcpu: HashSet<OffCpuKey>,
    pub(super) io: HashSet<IoKey>,
}

/// Writes `record`; returns its length.
fn write_record(writer: &mut impl Write, record: &Record) -> io::Result<usize> {
    let mut bytes = Vec::with_capacity(64);
    match record {
        Record::UserStack(id, (frames, end)) => {
            stack_record(&mut bytes, USER_STACK, *id, *end, frames)
        }
        Record::KernelStack(id, frames) => stack_record(&mut bytes, KERNEL_STACK, *id, 0, frames),
        Record::Sample(key, count) => count_record(&mut bytes, SAMPLE, key, count),
        Record::OffCpu(key, time) => count_record(&mut bytes, OFF_CPU, key, time),
        Record::Io(key, total) => count_record(&mut bytes, IO, key, total),
    }
    writer.write_all(&bytes)?;
    Ok(bytes.len())
}

fn stack_record(bytes: &mut Vec<u8>, kind: u8, id: u32, end: u32, frames: &[u64]) {
    bytes.push(kind);
    bytes.extend_from_slice(&id.to_le_bytes());
    bytes.extend_from_slice(&end.to_le_bytes());
    bytes.extend_from_slice(&(frames.len() as u32).to_le_bytes());
    for frame in frames {
        bytes.extend_from_slice(&frame.to_le_bytes());
    }
}

fn count_record<K: Plain, V: Plain>(bytes: &mut Vec<u8>, kind: u8, key: &K, value: &V) {
    bytes.push(kind);
    bytes.extend_from_slice(bytes_of(key));
    bytes.extend_from_slice(bytes_of(value));
}

/// Reads every whole record of `file` and then `rest`, in order.
fn read_back(mut file: File, rest: impl Read, each: &mut impl FnMut(Record)) -> io::Result<()> {
    file.rewind()?;
    let mut reader = BufReader::with_capacity(1 << 16, file.chain(rest));
    loop {
        let mut kind = [0u8];
        match reader.read_exact(&mut kind) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(err) => return Err(err),
        }
        let record = match kind[0] {
            USER_STACK | KERNEL_STACK => {
                let mut header = [0u8; 12];
                reader.read_exact(&mut header)?;
                let word =
                    |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().expect("4 bytes"));
                let (id, end, len) = (word(0), word(4), word(8) as usize);
                if len > MAX_FRAMES {
                    return Err(io::Error::other("a stack record of too many frames"));
                }
                let mut bytes = vec![0u8; 8 * len];
                reader.read_exact(&mut bytes)?;
                let frames: Vec<u64> = bytes
                    .chunks_exact(8)
                    .map(|word| u64::from_le_bytes(word.try_into().expect("8 bytes")))
                    .collect();
                match kind[0] {
                    USER_STACK => Record::UserStack(id, (frames, end)),
                    _ => Record::KernelStack(id, frames),
                }
            }
            SAMPLE => Record::Sample(read_plain(&mut reader)?, read_plain(&mut reader)?),
            OFF_CPU => Record::OffCpu(read_plain(&mut reader)?, read_plain(&mut reader)?),
            IO => Record::Io(read_plain(&mut reader)?, read_plain(&mut reader)?),
            other => {
                return Err(io::Error::other(format!(
                    "a record of unknown kind {other}"
                )));
            }
        };
        each(record);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_key(tid: u32) -> SampleKey {
        SampleKey {
            tgid: 1,
            tid,
            user_stack_id: 7,
            kernel_stack_id: -1,
            comm: *b"worker\0\0\0\0\0\0\0\0\0\0",
        }
    }

    fn replayed(spool: &mut Spool) -> Vec<Record> {
        let mut back = Vec::new();
        spool.replay(|record| back.push(record));
        back
    }

    #[test]
    fn records_come_back_in_order() {
        let mut spool = Spool::new(1 << 30);
        assert!(!spool.holds_any());
        let mut stacks = Stacks::default();
        stacks.user.insert(7, (vec![1, 2, 3], 9));
        stacks.user.insert(8, (vec![0xdead], 0));
        stacks.kernel.insert(7, vec![0xffff_ffff_8100_0000]);
        spool.keep_stacks(&mut stacks, |frames| frames == [0xdead]);
        assert!(stacks.kernel.is_empty(), "moved out");
        assert_eq!(
            stacks.user.keys().collect::<Vec<_>>(),
            [&8],
            "the one picked stays"
        );
        let mut samples: HashMap<SampleKey, u64> = HashMap::new();
        let mut offcpu: HashMap<OffCpuKey, OffCpuTime> = HashMap::new();
        let mut io: HashMap<IoKey, IoTotal> = HashMap::new();
        samples.insert(sample_key(2), 5);
        samples.insert(sample_key(3), 1);
        io.insert(
            IoKey {
                tgid: 1,
                tid: 2,
                user_stack_id: 7,
                call: 0,
                fd: 3,
                _pad: 0,
                file_id: 42,
                comm: [0; 16],
            },
            IoTotal {
                count: 1,
                total_ns: 2,
                bytes: 3,
                errors: 0,
                stack_ns: 2,
            },
        );
        let mut hot = HotKeys::default();
        hot.samples.insert(sample_key(3));
        spool.keep_counts(&mut samples, &mut offcpu, &mut io, &hot);
        assert_eq!(samples.len(), 1, "the hot key stays");
        samples.insert(sample_key(2), 6);
        spool.keep_counts(&mut samples, &mut offcpu, &mut io, &HotKeys::default());
        assert!(
            spool.holds_any() && spool.file.is_some(),
            "{SPOOL_FOLDER} takes a file"
        );
        let back = replayed(&mut spool);
        assert_eq!(back.len(), 6);
        assert!(matches!(&back[0], Record::UserStack(7, (frames, 9)) if frames == &[1, 2, 3]));
        assert!(matches!(&back[1], Record::KernelStack(7, frames) if frames.len() == 1));
        assert!(matches!(&back[2], Record::Sample(key, 5) if *key == sample_key(2)));
        assert!(
            matches!(&back[3], Record::Io(key, total) if key.file_id == 42 && total.bytes == 3)
        );
        // The second batch, in a table's order.
        let mut rest: Vec<(u32, u64)> = back[4..]
            .iter()
            .map(|record| match record {
                Record::Sample(key, count) => (key.tid, *count),
                _ => panic!("a count"),
            })
            .collect();
        rest.sort();
        assert_eq!(rest, [(2, 6), (3, 1)]);
        assert!(replayed(&mut spool).is_empty(), "replayed once");
    }

    #[test]
    fn a_full_spool_takes_no_more_and_loses_nothing() {
        let mut spool = Spool::new(100);
        let mut stacks = Stacks::default();
        for id in 0..10 {
            stacks.user.insert(id, (vec![u64::from(id); 4], 0));
        }
        spool.keep_stacks(&mut stacks, |_| false);
        assert!(!spool.accepts(), "closed past 100 bytes");
        assert!(spool.bytes >= 100 && spool.bytes < 200, "{}", spool.bytes);
        let back = replayed(&mut spool);
        assert_eq!(back.len(), 10, "what was not written was kept");
    }

    #[test]
    fn after_a_failed_write_records_stay_in_memory() {
        let mut spool = Spool {
            closed: true,
            ..Spool::new(1 << 30)
        };
        let mut stacks = Stacks::default();
        stacks.user.insert(1, (vec![5, 6], 0));
        spool.keep_stacks(&mut stacks, |_| false);
        assert!(spool.holds_any() && !spool.accepts());
        let back = replayed(&mut spool);
        assert!(matches!(&back[..], [Record::UserStack(1, (frames, 0))] if frames == &[5, 6]));
    }

    #[test]
    fn a_cut_file_gives_its_whole_records_then_what_was_buffered() {
        let mut file = tempfile::tempfile().unwrap();
        write_record(&mut file, &Record::UserStack(3, (vec![10, 11], 0))).unwrap();
        write_record(&mut file, &Record::Sample(sample_key(4), 1)).unwrap();
        let len = file.metadata().unwrap().len();
        file.set_len(len - 4).unwrap();
        let mut back = Vec::new();
        assert!(read_back(file, io::empty(), &mut |record| back.push(record)).is_err());
        assert!(matches!(&back[..], [Record::UserStack(3, _)]));

        // A record split between the file and the buffer (a write that failed midway).
        let mut bytes = Vec::new();
        write_record(&mut bytes, &Record::Sample(sample_key(5), 2)).unwrap();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&bytes[..10]).unwrap();
        let mut back = Vec::new();
        read_back(file, &bytes[10..], &mut |record| back.push(record)).unwrap();
        assert!(matches!(&back[..], [Record::Sample(key, 2)] if key.tid == 5));
    }
}
