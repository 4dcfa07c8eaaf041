//! JIT symbol maps (`/tmp/perf-PID.map`): one `START SIZE name` line, in hexadecimal, per
//! function a runtime compiled. V8 (`--perf-basic-prof`) and .NET (`DOTNET_PerfMapEnabled`)
//! append as they compile; the JVM rewrites the whole file when asked (`Compiler.perfmap`).

use std::{
    collections::BTreeMap,
    fs::File,
    io::{self, Read as _, Seek as _},
    os::unix::fs::MetadataExt as _,
};

/// Most of one map read: bounds the memory and time a runtime's file can cost. A JVM with
/// 20 000 compiled methods writes about 2 MB.
pub const MAX_PERF_MAP_BYTES: u64 = 64 << 20;

/// Most functions kept from one map (short lines would otherwise cost more than the file).
pub const MAX_PERF_MAP_FUNCTIONS: usize = 1 << 20;

/// Bytes read at once.
const CHUNK_BYTES: u64 = 1 << 20;

/// The start of the file kept, to notice it was rewritten in place (the same inode, as long
/// as before or longer).
const PREFIX_BYTES: usize = 4096;

/// Longest line kept: a longer one is skipped, not buffered.
const MAX_LINE_BYTES: usize = 4096;

/// The functions of one map, read incrementally as it grows.
#[derive(Debug, Default)]
pub struct PerfMap {
    /// Functions by start address: (end, name). A later line for the same start wins (the
    /// runtime reused the address).
    functions: BTreeMap<u64, (u64, String)>,
    /// Device and inode of the file read, to notice it was replaced.
    identity: Option<(u64, u64)>,
    /// Bytes of that file consumed.
    consumed: u64,
    /// An unfinished last line.
    partial: Vec<u8>,
    /// Set while skipping the rest of an overlong line.
    skipping: bool,
    /// The first bytes of the file, as read.
    prefix: Vec<u8>,
    /// Whether the file went past [`MAX_PERF_MAP_BYTES`] or [`MAX_PERF_MAP_FUNCTIONS`] (the
    /// rest is not read).
    pub capped: bool,
}

impl PerfMap {
    /// Number of functions known.
    pub fn len(&self) -> usize {
        self.functions.len()
    }

    /// Whether no function is known.
    pub fn is_empty(&self) -> bool {
        self.functions.is_empty()
    }

    /// The name of the function containing `address`.
    pub fn lookup(&self, address: u64) -> Option<&str> {
        let (_, (end, name)) = self.functions.range(..=address).next_back()?;
        (address < *end).then_some(name.as_str())
    }

    /// Forgets everything read: the runtime rewrote its map.
    pub fn reset(&mut self) {
        *self = PerfMap::default();
    }

    /// Reads what `file` holds past what was read before; starts over when it is another file,
    /// or the same rewritten (shorter, or its start changed).
    pub fn read_from(&mut self, file: &mut File) -> io::Result<()> {
        use std::os::unix::fs::FileExt as _;
        let metadata = file.metadata()?;
        let identity = (metadata.dev(), metadata.ino());
        let rewritten = metadata.len() < self.consumed || {
            let mut start = vec![0; self.prefix.len()];
            file.read_exact_at(&mut start, 0).is_err() || start != self.prefix
        };
        if self.identity != Some(identity) || rewritten {
            self.reset();
            self.identity = Some(identity);
        }
        let end = metadata.len().min(MAX_PERF_MAP_BYTES);
        self.capped |= metadata.len() > MAX_PERF_MAP_BYTES;
        file.seek(io::SeekFrom::Start(self.consumed))?;
        while self.consumed < end && !self.capped {
            let mut chunk = Vec::new();
            let want = (end - self.consumed).min(CHUNK_BYTES);
            file.take(want).read_to_end(&mut chunk)?;
            if chunk.is_empty() {
                break;
            }
            if self.prefix.len() < PREFIX_BYTES {
                let keep = (PREFIX_BYTES - self.prefix.len()).min(chunk.len());
                self.prefix.extend_from_slice(&chunk[..keep]);
            }
            self.consumed += chunk.len() as u64;
            self.feed(&chunk);
        }
        Ok(())
    }

    /// Parses the complete lines of `bytes`, keeping an unfinished last one for the next call.
    pub fn feed(&mut self, bytes: &[u8]) {
        let mut rest = bytes;
        while let Some(newline) = rest.iter().position(|&b| b == b'\n') {
            let (line, after) = rest.split_at(newline);
            rest = &after[1..];
            if std::mem::take(&mut self.skipping) {
                self.partial.clear();
                continue;
            }
            if self.partial.is_empty() {
                self.add_line(line);
            } else {
                let mut whole = std::mem::take(&mut self.partial);
                whole.extend_from_slice(line);
                self.add_line(&whole);
            }
        }
        if self.skipping {
            return;
        }
        if self.partial.len() + rest.len() > MAX_LINE_BYTES {
            self.partial.clear();
            self.skipping = true;
        } else {
            self.partial.extend_from_slice(rest);
        }
    }

    fn add_line(&mut self, line: &[u8]) {
        if line.len() > MAX_LINE_BYTES {
            return;
        }
        let line = String::from_utf8_lossy(line);
        if let Some((start, size, name)) = parse_line(&line) {
            self.insert(start, size, name);
        }
    }

    /// Adds a function of `size` bytes at `start` (replacing one there), within
    /// [`MAX_PERF_MAP_FUNCTIONS`] and [`MAX_LINE_BYTES`] of name.
    pub fn insert(&mut self, start: u64, size: u64, name: &str) {
        if size == 0 || name.is_empty() || name.len() > MAX_LINE_BYTES {
            return;
        }
        if self.functions.len() >= MAX_PERF_MAP_FUNCTIONS && !self.functions.contains_key(&start) {
            self.capped = true;
            return;
        }
        self.functions
            .insert(start, (start.saturating_add(size), name.to_owned()));
    }

    /// Moves the function at `old` to `new` (the runtime moved its code).
    pub fn relocate(&mut self, old: u64, new: u64) {
        if let Some((end, name)) = self.functions.remove(&old) {
            self.functions
                .insert(new, (new.saturating_add(end - old), name));
        }
    }
}

/// `START SIZE name`: hexadecimal numbers with or without `0x`, a name that may hold spaces.
fn parse_line(line: &str) -> Option<(u64, u64, &str)> {
    let hex = |field: &str| {
        let digits = field.strip_prefix("0x").unwrap_or(field);
        u64::from_str_radix(digits, 16).ok()
    };
    let mut fields = line.trim_end_matches('\r').splitn(3, ' ');
    let start = hex(fields.next()?)?;
    let size = hex(fields.next()?)?;
    let name = fields.next()?.trim();
    (size > 0 && !name.is_empty()).then_some((start, size, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_jvm_and_v8_lines() {
        let mut map = PerfMap::default();
        map.feed(
            b"0x00007ff8214017c0 0x0000000000000160 void Hot.hotA()\n\
              3709edd4b56e 21 JS:~hotA /tmp/rt/hot.js:3:14\n\
              not a line\n\
              10 0 empty\n",
        );
        assert_eq!(map.len(), 2);
        assert_eq!(map.lookup(0x7ff8214017c0), Some("void Hot.hotA()"));
        assert_eq!(map.lookup(0x7ff8214017c0 + 0x15f), Some("void Hot.hotA()"));
        assert_eq!(map.lookup(0x7ff8214017c0 + 0x160), None);
        assert_eq!(
            map.lookup(0x3709edd4b570),
            Some("JS:~hotA /tmp/rt/hot.js:3:14")
        );
        assert_eq!(map.lookup(0x10), None);
    }

    #[test]
    fn lines_split_across_reads_are_joined_and_later_lines_win() {
        let mut map = PerfMap::default();
        map.feed(b"1000 10 fir");
        assert!(map.is_empty());
        map.feed(b"st\n1000 20 sec");
        assert_eq!(map.lookup(0x1005), Some("first"));
        map.feed(b"ond\n");
        assert_eq!(map.lookup(0x1015), Some("second"));
    }

    #[test]
    fn overlong_lines_are_skipped_whole() {
        let mut map = PerfMap::default();
        let long = vec![b'x'; MAX_LINE_BYTES * 3];
        map.feed(b"2000 10 ");
        map.feed(&long);
        map.feed(b"tail\n3000 10 kept\n");
        assert_eq!(map.lookup(0x2000), None);
        assert_eq!(map.lookup(0x3000), Some("kept"));
    }

    #[test]
    fn follows_a_growing_file_and_starts_over_when_it_is_rewritten() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("perf-1.map");
        let mut writer = File::create(&path).unwrap();
        writer.write_all(b"1000 10 one\n2000 1").unwrap();
        let mut map = PerfMap::default();
        map.read_from(&mut File::open(&path).unwrap()).unwrap();
        assert_eq!(map.len(), 1);
        writer.write_all(b"0 two\n").unwrap();
        map.read_from(&mut File::open(&path).unwrap()).unwrap();
        assert_eq!(map.lookup(0x2008), Some("two"));
        // Rewritten shorter, as the JVM does: what was read before is gone.
        std::fs::write(&path, b"5000 10 new\n").unwrap();
        map.read_from(&mut File::open(&path).unwrap()).unwrap();
        assert_eq!(map.lookup(0x1000), None);
        assert_eq!(map.lookup(0x5000), Some("new"));
        // Rewritten in place and longer: noticed by its start.
        std::fs::write(&path, b"6000 10 newer\n7000 10 longer than before\n").unwrap();
        map.read_from(&mut File::open(&path).unwrap()).unwrap();
        assert_eq!(map.lookup(0x5000), None);
        assert_eq!(map.lookup(0x7000), Some("longer than before"));
        assert_eq!(map.len(), 2);
    }
}
