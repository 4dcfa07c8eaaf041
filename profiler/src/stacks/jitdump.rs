//! jitdump files (`jit-PID.dump`, perf's format): the records a runtime appends as it compiles
//! (V8's `--perf-prof`, .NET's `DOTNET_PerfMapEnabled=2`). The runtime maps the file
//! executable, which is how it is found among the process's mappings. Only the records that
//! name code are read: a load (name, address, size) and a move (new address).

use std::{fs::File, io, os::unix::fs::FileExt as _};

use super::perf_map::PerfMap;
use crate::le::{u32_at, u64_at};

/// `JiTD`, little-endian.
const MAGIC: u32 = 0x4A69_5444;

/// Record kinds.
const CODE_LOAD: u32 = 0;
const CODE_MOVE: u32 = 1;
const CODE_CLOSE: u32 = 3;

/// A record's header: kind, total size, timestamp.
const RECORD_HEADER: u64 = 16;

/// Most of a record read: a load's fields and name (its code, which follows, is skipped).
const MAX_RECORD_READ: u64 = 40 + 4096;

/// Largest file header accepted (it is 40 bytes).
const MAX_FILE_HEADER: u32 = 4096;

/// Largest function accepted: a bigger "function" would name every address above it.
const MAX_CODE_SIZE: u64 = 64 << 20;

/// Furthest into a file records are read: they are skipped over, not read whole, so this bounds
/// time (records per read) more than memory.
pub const MAX_JITDUMP_BYTES: u64 = 1 << 30;

/// Most records read in one call: a huge file is read over several.
const MAX_RECORDS_PER_READ: usize = 1 << 20;

/// A jitdump file read incrementally, its functions kept as a perf map's are.
#[derive(Debug, Default)]
pub struct JitDump {
    /// Bytes consumed: the file header, then whole records.
    consumed: u64,
    /// Whether the header was read and the file is a jitdump; `Some(false)` also after a
    /// damaged record (what was read before it stays).
    valid: Option<bool>,
    /// The functions named so far.
    pub functions: PerfMap,
}

/// Why a jitdump file is not read (further).
#[derive(Debug, thiserror::Error)]
pub enum JitDumpError {
    /// Not the format (or another byte order), or a damaged record.
    #[error("not a jitdump file, or a damaged record")]
    NotJitDump,
    /// Reading failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl JitDump {
    /// Reads the whole records `file` gained since last time, skipping their code; starts over
    /// when the file is shorter than what was read (rewritten).
    pub fn read_from(&mut self, file: &File) -> Result<(), JitDumpError> {
        let len = file.metadata()?.len();
        if len < self.consumed {
            *self = JitDump::default();
        }
        if self.valid == Some(false) {
            return Err(JitDumpError::NotJitDump);
        }
        self.functions.capped |= len > MAX_JITDUMP_BYTES;
        let len = len.min(MAX_JITDUMP_BYTES);
        if self.valid.is_none() {
            // magic, version, header size, machine, padding, pid, timestamp, flags.
            let mut head = [0; 12];
            if len < 40 || file.read_exact_at(&mut head, 0).is_err() {
                return Ok(()); // Not written yet.
            }
            let (magic, header_size) = (u32_at(&head, 0), u32_at(&head, 8));
            if magic != Some(MAGIC)
                || !header_size.is_some_and(|s| (40..=MAX_FILE_HEADER).contains(&s))
            {
                self.valid = Some(false);
                return Err(JitDumpError::NotJitDump);
            }
            self.valid = Some(true);
            self.consumed = u64::from(header_size.unwrap_or(40));
        }
        let mut header = [0; RECORD_HEADER as usize];
        for _ in 0..MAX_RECORDS_PER_READ {
            if self.consumed + RECORD_HEADER > len {
                break;
            }
            file.read_exact_at(&mut header, self.consumed)?;
            let (Some(kind), Some(size)) = (u32_at(&header, 0), u32_at(&header, 4)) else {
                break;
            };
            let size = u64::from(size);
            if size < RECORD_HEADER {
                // Damaged: nothing after this can be trusted.
                self.valid = Some(false);
                return Err(JitDumpError::NotJitDump);
            }
            if self.consumed + size > len {
                break; // Not whole yet.
            }
            let mut body = vec![0; (size - RECORD_HEADER).min(MAX_RECORD_READ) as usize];
            file.read_exact_at(&mut body, self.consumed + RECORD_HEADER)?;
            self.record(kind, &body);
            self.consumed += size;
            if kind == CODE_CLOSE {
                break;
            }
        }
        Ok(())
    }

    fn record(&mut self, kind: u32, body: &[u8]) {
        match kind {
            // pid, tid, vma, code address, code size, code index, name NUL, code.
            CODE_LOAD => {
                let (Some(address), Some(size)) = (u64_at(body, 16), u64_at(body, 24)) else {
                    return;
                };
                if size > MAX_CODE_SIZE {
                    return;
                }
                let name = body.get(40..).unwrap_or_default();
                let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
                self.functions
                    .insert(address, size, &String::from_utf8_lossy(name));
            }
            // pid, tid, vma, old address, new address, code size, code index.
            CODE_MOVE => {
                if let (Some(old), Some(new)) = (u64_at(body, 16), u64_at(body, 24)) {
                    self.functions.relocate(old, new);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Vec<u8> {
        let mut bytes = Vec::new();
        for word in [MAGIC, 1, 40, 0x3e, 0, 1234] {
            bytes.extend_from_slice(&word.to_le_bytes());
        }
        bytes.extend_from_slice(&[0; 16]);
        bytes
    }

    fn load(address: u64, size: u64, name: &str) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&1234u32.to_le_bytes());
        body.extend_from_slice(&1234u32.to_le_bytes());
        for word in [address, address, size, 7] {
            body.extend_from_slice(&word.to_le_bytes());
        }
        body.extend_from_slice(name.as_bytes());
        body.push(0);
        body.extend_from_slice(&[0x90; 8]); // the code
        record(CODE_LOAD, &body)
    }

    fn record(kind: u32, body: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&kind.to_le_bytes());
        bytes.extend_from_slice(&((RECORD_HEADER as usize + body.len()) as u32).to_le_bytes());
        bytes.extend_from_slice(&0u64.to_le_bytes());
        bytes.extend_from_slice(body);
        bytes
    }

    #[test]
    fn reads_loads_and_moves_as_they_are_appended() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jit-1234.dump");
        let mut writer = File::create(&path).unwrap();
        let first = load(0x1000, 0x40, "JS:*hotA /srv/hot.js:2:14");
        writer.write_all(&header()).unwrap();
        writer.write_all(&first[..first.len() - 5]).unwrap();
        let mut dump = JitDump::default();
        dump.read_from(&File::open(&path).unwrap()).unwrap();
        assert!(dump.functions.is_empty(), "a partial record was read");
        writer.write_all(&first[first.len() - 5..]).unwrap();
        let mut moved = Vec::new();
        moved.extend_from_slice(&[0; 8]);
        for word in [0u64, 0x1000, 0x8000, 0x40, 7] {
            moved.extend_from_slice(&word.to_le_bytes());
        }
        writer
            .write_all(&load(0x2000, 0x10, "JS:~hotB /srv/hot.js:3:14"))
            .unwrap();
        writer.write_all(&record(CODE_MOVE, &moved)).unwrap();
        dump.read_from(&File::open(&path).unwrap()).unwrap();
        assert_eq!(
            dump.functions.lookup(0x2008),
            Some("JS:~hotB /srv/hot.js:3:14")
        );
        assert_eq!(dump.functions.lookup(0x1008), None);
        assert_eq!(
            dump.functions.lookup(0x8008),
            Some("JS:*hotA /srv/hot.js:2:14")
        );
    }

    #[test]
    fn other_files_and_damaged_records_are_refused_without_panicking() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jit-1.dump");
        let read = |bytes: &[u8]| {
            std::fs::write(&path, bytes).unwrap();
            let mut dump = JitDump::default();
            let result = dump.read_from(&File::open(&path).unwrap());
            (dump, result)
        };
        let (_, result) = read(b"0x1000 0x10 not a jitdump, but long enough for a header\n");
        assert!(matches!(result, Err(JitDumpError::NotJitDump)));
        // A record smaller than its header: refused, what came before kept.
        let mut bytes = header();
        bytes.extend_from_slice(&load(0x3000, 0x10, "kept"));
        bytes.extend_from_slice(&CODE_LOAD.to_le_bytes());
        bytes.extend_from_slice(&3u32.to_le_bytes());
        bytes.extend_from_slice(&[0; 64]);
        let (dump, result) = read(&bytes);
        assert!(result.is_err());
        assert_eq!(dump.functions.lookup(0x3000), Some("kept"));
        // A load too short for its fields, or claiming a gigabyte of code, names nothing.
        let mut bytes = header();
        bytes.extend_from_slice(&record(CODE_LOAD, &[1, 2, 3]));
        bytes.extend_from_slice(&load(0x5000, 1 << 30, "everything above"));
        let (dump, result) = read(&bytes);
        assert!(result.is_ok());
        assert!(dump.functions.is_empty());
    }

    #[test]
    fn a_rewritten_file_is_read_again_from_its_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jit-1.dump");
        let mut bytes = header();
        bytes.extend_from_slice(&load(0x1000, 0x10, "first"));
        bytes.extend_from_slice(&load(0x2000, 0x10, "second"));
        std::fs::write(&path, &bytes).unwrap();
        let mut dump = JitDump::default();
        dump.read_from(&File::open(&path).unwrap()).unwrap();
        let mut bytes = header();
        bytes.extend_from_slice(&load(0x4000, 0x10, "after"));
        std::fs::write(&path, &bytes).unwrap();
        dump.read_from(&File::open(&path).unwrap()).unwrap();
        assert_eq!(dump.functions.lookup(0x1000), None);
        assert_eq!(dump.functions.lookup(0x4000), Some("after"));
    }
}
