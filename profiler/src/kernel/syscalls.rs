//! The system calls the I/O and memory programs watch, per architecture: the programs get a
//! table from call number to what to read of its arguments (`SYSCALLS`), and report a call as
//! its position here.

use profiler_common::{MAX_IO_CALLS, io_kind};

/// What a call does to the file its fd names, for the per-file table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Moves bytes from the file.
    Read,
    /// Moves bytes to the file.
    Write,
    /// Flushes the file to storage (`fsync`, `fdatasync`).
    Sync,
    /// Starts or waits for writeback of a range (`sync_file_range`): no durability promise,
    /// so not counted as an fsync.
    SyncRange,
    /// Opens the file.
    Open,
    /// Closes the file.
    Close,
}

/// One watched system call.
#[derive(Clone, Copy, Debug)]
pub struct IoCall {
    /// Its name, which is also the leaf frame of its stacks.
    pub name: &'static str,
    /// Its number on this architecture.
    pub number: u32,
    /// How the programs read its arguments (`io_kind`).
    pub kind: u32,
    /// What it does to the file.
    pub direction: Direction,
}

const fn call(name: &'static str, number: u32, kind: u32, direction: Direction) -> IoCall {
    IoCall {
        name,
        number,
        kind,
        direction,
    }
}

use Direction::{Close, Open, Read, Sync, SyncRange, Write};
use io_kind::{CLOSE, OPEN, OPEN_AT, SYNC, TRANSFER};

/// The watched calls. Their position + 1 is the index the programs report.
#[cfg(target_arch = "x86_64")]
pub const CALLS: &[IoCall] = &[
    call("read", 0, TRANSFER, Read),
    call("write", 1, TRANSFER, Write),
    call("open", 2, OPEN, Open),
    call("close", 3, CLOSE, Close),
    call("pread64", 17, TRANSFER, Read),
    call("pwrite64", 18, TRANSFER, Write),
    call("readv", 19, TRANSFER, Read),
    call("writev", 20, TRANSFER, Write),
    call("sendfile", 40, TRANSFER, Write),
    call("sendto", 44, TRANSFER, Write),
    call("recvfrom", 45, TRANSFER, Read),
    call("sendmsg", 46, TRANSFER, Write),
    call("recvmsg", 47, TRANSFER, Read),
    call("fsync", 74, SYNC, Sync),
    call("fdatasync", 75, SYNC, Sync),
    call("creat", 85, OPEN, Open),
    call("openat", 257, OPEN_AT, Open),
    call("sync_file_range", 277, SYNC, SyncRange),
    call("preadv", 295, TRANSFER, Read),
    call("pwritev", 296, TRANSFER, Write),
    call("copy_file_range", 326, TRANSFER, Read),
    call("preadv2", 327, TRANSFER, Read),
    call("pwritev2", 328, TRANSFER, Write),
    call("openat2", 437, OPEN_AT, Open),
];

/// The watched calls. Their position + 1 is the index the programs report.
#[cfg(target_arch = "aarch64")]
pub const CALLS: &[IoCall] = &[
    call("read", 63, TRANSFER, Read),
    call("write", 64, TRANSFER, Write),
    call("close", 57, CLOSE, Close),
    call("pread64", 67, TRANSFER, Read),
    call("pwrite64", 68, TRANSFER, Write),
    call("readv", 65, TRANSFER, Read),
    call("writev", 66, TRANSFER, Write),
    call("sendfile", 71, TRANSFER, Write),
    call("sendto", 206, TRANSFER, Write),
    call("recvfrom", 207, TRANSFER, Read),
    call("sendmsg", 211, TRANSFER, Write),
    call("recvmsg", 212, TRANSFER, Read),
    call("fsync", 82, SYNC, Sync),
    call("fdatasync", 83, SYNC, Sync),
    call("openat", 56, OPEN_AT, Open),
    call("sync_file_range", 84, SYNC, SyncRange),
    call("preadv", 69, TRANSFER, Read),
    call("pwritev", 70, TRANSFER, Write),
    call("copy_file_range", 285, TRANSFER, Read),
    call("preadv2", 286, TRANSFER, Read),
    call("pwritev2", 287, TRANSFER, Write),
    call("openat2", 437, OPEN_AT, Open),
];

const _: () = assert!(CALLS.len() < MAX_IO_CALLS as usize);

/// Memory-mapping calls, `(number, io_kind)`, watched with `alloc`.
#[cfg(target_arch = "x86_64")]
const MEMORY_CALLS: [(u32, u32); 3] = [
    (9, io_kind::MMAP),
    (11, io_kind::MUNMAP),
    (12, io_kind::BRK),
];
/// Memory-mapping calls, `(number, io_kind)`, watched with `alloc`.
#[cfg(target_arch = "aarch64")]
const MEMORY_CALLS: [(u32, u32); 3] = [
    (222, io_kind::MMAP),
    (215, io_kind::MUNMAP),
    (214, io_kind::BRK),
];

/// Calls that change what an fd number names without opening anything, `(number, io_kind)`:
/// the programs forget the open-time name of the fds they replace, watched with `io`.
#[cfg(target_arch = "x86_64")]
const FD_CALLS: [(u32, u32); 3] = [
    (33, io_kind::DUP),
    (292, io_kind::DUP),
    (436, io_kind::CLOSE_RANGE),
];
/// Calls that change what an fd number names without opening anything, `(number, io_kind)`.
#[cfg(target_arch = "aarch64")]
const FD_CALLS: [(u32, u32); 2] = [(24, io_kind::DUP), (436, io_kind::CLOSE_RANGE)];

/// `(system call number, SYSCALLS value)` for every watched call: the I/O calls and the fd
/// calls with `io`,
/// the memory-mapping calls with `alloc`.
pub fn syscall_table(io: bool, memory: bool) -> Vec<(u32, u32)> {
    let mut table = Vec::new();
    if io {
        table.extend(
            CALLS
                .iter()
                .enumerate()
                .map(|(position, call)| (call.number, call.kind << 8 | (position as u32 + 1))),
        );
        table.extend(FD_CALLS.iter().map(|&(number, kind)| (number, kind << 8)));
    }
    if memory {
        table.extend(
            MEMORY_CALLS
                .iter()
                .map(|&(number, kind)| (number, kind << 8)),
        );
    }
    table
}

/// The call the programs reported as `index`.
pub fn call_by_index(index: u32) -> Option<&'static IoCall> {
    CALLS.get((index as usize).checked_sub(1)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_indices_and_kinds_round_trip() {
        let table = syscall_table(true, false);
        for &(number, value) in &table {
            if value >> 8 >= io_kind::MMAP {
                // The fd calls: no per-call statistics, so no index.
                assert_eq!(value & 0xff, 0);
                assert!(FD_CALLS.contains(&(number, value >> 8)));
                continue;
            }
            let call = call_by_index(value & 0xff).unwrap();
            assert_eq!(call.number, number);
            assert_eq!(call.kind, value >> 8);
        }
        assert_eq!(table.len(), CALLS.len() + FD_CALLS.len());
        assert!(call_by_index(0).is_none());
        let memory = syscall_table(false, true);
        assert_eq!(memory.len(), 3);
        assert!(memory.iter().all(|(_, value)| value >> 8 >= io_kind::MMAP));
    }
}
