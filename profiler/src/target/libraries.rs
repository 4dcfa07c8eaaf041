//! The objects a launched program will map as it starts: its interpreter and its `DT_NEEDED`
//! libraries (and theirs), searched the way the dynamic loader searches (`LD_LIBRARY_PATH`,
//! `DT_RPATH`/`DT_RUNPATH` with `$ORIGIN`, the system directories), so that their unwind tables
//! are ready before its first instruction. A library not found here gets its table when it is
//! mapped, as before.

use std::{
    collections::{HashSet, VecDeque},
    fs::File,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use object::{
    Endianness, ReadCache, ReadRef,
    elf::FileHeader64,
    read::elf::{Dyn as _, ElfFile64, FileHeader as _, ProgramHeader as _},
};

/// Where Debian's dynamic loader looks after the paths the program names.
const SYSTEM_DIRECTORIES: [&str; 6] = [
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
];
/// At most this many objects: a start-up aid, not a closure of every dependency.
const MAX_OBJECTS: usize = 64;
/// Distinct `DT_NEEDED` names, and search directories, taken from one object: a hostile object
/// could list millions, each a string looked up in every directory.
const MAX_NEEDED: usize = 128;
const MAX_SEARCH_PATHS: usize = 32;

/// What an object asks the loader for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Dependencies {
    /// `PT_INTERP`.
    pub interpreter: Option<String>,
    /// `DT_NEEDED` names.
    pub needed: Vec<String>,
    /// `DT_RPATH` and `DT_RUNPATH` directories, `:`-separated lists split.
    pub search_paths: Vec<String>,
}

/// The dependencies an ELF object declares (empty if it is not a 64-bit ELF object), distinct,
/// at most [`MAX_NEEDED`] names and [`MAX_SEARCH_PATHS`] directories. Reads only the headers,
/// the dynamic section and its strings from `bytes` (no symbol table).
pub fn dependencies<'data, R: ReadRef<'data>>(bytes: R) -> Dependencies {
    let mut found = Dependencies::default();
    let Ok(header) = FileHeader64::<Endianness>::parse(bytes) else {
        return found;
    };
    let Ok(endian) = header.endian() else {
        return found;
    };
    if let Ok(segments) = header.program_headers(endian, bytes) {
        found.interpreter = segments
            .iter()
            .find_map(|segment| segment.interpreter(endian, bytes).ok().flatten())
            .map(|path| {
                String::from_utf8_lossy(path)
                    .trim_end_matches('\0')
                    .to_owned()
            });
    }
    let Ok(sections) = header.sections(endian, bytes) else {
        return found;
    };
    let Ok(Some((entries, link))) = sections.dynamic(endian, bytes) else {
        return found;
    };
    let Ok(strings) = sections.strings(endian, bytes, link) else {
        return found;
    };
    for entry in entries {
        let tag = entry.tag32(endian);
        if !matches!(
            tag,
            Some(object::elf::DT_NEEDED | object::elf::DT_RPATH | object::elf::DT_RUNPATH)
        ) {
            continue;
        }
        let Some(value) = entry
            .val32(endian)
            .and_then(|offset| strings.get(offset).ok())
        else {
            continue;
        };
        let value = String::from_utf8_lossy(value);
        if tag == Some(object::elf::DT_NEEDED) {
            if found.needed.len() < MAX_NEEDED && !found.needed.iter().any(|name| *name == value) {
                found.needed.push(value.into_owned());
            }
        } else {
            for directory in value.split(':') {
                if found.search_paths.len() < MAX_SEARCH_PATHS
                    && !found.search_paths.iter().any(|known| known == directory)
                {
                    found.search_paths.push(directory.to_owned());
                }
            }
        }
    }
    found
}

/// The interpreter and libraries `program` will map, found on disk, `program` excluded;
/// `library_path` is the command's `LD_LIBRARY_PATH`.
pub fn startup_objects(program: &Path, library_path: Option<&str>) -> Vec<PathBuf> {
    let mut objects = Vec::new();
    let mut seen = HashSet::new();
    let mut queue = VecDeque::from([program.to_path_buf()]);
    while let Some(path) = queue.pop_front() {
        if objects.len() >= MAX_OBJECTS {
            break;
        }
        // Read in pieces, as parsing asks: the object may be large, and its table is compiled
        // from a full read later only if it is new.
        let Some(file) = open(&path) else {
            continue;
        };
        let found = dependencies(&ReadCache::new(file));
        let origin = path.parent().unwrap_or(Path::new("/"));
        let mut directories: Vec<PathBuf> = library_path
            .into_iter()
            .flat_map(|paths| paths.split(':'))
            .take(MAX_SEARCH_PATHS)
            .chain(found.search_paths.iter().map(String::as_str))
            .filter(|directory| !directory.is_empty())
            .map(|directory| {
                PathBuf::from(
                    directory
                        .replace("${ORIGIN}", &origin.to_string_lossy())
                        .replace("$ORIGIN", &origin.to_string_lossy()),
                )
            })
            .collect();
        directories.extend(SYSTEM_DIRECTORIES.iter().map(PathBuf::from));
        let interpreter = found.interpreter.map(PathBuf::from);
        let libraries = found.needed.iter().filter_map(|name| {
            if name.contains('/') {
                return Some(PathBuf::from(name));
            }
            directories
                .iter()
                .map(|directory| directory.join(name))
                .find(|candidate| candidate.is_file())
        });
        for dependency in interpreter.into_iter().chain(libraries) {
            if seen.insert(dependency.clone()) {
                objects.push(dependency.clone());
                queue.push_back(dependency);
            }
        }
    }
    objects.truncate(MAX_OBJECTS);
    objects
}

/// The dynamic loader this process was started by (`PT_INTERP` of its own executable): the
/// system's, which nearly every program on the machine uses too.
pub fn own_loader() -> Option<PathBuf> {
    let file = File::open("/proc/self/exe").ok()?;
    dependencies(&ReadCache::new(file))
        .interpreter
        .map(PathBuf::from)
}

/// Where, in the dynamic loader `loader`'s own addresses, its debugger interface is: the
/// function it calls whenever its list of objects changed (`_dl_debug_state`) and that list's
/// head (`_r_debug`), packed as the eBPF hook's cookie (function high, list low).
pub fn loader_debug_cookie(loader: &Path) -> Option<u64> {
    use object::{Object as _, ObjectSymbol as _};

    let file = open(loader)?;
    let cache = ReadCache::new(file);
    let elf = ElfFile64::<Endianness, _>::parse(&cache).ok()?;
    let address = |name: &str| {
        elf.dynamic_symbols()
            .find(|symbol| symbol.name() == Ok(name))
            .and_then(|symbol| u32::try_from(symbol.address()).ok())
    };
    let function = address("_dl_debug_state")?;
    let list = address("_r_debug")?;
    Some((u64::from(function) << 32) | u64::from(list))
}

/// Opens an object file for reading: a regular, non-empty file of at most
/// [`super::procfs::MAX_OBJECT_BYTES`]. Whatever a user put at `path` is looked at first
/// without opening it for reading (`O_PATH`: a device's open has effects, a FIFO's blocks), and
/// the same file is then reopened through its descriptor.
pub fn open(path: &Path) -> Option<File> {
    let located = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
        .open(path)
        .ok()?;
    let metadata = located.metadata().ok()?;
    if !metadata.is_file()
        || metadata.len() == 0
        || metadata.len() > super::procfs::MAX_OBJECT_BYTES
    {
        return None;
    }
    super::open::reopen_for_reading(&located.into()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_program_needs_libc_and_the_loader() {
        // The test runner itself: a dynamically linked Rust program.
        let program = std::env::current_exe().unwrap();
        let bytes = std::fs::read(&program).unwrap();
        let found = dependencies(bytes.as_slice());
        assert_eq!(
            dependencies(&ReadCache::new(File::open(&program).unwrap())),
            found
        );
        assert!(
            found.needed.iter().any(|name| name == "libc.so.6"),
            "{found:?}"
        );
        assert_eq!(
            found.interpreter.as_deref(),
            Some("/lib64/ld-linux-x86-64.so.2")
        );
        let objects = startup_objects(&program, None);
        assert!(
            objects
                .iter()
                .any(|path| path.file_name().is_some_and(|name| name == "libc.so.6")),
            "{objects:?}"
        );
    }

    #[test]
    fn the_system_loader_has_a_debugger_interface() {
        let loader = own_loader().expect("this test runner has an interpreter");
        let cookie = loader_debug_cookie(&loader).expect("_dl_debug_state and _r_debug");
        assert_ne!(cookie >> 32, 0);
        assert_ne!(cookie & 0xffff_ffff, 0);
    }

    #[test]
    fn only_regular_files_are_opened() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let fifo_name = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid C string; creates a FIFO in a fresh folder.
        assert_eq!(unsafe { libc::mkfifo(fifo_name.as_ptr(), 0o600) }, 0);
        let empty = dir.path().join("empty");
        std::fs::write(&empty, b"").unwrap();
        // Would block (FIFO) or have effects (devices) if opened for reading.
        for path in [fifo.as_path(), &empty, dir.path(), Path::new("/dev/null")] {
            assert!(open(path).is_none(), "{}", path.display());
        }
        let program = std::env::current_exe().unwrap();
        assert!(open(&program).is_some());
    }

    /// A minimal 64-bit ELF shared object whose dynamic section lists `needed` (each a
    /// `DT_NEEDED`) and `runpaths` (each a `DT_RUNPATH`), with their string table.
    fn shared_object(needed: &[String], runpaths: &[String]) -> Vec<u8> {
        let mut strings = vec![0u8];
        let mut entries: Vec<(i64, u64)> = Vec::new();
        for (tag, values) in [(1, needed), (29, runpaths)] {
            for value in values {
                entries.push((tag, strings.len() as u64));
                strings.extend(value.as_bytes());
                strings.push(0);
            }
        }
        entries.push((0, 0));
        let names = b"\0.dynstr\0.dynamic\0";
        let strings_at = 64;
        let dynamic_at = (strings_at + strings.len()).next_multiple_of(8);
        let names_at = dynamic_at + 16 * entries.len();
        let headers_at = (names_at + names.len()).next_multiple_of(8);
        let mut out = vec![0u8; headers_at + 4 * 64];
        out[..16].copy_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
        let mut put = |at: usize, bytes: &[u8]| out[at..at + bytes.len()].copy_from_slice(bytes);
        put(16, &3u16.to_le_bytes()); // ET_DYN
        put(18, &62u16.to_le_bytes()); // x86-64
        put(20, &1u32.to_le_bytes());
        put(40, &(headers_at as u64).to_le_bytes());
        put(52, &64u16.to_le_bytes());
        put(54, &56u16.to_le_bytes());
        put(58, &64u16.to_le_bytes());
        put(60, &4u16.to_le_bytes());
        put(62, &3u16.to_le_bytes());
        put(strings_at, &strings);
        for (index, (tag, value)) in entries.iter().enumerate() {
            put(dynamic_at + 16 * index, &tag.to_le_bytes());
            put(dynamic_at + 16 * index + 8, &value.to_le_bytes());
        }
        put(names_at, names);
        // Section headers: null, .dynstr, .dynamic (linked to .dynstr), the names.
        let sections: [(u32, u32, usize, usize, u32, u64); 3] = [
            (1, 3, strings_at, strings.len(), 0, 0),
            (9, 6, dynamic_at, 16 * entries.len(), 1, 16),
            (18, 3, names_at, names.len(), 0, 0),
        ];
        for (index, (name, kind, at, size, link, entry_size)) in sections.into_iter().enumerate() {
            let header = headers_at + 64 * (index + 1);
            put(header, &name.to_le_bytes());
            put(header + 4, &kind.to_le_bytes());
            put(header + 24, &(at as u64).to_le_bytes());
            put(header + 32, &(size as u64).to_le_bytes());
            put(header + 40, &link.to_le_bytes());
            put(header + 56, &entry_size.to_le_bytes());
        }
        out
    }

    #[test]
    fn hostile_dependency_lists_are_bounded() {
        let repeated = vec!["libsame.so".to_owned(); 5000];
        let many: Vec<String> = (0..5000).map(|i| format!("lib{i}.so")).collect();
        let long_path = vec![vec!["/a"; 2000].join(":"); 100];
        let found = dependencies(shared_object(&repeated, &long_path).as_slice());
        assert_eq!(found.needed, ["libsame.so"]);
        assert_eq!(found.search_paths, ["/a"]);
        let found = dependencies(shared_object(&many, &[]).as_slice());
        assert_eq!(found.needed.len(), MAX_NEEDED);
        let distinct: Vec<String> = (0..500).map(|i| format!("/d{i}")).collect();
        let found = dependencies(shared_object(&[], &[distinct.join(":")]).as_slice());
        assert_eq!(found.search_paths.len(), MAX_SEARCH_PATHS);
    }

    #[test]
    fn garbage_has_no_dependencies() {
        assert_eq!(
            dependencies(b"not an ELF file".as_slice()),
            Dependencies::default()
        );
        assert_eq!(
            dependencies([0x7f, b'E', b'L', b'F', 2, 1, 1].as_slice()),
            Dependencies::default()
        );
    }
}
