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

/// The dependencies an ELF object declares (empty if it is not a 64-bit ELF object). Reads
/// only the headers, the dynamic section and its strings from `bytes`.
pub fn dependencies<'data, R: ReadRef<'data>>(bytes: R) -> Dependencies {
    let mut found = Dependencies::default();
    let Ok(elf) = ElfFile64::<Endianness, R>::parse(bytes) else {
        return found;
    };
    let endian = elf.endian();
    let header = elf.elf_header();
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
    let sections = elf.elf_section_table();
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
        let value = String::from_utf8_lossy(value).into_owned();
        if tag == Some(object::elf::DT_NEEDED) {
            found.needed.push(value);
        } else {
            found
                .search_paths
                .extend(value.split(':').map(str::to_owned));
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
        let Some(file) = open(&path).filter(|file| {
            file.metadata().is_ok_and(|metadata| {
                metadata.is_file() && metadata.len() <= super::procfs::MAX_OBJECT_BYTES
            })
        }) else {
            continue;
        };
        let found = dependencies(&ReadCache::new(file));
        let origin = path.parent().unwrap_or(Path::new("/"));
        let mut directories: Vec<PathBuf> = library_path
            .into_iter()
            .flat_map(|paths| paths.split(':'))
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

/// Opens a file for reading without blocking on a FIFO a user left in a search path.
pub fn open(path: &Path) -> Option<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .ok()
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
