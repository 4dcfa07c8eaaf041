//! jitdump files (`jit-PID.dump`, perf's format): the records a runtime appends as it compiles
//! (V8's `--perf-prof`, .NET's `DOTNET_PerfMapEnabled=2`). The runtime maps the file
//! executable, which is how it is found among the process's mappings. Only the records that
//! name code are read: a load (name, address, size) and a move (new address).

use std::{
    fs::File,
    io::{self, Read as _, Seek as _},
};

use super::perf_map::{MAX_PERF_MAP_BYTES, PerfMap};

/// `JiTD`, little-endian.
const MAGIC: u32 = 0x4A69_5444;

/// Record kinds.
const CODE_LOAD: u32 = 0;
const CODE_MOVE: u32 = 1;
const CODE_CLOSE: u32 = 3;

/// A record's header: kind, total size, timestamp.
const RECORD_HEADER: usize = 16;

/// Longest record read: a load carries the code itself.
const MAX_RECORD: usize = 16 << 20;

/// A jitdump file read incrementally, its functions kept as a perf map is.
#[derive(Debug, Default)]
pub struct JitDump {
    /// Bytes consumed: the file header, then whole records.
    consumed: u64,
    /// Whether the header was read and the file is a jitdump.
    valid: Option<bool>,
    /// The functions named so far.
    pub functions: PerfMap,
}

/// Why a jitdump file is not read.
#[derive(Debug, thiserror::Error)]
pub enum JitDumpError {
    /// Not the format (or another byte order).
    #[error("not a jitdump file")]
    NotJitDump,
    /// Reading failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl JitDump {
    /// Reads the records `file` gained since last time (whole records only).
    pub fn read_from(&mut self, file: &mut File) -> Result<(), JitDumpError> {
        let len = file.metadata()?.len().min(MAX_PERF_MAP_BYTES);
        if self.valid == Some(false) {
            return Err(JitDumpError::NotJitDump);
        }
        if len <= self.consumed {
            return Ok(());
        }
        file.seek(io::SeekFrom::Start(self.consumed))?;
        let mut bytes = Vec::new();
        file.take(len - self.consumed).read_to_end(&mut bytes)?;
        let used = self.feed(&bytes)?;
        self.consumed += used as u64;
        Ok(())
    }

    /// Parses what it can of `bytes` (which follow what was consumed); returns the bytes used.
    fn feed(&mut self, bytes: &[u8]) -> Result<usize, JitDumpError> {
        let mut at = 0;
        if self.valid.is_none() {
            // magic, version, header size, machine, padding, pid, timestamp, flags.
            let (Some(magic), Some(header_size)) = (u32_at(bytes, 0), u32_at(bytes, 8)) else {
                return Ok(0);
            };
            if magic != MAGIC || (header_size as usize) < 40 {
                self.valid = Some(false);
                return Err(JitDumpError::NotJitDump);
            }
            if bytes.len() < header_size as usize {
                return Ok(0);
            }
            self.valid = Some(true);
            at = header_size as usize;
        }
        while let (Some(kind), Some(size)) = (u32_at(bytes, at), u32_at(bytes, at + 4)) {
            let size = size as usize;
            if !(RECORD_HEADER..=MAX_RECORD).contains(&size) {
                // A damaged file: nothing after this can be trusted.
                self.valid = Some(false);
                break;
            }
            let Some(record) = bytes.get(at..at + size) else {
                break; // Not whole yet.
            };
            self.record(kind, &record[RECORD_HEADER..]);
            at += size;
            if kind == CODE_CLOSE {
                break;
            }
        }
        Ok(at)
    }

    fn record(&mut self, kind: u32, body: &[u8]) {
        match kind {
            // pid, tid, vma, code address, code size, code index, name NUL, code.
            CODE_LOAD => {
                let (Some(address), Some(size)) = (u64_at(body, 16), u64_at(body, 24)) else {
                    return;
                };
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

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
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
        bytes.extend_from_slice(&((RECORD_HEADER + body.len()) as u32).to_le_bytes());
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
        dump.read_from(&mut File::open(&path).unwrap()).unwrap();
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
        dump.read_from(&mut File::open(&path).unwrap()).unwrap();
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
        let mut dump = JitDump::default();
        assert!(matches!(
            dump.feed(b"0x1000 0x10 not a jitdump\n"),
            Err(JitDumpError::NotJitDump)
        ));
        let mut dump = JitDump::default();
        let mut bytes = header();
        bytes.extend_from_slice(&CODE_LOAD.to_le_bytes());
        bytes.extend_from_slice(&3u32.to_le_bytes()); // smaller than a record header
        bytes.extend_from_slice(&[0; 64]);
        assert_eq!(dump.feed(&bytes).unwrap(), 40);
        assert!(dump.functions.is_empty());
        // A load too short for its fields names nothing.
        let mut dump = JitDump::default();
        let mut bytes = header();
        bytes.extend_from_slice(&record(CODE_LOAD, &[1, 2, 3]));
        dump.feed(&bytes).unwrap();
        assert!(dump.functions.is_empty());
    }
}
