//! Unwind tables for the in-kernel unwinder: compiles each object a target maps once (cached by
//! build-id, or by file identity without one), appends its rows to the kernel's chunks of
//! rows, and describes each process's executable mappings to the kernel.

use std::{
    collections::HashMap,
    fs::File,
    os::unix::fs::MetadataExt as _,
    time::{Duration, Instant},
};

use profiler_common::{
    FileKey, MAX_PROCESS_MAPPINGS, MAX_UNWIND_CHUNKS, ObjectUnwind, ProcessUnwind,
    UNWIND_CHUNK_ROWS, UnwindMapping,
};

use crate::{
    kernel::{
        object_layout::{Headers, Segment, headers, load_bias},
        probes::KernelProbes,
        unwind_table,
    },
    model::{MAX_NAMED_OBJECTS_WITHOUT_TABLES, NoTableReason, ObjectWithoutTable, UnwindStats},
    target::procfs,
};

/// Rows of an object in one chunk: from `first_row`, `row_count` of them, describing the
/// object's addresses from `address` (that of its first row) on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Piece {
    first_row: u32,
    row_count: u32,
    address: u32,
}

/// One compiled object: where its rows are (one piece, or several for an object larger than
/// the room left in a chunk; none when it is walked by frame pointers) and its segments.
#[derive(Clone, Debug)]
struct ObjectTable {
    pieces: Vec<Piece>,
    segments: Vec<Segment>,
}

/// An object published to the kernel by file, kept open for symbolization.
#[derive(Debug)]
pub struct PublishedObject {
    /// Path as first seen.
    pub path: String,
    /// The file, open.
    pub file: File,
    device: u64,
    inode: u64,
    address_delta: u64,
}

/// How a file is recognised again without reading it.
type FileIdentity = (u64, u64, u64, i64, i64, i64);

/// The tables loaded so far.
pub struct UnwindTables {
    objects: HashMap<Vec<u8>, ObjectTable>,
    identities: HashMap<FileIdentity, Vec<u8>>,
    next_row: u32,
    capacity: u32,
    warned_full: bool,
    stats: UnwindStats,
    build_time: Duration,
    /// Fingerprint of the memory map each process's mappings were last described from.
    loaded_maps: HashMap<u32, u64>,
    /// The files of the objects published by file, by their first row: what a process the
    /// kernel described by itself maps (see [`UnwindTables::learned_mappings`]). `None` when
    /// several files share the rows (one build-id): which one a process mapped is unknown.
    published: HashMap<u32, Option<PublishedObject>>,
    /// (device, inode) of the profiler's own executable, never a target worth a table (a
    /// launched command maps it until its exec).
    own_executable: Option<(u64, u64)>,
    /// Tables compiled by earlier runs, by build-id or file.
    cache: Option<super::table_cache::TableCache>,
}

impl UnwindTables {
    /// Tables of at most `capacity` rows, in chunks made as objects need them.
    pub fn new(capacity: u32) -> Self {
        let capacity = capacity.min(MAX_UNWIND_CHUNKS * UNWIND_CHUNK_ROWS);
        UnwindTables {
            objects: HashMap::new(),
            identities: HashMap::new(),
            next_row: 0,
            capacity,
            warned_full: false,
            stats: UnwindStats {
                capacity,
                ..UnwindStats::default()
            },
            build_time: Duration::ZERO,
            loaded_maps: HashMap::new(),
            published: HashMap::new(),
            own_executable: std::fs::metadata("/proc/self/exe")
                .ok()
                .map(|metadata| (metadata.dev(), metadata.ino())),
            cache: None,
        }
    }

    /// Takes tables from `cache`, and keeps the ones compiled there.
    pub fn with_cache(self, cache: super::table_cache::TableCache) -> Self {
        UnwindTables {
            cache: Some(cache),
            ..self
        }
    }

    /// What building the tables cost so far.
    pub fn stats(&self) -> UnwindStats {
        UnwindStats {
            build_ms: (self.build_time.as_secs_f64() * 1e4).round() / 10.0,
            from_cache: self.cache.as_ref().map_or(0, |cache| cache.loaded),
            ..self.stats.clone()
        }
    }

    /// Counts an object walked by frame pointers, naming the first few.
    fn note_without_table(&mut self, path: &str, reason: NoTableReason, rows: usize) {
        self.stats.objects_without_tables += 1;
        if self.stats.without_tables.len() < MAX_NAMED_OBJECTS_WITHOUT_TABLES {
            self.stats.without_tables.push(ObjectWithoutTable {
                path: path.to_owned(),
                reason,
                rows: rows as u64,
            });
        }
    }

    /// Compiles the tables of every executable object `pid` maps (`text`, its
    /// `/proc/PID/maps`; objects not loaded yet) and tells the kernel where they are. Returns
    /// the number of mappings described.
    pub fn load_process_maps(
        &mut self,
        pid: u32,
        text: &str,
        probes: &mut KernelProbes,
    ) -> Result<usize, super::ProbeError> {
        let started = Instant::now();
        let maps = procfs::parse_maps(text);
        // Asked again with the same executable mappings (the kernel asks for an address it
        // has no table for; heaps and thread stacks come and go): the answer would be the same.
        let fingerprint = {
            use std::hash::{Hash as _, Hasher as _};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            for entry in maps.iter().filter(|entry| entry.executable) {
                (entry.start, entry.end, entry.file_offset, entry.inode).hash(&mut hasher);
                entry.path.hash(&mut hasher);
            }
            hasher.finish()
        };
        if self.loaded_maps.get(&pid) == Some(&fingerprint) {
            return Ok(0);
        }
        let mut mappings = Vec::new();
        for entry in maps.iter().filter(|entry| entry.executable) {
            // Every executable mapping is described, with rows or without (frame pointers):
            // an address the kernel knows no mapping for makes it ask for tables again.
            let without_table = UnwindMapping {
                start: entry.start,
                end: entry.end,
                bias: 0,
                first_row: 0,
                row_count: 0,
            };
            // Anonymous or special ([vdso], JIT code): frame pointers.
            let object = if entry.path.starts_with('/') {
                self.object(pid, entry, probes)
            } else {
                None
            };
            let bias = object
                .as_ref()
                .and_then(|object| load_bias(&object.segments, entry.start, entry.file_offset));
            match (object, bias) {
                (Some(object), Some(bias)) if !object.pieces.is_empty() => {
                    mappings.extend(piece_mappings(&object.pieces, entry.start, entry.end, bias));
                }
                _ => mappings.push(without_table),
            }
        }
        mappings.sort_by_key(|mapping| mapping.start);
        if mappings.len() > MAX_PROCESS_MAPPINGS {
            log::warn!(
                "process {pid} maps {} executable objects or pieces of them; the unwinder \
                 knows the first {MAX_PROCESS_MAPPINGS}, the rest are walked by frame pointers",
                mappings.len()
            );
            mappings.truncate(MAX_PROCESS_MAPPINGS);
        }
        let uretprobe_trampoline = maps
            .iter()
            .find(|entry| entry.path == "[uprobes]")
            .map_or(0, |entry| entry.start);
        let mut process = Box::new(ProcessUnwind {
            mapping_count: mappings.len() as u32,
            _pad: 0,
            uretprobe_trampoline,
            mappings: [UnwindMapping::default(); MAX_PROCESS_MAPPINGS],
        });
        process.mappings[..mappings.len()].copy_from_slice(&mappings);
        probes.set_process_unwind(pid, &process)?;
        self.loaded_maps.insert(pid, fingerprint);
        self.stats.process_loads += 1;
        self.build_time += started.elapsed();
        Ok(mappings.len())
    }

    /// The compiled table of the file behind a mapping, compiling and loading it if new.
    fn object(
        &mut self,
        pid: u32,
        entry: &procfs::MapEntry,
        probes: &mut KernelProbes,
    ) -> Option<ObjectTable> {
        let file = procfs::open_mapped_file(pid, entry).ok()?;
        self.file_table(file, &entry.path, probes)
    }

    /// Forgets what was described for `pid` (it executed a new program, and the kernel
    /// dropped its mappings, or it exited).
    pub fn forget(&mut self, pid: u32) {
        self.loaded_maps.remove(&pid);
    }

    /// Compiles and loads the tables of a program about to be run, so that its first
    /// samples after the exec do not wait for them.
    pub fn prepare_file(&mut self, path: &std::path::Path, probes: &mut KernelProbes) {
        let started = Instant::now();
        if let Some(file) = crate::target::libraries::open(path) {
            self.file_table(file, &path.to_string_lossy(), probes);
        }
        self.build_time += started.elapsed();
    }

    /// The compiled table of an open object file, compiling and loading it if new.
    fn file_table(
        &mut self,
        mut file: File,
        path: &str,
        probes: &mut KernelProbes,
    ) -> Option<ObjectTable> {
        let metadata = file.metadata().ok()?;
        if self.own_executable == Some((metadata.dev(), metadata.ino())) {
            return None;
        }
        // With its ctime: a new file on a freed inode number, of the same size and modification
        // time, is then another file.
        let identity = (
            metadata.dev(),
            metadata.ino(),
            metadata.size(),
            metadata.mtime(),
            metadata.ctime(),
            metadata.ctime_nsec(),
        );
        if let Some(key) = self.identities.get(&identity) {
            return self.objects.get(key).cloned();
        }
        if !metadata.is_file() || metadata.len() > procfs::MAX_OBJECT_BYTES {
            return None;
        }
        // Its headers only: the rest is read if its table is not in the cache.
        let Headers { build_id, segments } = headers(&file);
        // Objects share a table by build-id, in this run and on disk, only if no other user
        // could have written them: a user's file could carry libc's build-id and a forged
        // table, with which every process's libc would then be walked. (`trusted_object`
        // also refuses file systems and mounts users can make.)
        let trusted = crate::target::object_trust::trusted_object(&file, &metadata);
        let build_id = build_id.filter(|_| trusted);
        let key = build_id
            .as_ref()
            .map(|id| [b"build-id:".as_slice(), id].concat())
            .unwrap_or_else(|| format!("file:{identity:?}").into_bytes());
        self.identities.insert(identity, key.clone());
        let table = match self.objects.get(&key) {
            Some(object) => object.clone(),
            None => {
                // On disk, an object is known by its build-id, or without one (rustc's
                // BOLT-optimised driver) by its file: changing the file changes its ctime,
                // which no one can set. The two kinds of key never name one file.
                let cache_key = match build_id {
                    Some(id) => [b"b".as_slice(), &id].concat(),
                    None => [
                        b"f".as_slice(),
                        &metadata.dev().to_le_bytes(),
                        &metadata.ino().to_le_bytes(),
                        &metadata.size().to_le_bytes(),
                        &metadata.mtime().to_le_bytes(),
                        &metadata.mtime_nsec().to_le_bytes(),
                        &metadata.ctime().to_le_bytes(),
                        &metadata.ctime_nsec().to_le_bytes(),
                    ]
                    .concat(),
                };
                let cache_key = trusted.then_some(&cache_key[..]);
                let table = self.compile(path, &mut file, segments, cache_key, probes);
                self.objects.insert(key, table.clone());
                table
            }
        };
        self.publish_by_file(&file, path, &metadata, &table, probes);
        Some(table)
    }

    /// Tells the unwinder where an object's rows are by the file it was read from, so a
    /// process that maps the file is unwound before its mappings are described (a new exec,
    /// a library just loaded; see the kernel's `unwind_mappings`).
    fn publish_by_file(
        &mut self,
        file: &File,
        path: &str,
        metadata: &std::fs::Metadata,
        table: &ObjectTable,
        probes: &mut KernelProbes,
    ) {
        let Some(text) = table.segments.iter().find(|segment| segment.executable) else {
            return;
        };
        // The kernel describes a mapping by itself with one piece: an object split into
        // several waits for the collector's description.
        let [piece] = table.pieces[..] else {
            return;
        };
        let object = ObjectUnwind {
            text_start: text.file_offset,
            text_end: text.file_offset.wrapping_add(text.file_size),
            address_delta: text.address.wrapping_sub(text.file_offset),
            first_row: piece.first_row,
            row_count: piece.row_count,
        };
        if let Err(err) = probes.set_object_unwind(file_key(metadata), &object) {
            log::debug!("{path}: unwind table not published by file: {err}");
            return;
        }
        let published = file.try_clone().ok().map(|file| PublishedObject {
            path: path.to_owned(),
            file,
            device: metadata.dev(),
            inode: metadata.ino(),
            address_delta: object.address_delta,
        });
        match self.published.entry(piece.first_row) {
            std::collections::hash_map::Entry::Vacant(entry) => {
                entry.insert(published);
            }
            // Another file with the same rows: symbolizing with either could name the other's
            // functions (a private copy, a different path), so neither is used.
            std::collections::hash_map::Entry::Occupied(mut entry) => {
                let same = entry.get().as_ref().is_some_and(|known| {
                    (known.device, known.inode) == (metadata.dev(), metadata.ino())
                });
                if !same {
                    entry.insert(None);
                }
            }
        }
    }

    /// The mappings of a process as the kernel described them by itself, with the objects'
    /// files: how the addresses of a process that exited before its memory map was read are
    /// symbolized.
    pub fn learned_mappings(
        &self,
        process: &ProcessUnwind,
    ) -> Vec<(procfs::MapEntry, &PublishedObject)> {
        let count = (process.mapping_count as usize).min(MAX_PROCESS_MAPPINGS);
        process.mappings[..count]
            .iter()
            .filter_map(|mapping| {
                // A mapping without rows (JIT code, the vDSO, frame pointers) names no object:
                // its `first_row` 0 is not the object published at row 0.
                if mapping.row_count == 0 {
                    return None;
                }
                let object = self.published.get(&mapping.first_row)?.as_ref()?;
                let entry = procfs::MapEntry {
                    start: mapping.start,
                    end: mapping.end,
                    executable: true,
                    // The offset in the file of `start`: its object address less the delta.
                    file_offset: mapping
                        .start
                        .wrapping_sub(mapping.bias)
                        .wrapping_sub(object.address_delta),
                    device: format!(
                        "{:02x}:{:02x}",
                        libc::major(object.device),
                        libc::minor(object.device)
                    ),
                    inode: object.inode,
                    path: object.path.clone(),
                    deleted: false,
                };
                Some((entry, object))
            })
            .collect()
    }

    /// Compiles one object and loads its rows; an object without rows is walked by frame
    /// pointers.
    fn compile(
        &mut self,
        path: &str,
        file: &mut File,
        segments: Vec<Segment>,
        cache_key: Option<&[u8]>,
        probes: &mut KernelProbes,
    ) -> ObjectTable {
        let mut reason = NoTableReason::NoUnwindInfo;
        let cached = self
            .cache
            .as_mut()
            .zip(cache_key)
            .and_then(|(cache, id)| cache.load(id));
        let compiled = match cached {
            Some(rows) => Ok(rows),
            None => read_whole(file)
                .ok_or(unwind_table::CompileError::Unreadable)
                .and_then(|bytes| unwind_table::compile(&bytes))
                .inspect(|rows| {
                    if let Some((cache, id)) = self.cache.as_mut().zip(cache_key) {
                        cache.store(id, rows);
                    }
                }),
        };
        let rows = match compiled {
            Ok(rows) => rows,
            Err(err) => {
                log::info!(
                    "{path}: no unwind table ({}); walked by frame pointers",
                    crate::text::error_chain(&err)
                );
                if matches!(err, unwind_table::CompileError::TooManyRules) {
                    reason = NoTableReason::TooManyRows;
                }
                Vec::new()
            }
        };
        let rows = if rows.len() > profiler_common::MAX_OBJECT_ROWS as usize {
            log::warn!(
                "{path}: {} unwind rows, more than one object may have ({}); walked by frame \
                 pointers",
                rows.len(),
                profiler_common::MAX_OBJECT_ROWS
            );
            reason = NoTableReason::TooManyRows;
            Vec::new()
        } else {
            rows
        };
        let wanted_rows = rows.len();
        let before = self.next_row;
        let placed = self.place(rows.len());
        let mut pieces = Vec::new();
        match placed {
            Some(places) => {
                let mut rest = &rows[..];
                for (first_row, count) in places {
                    let (piece, after) = rest.split_at(count as usize);
                    if let Err(err) = probes.write_unwind_rows(first_row, piece) {
                        log::warn!(
                            "{path}: loading its unwind table failed: {}",
                            crate::text::error_chain(&err)
                        );
                        reason = NoTableReason::LoadFailed;
                        pieces.clear();
                        // Its rows are unused: the next object takes their place (a chunk
                        // that could not be made is tried again).
                        self.next_row = before;
                        break;
                    }
                    pieces.push(Piece {
                        first_row,
                        row_count: count,
                        address: piece[0].address,
                    });
                    rest = after;
                }
            }
            None if rows.is_empty() => {}
            None => {
                reason = NoTableReason::TablesFull;
                if !self.warned_full {
                    self.warned_full = true;
                    log::warn!(
                        "unwind tables full ({} of {} rows used): {path} ({} rows) and later \
                         objects are walked by frame pointers; raise --unwind-rows",
                        self.stats.rows,
                        self.capacity,
                        rows.len()
                    );
                }
            }
        }
        let row_count: u32 = pieces.iter().map(|piece| piece.row_count).sum();
        log::debug!("{path}: {row_count} unwind rows in {} pieces", pieces.len());
        if row_count == 0 {
            self.note_without_table(path, reason, wanted_rows);
        } else {
            self.stats.objects += 1;
            self.stats.rows += row_count;
        }
        ObjectTable { pieces, segments }
    }

    /// Where `count` rows go, as (first row, rows) in chunk order, moving `next_row` past
    /// them; `None` (nothing moved) when they do not fit the budget. An object that fits in
    /// a chunk is never split: it starts a new chunk when the current one has too little
    /// room left (which stays unused).
    fn place(&mut self, count: usize) -> Option<Vec<(u32, u32)>> {
        let count = u32::try_from(count).ok().filter(|&count| count > 0)?;
        let mut next = self.next_row;
        let room = UNWIND_CHUNK_ROWS - next % UNWIND_CHUNK_ROWS;
        if count > room && count <= UNWIND_CHUNK_ROWS {
            next = next.checked_add(room)?;
        }
        let mut places = Vec::new();
        let mut left = count;
        while left > 0 {
            let room = UNWIND_CHUNK_ROWS - next % UNWIND_CHUNK_ROWS;
            let take = left.min(room);
            places.push((next, take));
            next = next.checked_add(take)?;
            left -= take;
        }
        if next > self.capacity {
            return None;
        }
        self.next_row = next;
        Some(places)
    }
}

/// The mappings a process's `[start, end)` mapping of an object splits into, one per piece of
/// its rows: each piece covers from its first row's address to the next piece's.
fn piece_mappings(
    pieces: &[Piece],
    start: u64,
    end: u64,
    bias: u64,
) -> impl Iterator<Item = UnwindMapping> + '_ {
    pieces.iter().enumerate().filter_map(move |(index, piece)| {
        let from = match index {
            0 => start,
            _ => (u64::from(piece.address).wrapping_add(bias)).max(start),
        };
        let to = match pieces.get(index + 1) {
            Some(next) => (u64::from(next.address).wrapping_add(bias)).min(end),
            None => end,
        };
        (from < to).then_some(UnwindMapping {
            start: from,
            end: to,
            bias,
            first_row: piece.first_row,
            row_count: piece.row_count,
        })
    })
}

/// The whole of an object file whose headers were read.
fn read_whole(file: &mut File) -> Option<Vec<u8>> {
    use std::io::Seek as _;

    file.rewind().ok()?;
    procfs::read_object(file)
}

/// A file as the kernel names it: the device in the kernel's own `dev_t` encoding
/// (`major << 20 | minor`), not `stat`'s.
fn file_key(metadata: &std::fs::Metadata) -> FileKey {
    let device = metadata.dev();
    FileKey {
        device: (u64::from(libc::major(device)) << 20) | u64::from(libc::minor(device)),
        inode: metadata.ino(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_go_whole_into_a_chunk_and_larger_ones_in_pieces() {
        let chunk = UNWIND_CHUNK_ROWS;
        let mut tables = UnwindTables::new(4 * chunk - 1);
        assert_eq!(tables.place(100), Some(vec![(0, 100)]));
        // Too big for the room left, small enough for a chunk: the next chunk, whole.
        assert_eq!(
            tables.place(chunk as usize - 50),
            Some(vec![(chunk, chunk - 50)])
        );
        // Larger than a chunk: the room left, then what follows.
        assert_eq!(
            tables.place(chunk as usize + 10),
            Some(vec![(2 * chunk - 50, 50), (2 * chunk, chunk - 40)])
        );
        // Past the budget: nothing placed, nothing used.
        assert_eq!(tables.place(chunk as usize), None);
        assert_eq!(tables.next_row, 3 * chunk - 40);
        assert_eq!(tables.place(40), Some(vec![(3 * chunk - 40, 40)]));
        assert_eq!(tables.place(0), None);
    }

    #[test]
    fn a_split_object_is_described_piece_by_piece() {
        let pieces = [
            Piece {
                first_row: 10,
                row_count: 5,
                address: 0x1000,
            },
            Piece {
                first_row: UNWIND_CHUNK_ROWS,
                row_count: 7,
                address: 0x8000,
            },
        ];
        let bias = 0x5555_0000_0000;
        let mappings: Vec<_> = piece_mappings(&pieces, bias + 0x1000, bias + 0x9000, bias)
            .map(|mapping| (mapping.start - bias, mapping.end - bias, mapping.first_row))
            .collect();
        assert_eq!(
            mappings,
            [(0x1000, 0x8000, 10), (0x8000, 0x9000, UNWIND_CHUNK_ROWS)]
        );
        // A mapping of only the second piece's addresses.
        let mappings: Vec<_> = piece_mappings(&pieces, bias + 0x8800, bias + 0x9000, bias)
            .map(|mapping| (mapping.start - bias, mapping.first_row))
            .collect();
        assert_eq!(mappings, [(0x8800, UNWIND_CHUNK_ROWS)]);
    }
}
