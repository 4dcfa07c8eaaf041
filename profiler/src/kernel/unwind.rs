//! Unwind tables for the in-kernel unwinder: compiles each object a target maps once (cached by
//! build-id, or by file identity without one), appends its rows to the kernel's shared row
//! array, and describes each process's executable mappings to the kernel.

use std::{
    collections::HashMap,
    fs::File,
    os::unix::fs::MetadataExt as _,
    time::{Duration, Instant},
};

use object::{Object as _, ObjectSegment as _};
use profiler_common::{FileKey, MAX_PROCESS_MAPPINGS, ObjectUnwind, ProcessUnwind, UnwindMapping};

use crate::{
    kernel::{probes::KernelProbes, unwind_table},
    model::{MAX_NAMED_OBJECTS_WITHOUT_TABLES, NoTableReason, ObjectWithoutTable, UnwindStats},
    target::procfs,
};

/// A loadable segment: where its file bytes go in the object's address space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Segment {
    file_offset: u64,
    address: u64,
    file_size: u64,
    executable: bool,
}

/// One compiled object: its rows in the kernel's array and its segments.
#[derive(Clone, Debug)]
struct ObjectTable {
    first_row: u32,
    row_count: u32,
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
type FileIdentity = (u64, u64, u64, i64);

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
}

impl UnwindTables {
    /// Tables for a row array of `capacity` rows.
    pub fn new(capacity: u32) -> Self {
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
        }
    }

    /// What building the tables cost so far.
    pub fn stats(&self) -> UnwindStats {
        UnwindStats {
            build_ms: (self.build_time.as_secs_f64() * 1e4).round() / 10.0,
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
            mappings.push(match (object, bias) {
                (Some(object), Some(bias)) => UnwindMapping {
                    bias,
                    first_row: object.first_row,
                    row_count: object.row_count,
                    ..without_table
                },
                _ => without_table,
            });
        }
        mappings.sort_by_key(|mapping| mapping.start);
        if mappings.len() > MAX_PROCESS_MAPPINGS {
            log::warn!(
                "process {pid} maps {} executable objects; the unwinder knows the first \
                 {MAX_PROCESS_MAPPINGS}, the rest are walked by frame pointers",
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
        let identity = (
            metadata.dev(),
            metadata.ino(),
            metadata.size(),
            metadata.mtime(),
        );
        if let Some(key) = self.identities.get(&identity) {
            return self.objects.get(key).cloned();
        }
        let bytes = procfs::read_object(&mut file)?;
        let key = unwind_table::build_id(&bytes)
            .map(|id| [b"build-id:".as_slice(), &id].concat())
            .unwrap_or_else(|| format!("file:{identity:?}").into_bytes());
        self.identities.insert(identity, key.clone());
        let table = match self.objects.get(&key) {
            Some(object) => object.clone(),
            None => {
                let table = self.compile(path, &bytes, probes);
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
        if table.row_count == 0 {
            return;
        }
        let object = ObjectUnwind {
            text_start: text.file_offset,
            text_end: text.file_offset.wrapping_add(text.file_size),
            address_delta: text.address.wrapping_sub(text.file_offset),
            first_row: table.first_row,
            row_count: table.row_count,
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
        match self.published.entry(table.first_row) {
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
    fn compile(&mut self, path: &str, bytes: &[u8], probes: &mut KernelProbes) -> ObjectTable {
        let segments = segments(bytes);
        let mut reason = NoTableReason::NoUnwindInfo;
        let rows = match unwind_table::compile(bytes) {
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
                "{path}: {} unwind rows, more than the unwinder searches ({}); walked by frame \
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
        let fits = u32::try_from(rows.len())
            .ok()
            .filter(|&count| count <= self.capacity - self.next_row);
        let row_count = match fits {
            Some(count) if count > 0 => match probes.write_unwind_rows(self.next_row, &rows) {
                Ok(()) => count,
                Err(err) => {
                    log::warn!(
                        "{path}: loading its unwind table failed: {}",
                        crate::text::error_chain(&err)
                    );
                    reason = NoTableReason::LoadFailed;
                    0
                }
            },
            Some(_) => 0,
            None => {
                reason = NoTableReason::TablesFull;
                if !self.warned_full {
                    self.warned_full = true;
                    log::warn!(
                        "unwind tables full ({} of {} rows used): {path} ({} rows) and later \
                         objects are walked by frame pointers; raise --unwind-rows",
                        self.next_row,
                        self.capacity,
                        rows.len()
                    );
                }
                0
            }
        };
        log::debug!("{path}: {row_count} unwind rows");
        if row_count == 0 {
            self.note_without_table(path, reason, wanted_rows);
        } else {
            self.stats.objects += 1;
            self.stats.rows += row_count;
        }
        let table = ObjectTable {
            first_row: self.next_row,
            row_count,
            segments,
        };
        self.next_row += row_count;
        table
    }
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

/// The loadable segments of an ELF object (empty if it is not one).
fn segments(bytes: &[u8]) -> Vec<Segment> {
    let Ok(file) = object::File::parse(bytes) else {
        return Vec::new();
    };
    file.segments()
        .map(|segment| {
            let (file_offset, file_size) = segment.file_range();
            Segment {
                file_offset,
                address: segment.address(),
                file_size,
                executable: matches!(
                    segment.flags(),
                    object::SegmentFlags::Elf { p_flags } if p_flags & object::elf::PF_X != 0
                ),
            }
        })
        .collect()
}

/// The bias of a mapping of file offset `file_offset` at `start`: object address = process
/// address - bias. Mappings start on a page, segments need not: compare page-aligned.
fn load_bias(segments: &[Segment], start: u64, file_offset: u64) -> Option<u64> {
    const PAGE: u64 = 4096;
    let aligned = |segment: &&Segment| segment.file_offset & !(PAGE - 1);
    // The segment the mapping starts: segments sharing a page with the one before overlap it
    // in file offsets, so an exact start wins over containment.
    let segment = segments
        .iter()
        .find(|segment| aligned(segment) == file_offset)
        .or_else(|| {
            segments.iter().find(|segment| {
                aligned(segment) <= file_offset
                    && file_offset < segment.file_offset + segment.file_size.max(1)
            })
        })?;
    let aligned_offset = segment.file_offset & !(PAGE - 1);
    let aligned_address = segment.address - (segment.file_offset - aligned_offset);
    Some(start.wrapping_sub(aligned_address + (file_offset - aligned_offset)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bias_of_a_pie_text_mapping() {
        // A PIE whose text segment sits at file offset 0x1000, address 0x1000, mapped at
        // 0x5555_5555_5000 with offset 0x1000: bias is the load address 0x5555_5555_4000.
        let segments = [
            Segment {
                file_offset: 0,
                address: 0,
                file_size: 0x800,
                executable: false,
            },
            Segment {
                file_offset: 0x1000,
                address: 0x1000,
                file_size: 0x2345,
                executable: false,
            },
        ];
        assert_eq!(
            load_bias(&segments, 0x5555_5555_5000, 0x1000),
            Some(0x5555_5555_4000)
        );
    }

    #[test]
    fn bias_of_an_unaligned_segment() {
        // libc-style: text at file offset 0x28000 but address 0x28000 + 0x1000 would be a
        // shifted layout; here the segment's offset is not page-aligned.
        let segments = [Segment {
            file_offset: 0x28040,
            address: 0x29040,
            file_size: 0x10000,
            executable: false,
        }];
        // Mapped from offset 0x28000 at 0x7f00_0002_9000: address 0x29000 is there.
        assert_eq!(
            load_bias(&segments, 0x7f00_0002_9000, 0x28000),
            Some(0x7f00_0000_0000)
        );
        assert_eq!(load_bias(&segments, 0x7f00_0002_9000, 0x50000), None);
    }

    #[test]
    fn bias_when_segments_share_a_page() {
        // rustc-linked PIE: the read-only segment's file range runs into the page where the
        // text segment starts (offset 0x16f70, address 0x17f70), mapped from offset 0x16000.
        let segments = [
            Segment {
                file_offset: 0,
                address: 0,
                file_size: 0x16f6c,
                executable: false,
            },
            Segment {
                file_offset: 0x16f70,
                address: 0x17f70,
                file_size: 0x3fb70,
                executable: false,
            },
        ];
        assert_eq!(
            load_bias(&segments, 0x55e6_c67a_7000, 0x16000),
            Some(0x55e6_c679_0000)
        );
    }
}
