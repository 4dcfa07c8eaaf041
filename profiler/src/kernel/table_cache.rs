//! Compiled unwind tables kept on disk by build-id, so that a second run on the same binaries
//! loads them instead of compiling them again (rustc's driver library: 2.7 M rows, 0.9 s).
//!
//! The folder is the profiler's own user's (root's, under sudo) and private: made 0700, and
//! refused if someone else owns it or may write in it. Each file is opened by descriptor
//! without following links, bounded in size, and checked whole (header, length, hash, row
//! order) before use: a planted, truncated or corrupt file is removed and its object compiled
//! again. Files are written in the background, in full or not at all, and the oldest go
//! when the folder passes its size bound. Only the tables of objects no other user can write
//! are kept ([`crate::target::object_trust`]): a user's own program could carry another object's
//! build-id, and a forged table would make the unwinder read other processes' memory where it
//! says.

use std::{
    path::{Path, PathBuf},
    sync::mpsc,
    thread::JoinHandle,
};

use profiler_common::{MAX_OBJECT_ROWS, UnwindRow};

use crate::output::OutputDir;

/// Bumped when the file layout changes.
const FORMAT_VERSION: u32 = 1;
const MAGIC: [u8; 8] = *b"PRFUNWT\0";
/// Magic, version, row count, the profiler that wrote it, hash of the rows.
const HEADER_BYTES: usize = 8 + 4 + 4 + 8 + 8;
const ROW_BYTES: usize = 8;
const _: () = assert!(size_of::<UnwindRow>() == ROW_BYTES);
/// The largest file a table can make: no file larger is read.
const MAX_FILE_BYTES: u64 = HEADER_BYTES as u64 + MAX_OBJECT_ROWS as u64 * ROW_BYTES as u64;
const SUFFIX: &str = ".rows";

/// The cache folder's tag (<https://bford.info/cachedir/>): backup tools skip the folder,
/// and the profiler uses only a folder that has it.
const TAG_NAME: &str = "CACHEDIR.TAG";
const TAG: &str = "Signature: 8a477f597d28d172789f06886806bc55\n\
                   # Compiled unwind tables of the profiler (profiler --unwind-cache).\n";

/// Tables waiting to be written at most.
const PENDING_WRITES: usize = 2;
/// Longest wait at exit for tables being written.
const EXIT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// Smaller tables are compiled in less time than a file takes to open and check.
const MIN_ROWS: usize = 1024;

/// Default size bound of the folder: rustc's libraries take about 25 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 512 << 20;

/// The default folder: `/var/cache/profiler/unwind` for root, else under the user's cache.
pub fn default_folder() -> Option<PathBuf> {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return Some(PathBuf::from("/var/cache/profiler/unwind"));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
    Some(base.join("profiler/unwind"))
}

/// A folder of compiled tables.
pub struct TableCache {
    folder: OutputDir,
    /// Files to write, to the writer thread (a few at a time: a table is up to 64 MiB).
    to_write: Option<mpsc::SyncSender<(String, Vec<u8>)>>,
    writer: Option<JoinHandle<()>>,
    /// Told when the writer is done.
    writer_done: Option<mpsc::Receiver<()>>,
    /// Objects whose tables came from the folder, and were written to it, this run.
    pub loaded: u32,
    pub stored: u32,
}

impl TableCache {
    /// The cache in `path` (made 0700 if missing), kept within `max_bytes`.
    pub fn open(path: &Path, max_bytes: u64) -> std::io::Result<Self> {
        let folder = OutputDir::prepare_private_own(path)?;
        // Only a folder this profiler made is used (and has files removed): one named on the
        // command line that holds anything else is refused.
        match folder.read(TAG_NAME, TAG.len() as u64) {
            Ok(tag) if tag == TAG.as_bytes() => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                if !folder.files_of_owner(|_| true)?.is_empty() {
                    return Err(std::io::Error::other(format!(
                        "{} holds other files and no {TAG_NAME} of the profiler's: not a cache \
                         folder",
                        path.display()
                    )));
                }
                folder.write(TAG_NAME, TAG.as_bytes())?;
            }
            _ => {
                return Err(std::io::Error::other(format!(
                    "{}: its {TAG_NAME} is not the profiler's",
                    path.display()
                )));
            }
        }
        // The writer has descriptors of its own: an `OutputDir` is used by one thread.
        let writer_folder = folder.try_clone()?;
        let (to_write, written) = mpsc::sync_channel::<(String, Vec<u8>)>(PENDING_WRITES);
        let (done, writer_done) = mpsc::channel();
        let writer = std::thread::Builder::new()
            .name("unwind-cache".into())
            .spawn(move || {
                for (name, bytes) in written {
                    match writer_folder.write(&name, &bytes) {
                        Ok(()) => evict(&writer_folder, max_bytes, &name),
                        Err(err) => log::debug!("unwind cache: {name} not written: {err}"),
                    }
                }
                let _ = done.send(());
            })?;
        Ok(TableCache {
            folder,
            to_write: Some(to_write),
            writer: Some(writer),
            writer_done: Some(writer_done),
            loaded: 0,
            stored: 0,
        })
    }

    /// The rows compiled before for the object with `build_id`, if a sound file holds them.
    pub fn load(&mut self, build_id: &[u8]) -> Option<Vec<UnwindRow>> {
        let name = file_name(build_id)?;
        let bytes = match self.folder.read(&name, MAX_FILE_BYTES) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return None,
            Err(err) => {
                log::info!("unwind cache: {name} not used: {err}");
                return None;
            }
        };
        match decode(&bytes) {
            Ok(rows) => {
                self.loaded += 1;
                Some(rows)
            }
            Err(why) => {
                log::info!("unwind cache: {name} not used ({why}); compiled again");
                let _ = self.folder.remove(&name);
                None
            }
        }
    }

    /// Keeps `rows`, compiled for the object with `build_id`, for later runs (written in the
    /// background).
    pub fn store(&mut self, build_id: &[u8], rows: &[UnwindRow]) {
        let (Some(name), Some(to_write)) = (file_name(build_id), &self.to_write) else {
            return;
        };
        // A table too large to be used is not kept, nor one quicker to compile than to read.
        let usable = (MIN_ROWS..=MAX_OBJECT_ROWS as usize).contains(&rows.len());
        // Not written when the writer is behind: memory stays bounded.
        if usable && to_write.try_send((name, encode(rows))).is_ok() {
            self.stored += 1;
        }
    }
}

impl Drop for TableCache {
    /// Waits for the files still being written, a few seconds at most: a file cut short is
    /// removed by the next run.
    fn drop(&mut self) {
        drop(self.to_write.take());
        let finished = self
            .writer_done
            .take()
            .is_some_and(|done| done.recv_timeout(EXIT_WAIT).is_ok());
        if let Some(writer) = self.writer.take()
            && finished
        {
            let _ = writer.join();
        }
    }
}

/// The file of the object with `build_id` (or the file identity that stands for one): its hex
/// digits (a build-id is 20 bytes, usually).
fn file_name(build_id: &[u8]) -> Option<String> {
    use std::fmt::Write as _;
    if build_id.is_empty() || build_id.len() > 64 {
        return None;
    }
    let mut name = String::with_capacity(build_id.len() * 2 + SUFFIX.len());
    for byte in build_id {
        let _ = write!(name, "{byte:02x}");
    }
    name.push_str(SUFFIX);
    Some(name)
}

/// The profiler build writing and reading the files: its executable's identity, so that a
/// table compiled by another build (whose compiler may differ) is not used.
fn maker() -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    static MAKER: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *MAKER.get_or_init(|| {
        let identity = std::fs::metadata("/proc/self/exe")
            .map(|m| {
                format!(
                    "{} {} {} {}",
                    m.dev(),
                    m.ino(),
                    m.size(),
                    m.mtime_nsec() ^ m.mtime()
                )
            })
            .unwrap_or_default();
        hash(format!("{} {identity}", env!("CARGO_PKG_VERSION")).as_bytes())
    })
}

/// An FNV-1a-style hash over 8-byte words (a byte at a time took 25 ms for rustc's tables):
/// catches a torn or altered file, not a forger (the folder is private to the profiler's own
/// user).
fn hash(bytes: &[u8]) -> u64 {
    let mut words = bytes.chunks_exact(8);
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    for word in &mut words {
        let word = u64::from_le_bytes(word.try_into().expect("8 bytes"));
        hash = (hash ^ word).wrapping_mul(0x0100_0000_01b3).rotate_left(29);
    }
    for &byte in words.remainder() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    hash ^ bytes.len() as u64
}

fn encode(rows: &[UnwindRow]) -> Vec<u8> {
    let mut body = Vec::with_capacity(rows.len() * ROW_BYTES);
    for row in rows {
        body.extend_from_slice(&row.address.to_le_bytes());
        body.extend_from_slice(&row.cfa_offset.to_le_bytes());
        body.extend_from_slice(&row.rbp_offset.to_le_bytes());
        body.push(row.kind);
    }
    let mut bytes = Vec::with_capacity(HEADER_BYTES + body.len());
    bytes.extend_from_slice(&MAGIC);
    bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    bytes.extend_from_slice(&(rows.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&maker().to_le_bytes());
    bytes.extend_from_slice(&hash(&body).to_le_bytes());
    bytes.extend_from_slice(&body);
    bytes
}

/// The rows a file holds, or what is wrong with it.
fn decode(bytes: &[u8]) -> Result<Vec<UnwindRow>, &'static str> {
    let (header, body) = bytes
        .split_at_checked(HEADER_BYTES)
        .ok_or("shorter than its header")?;
    let word = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().expect("4 bytes"));
    if header[..8] != MAGIC {
        return Err("not a table file");
    }
    if word(8) != FORMAT_VERSION {
        return Err("written by another version");
    }
    let count = word(12) as usize;
    if count > MAX_OBJECT_ROWS as usize || count * ROW_BYTES != body.len() {
        return Err("length does not match its row count");
    }
    let long = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().expect("8 bytes"));
    if long(16) != maker() {
        return Err("written by another build of the profiler");
    }
    if hash(body) != long(24) {
        return Err("rows do not match their hash");
    }
    let rows: Vec<UnwindRow> = body
        .chunks_exact(ROW_BYTES)
        .map(|row| UnwindRow {
            address: u32::from_le_bytes(row[..4].try_into().expect("4 bytes")),
            cfa_offset: i16::from_le_bytes([row[4], row[5]]),
            rbp_offset: row[6] as i8,
            kind: row[7],
        })
        .collect();
    // The kernel searches them by address.
    if rows
        .windows(2)
        .any(|pair| pair[0].address > pair[1].address)
    {
        return Err("rows out of order");
    }
    Ok(rows)
}

/// Removes the oldest table files until the folder holds at most `max_bytes` (`kept`, just
/// written, stays).
fn evict(folder: &OutputDir, max_bytes: u64, kept: &str) {
    let Ok(mut files) = folder.files_of_owner(|name| name.ends_with(SUFFIX)) else {
        return;
    };
    let mut total: u64 = files.iter().map(|file| file.bytes).sum();
    files.sort_by_key(|file| file.modified);
    for file in files {
        if total <= max_bytes {
            break;
        }
        if file.name != kept && folder.remove(&file.name).is_ok() {
            total = total.saturating_sub(file.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(count: u32) -> Vec<UnwindRow> {
        (0..count)
            .map(|i| UnwindRow {
                address: 0x1000 + i * 16,
                cfa_offset: (i % 7) as i16 - 3,
                rbp_offset: -2,
                kind: (i % 3) as u8,
            })
            .collect()
    }

    /// Waits for the writer: dropped, it has written everything.
    fn reopen(cache: TableCache, path: &Path, max_bytes: u64) -> TableCache {
        drop(cache);
        TableCache::open(path, max_bytes).unwrap()
    }

    #[test]
    fn tables_come_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("unwind");
        let mut cache = TableCache::open(&path, DEFAULT_MAX_BYTES).unwrap();
        assert_eq!(cache.load(b"\x01\x02"), None);
        cache.store(b"\x01\x02", &rows(2000));
        let mut cache = reopen(cache, &path, DEFAULT_MAX_BYTES);
        assert_eq!(cache.load(b"\x01\x02"), Some(rows(2000)));
        assert_eq!(cache.loaded, 1);
        assert_eq!(cache.load(b"\x01\x03"), None);
        // Made private.
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn a_damaged_or_planted_file_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("unwind");
        let mut cache = TableCache::open(&path, DEFAULT_MAX_BYTES).unwrap();
        cache.store(b"\xaa", &rows(2000));
        cache.store(b"\xbb", &rows(2000));
        let cache = reopen(cache, &path, DEFAULT_MAX_BYTES);
        // One byte of a row changed: the hash no longer matches.
        let file = path.join("aa.rows");
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[HEADER_BYTES + 5] ^= 1;
        std::fs::write(&file, &bytes).unwrap();
        // Cut short.
        let file = path.join("bb.rows");
        let bytes = std::fs::read(&file).unwrap();
        std::fs::write(&file, &bytes[..bytes.len() - 3]).unwrap();
        // A link planted under a table's name, to a sound table elsewhere.
        let elsewhere = dir.path().join("elsewhere.rows");
        std::fs::write(&elsewhere, encode(&rows(10))).unwrap();
        std::os::unix::fs::symlink(&elsewhere, path.join("cc.rows")).unwrap();
        let mut cache = reopen(cache, &path, DEFAULT_MAX_BYTES);
        assert_eq!(cache.load(b"\xaa"), None);
        assert_eq!(cache.load(b"\xbb"), None);
        assert_eq!(cache.load(b"\xcc"), None);
        assert_eq!(cache.loaded, 0);
        // The damaged ones are gone; the link is left alone, and what it names too.
        assert!(!path.join("aa.rows").exists() && !path.join("bb.rows").exists());
        assert!(elsewhere.exists());
    }

    #[test]
    fn decoding_checks_every_part() {
        let good = encode(&rows(4));
        assert_eq!(decode(&good), Ok(rows(4)));
        assert!(decode(&good[..10]).is_err());
        let mut bad = good.clone();
        bad[0] = b'X';
        assert_eq!(decode(&bad), Err("not a table file"));
        let mut bad = good.clone();
        bad[8] = 99;
        assert_eq!(decode(&bad), Err("written by another version"));
        let mut bad = good.clone();
        bad[12] = 5;
        assert_eq!(decode(&bad), Err("length does not match its row count"));
        let mut reversed = rows(4);
        reversed.reverse();
        assert_eq!(decode(&encode(&reversed)), Err("rows out of order"));
        assert_eq!(file_name(&[0xde, 0xad]).as_deref(), Some("dead.rows"));
        assert_eq!(file_name(&[]), None);
        assert_eq!(file_name(&[0; 65]), None);
    }

    #[test]
    fn a_folder_others_may_write_in_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shared");
        std::fs::create_dir(&path).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(TableCache::open(&path, DEFAULT_MAX_BYTES).is_err());
    }

    #[test]
    fn a_folder_of_other_files_is_not_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("home");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("notes.rows"), b"mine").unwrap();
        let err = TableCache::open(&path, DEFAULT_MAX_BYTES).err().unwrap();
        assert!(err.to_string().contains("not a cache folder"), "{err}");
        assert_eq!(std::fs::read(path.join("notes.rows")).unwrap(), b"mine");
        // A folder it made is tagged, and used again.
        let made = dir.path().join("unwind");
        drop(TableCache::open(&made, DEFAULT_MAX_BYTES).unwrap());
        assert!(
            std::fs::read_to_string(made.join(TAG_NAME))
                .unwrap()
                .starts_with("Signature")
        );
        assert!(TableCache::open(&made, DEFAULT_MAX_BYTES).is_ok());
    }

    #[test]
    fn the_oldest_tables_go_past_the_size_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("unwind");
        let one = encode(&rows(2000)).len() as u64;
        let mut cache = TableCache::open(&path, 2 * one).unwrap();
        for id in [b"\x01", b"\x02", b"\x03"] {
            cache.store(id, &rows(2000));
            // Written one after another, a modification time apart.
            cache = reopen(cache, &path, 2 * one);
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(cache.load(b"\x01"), None, "the oldest went");
        assert!(cache.load(b"\x02").is_some() && cache.load(b"\x03").is_some());
    }
}
