//! Which allocator functions a target's objects define, and where to probe them: ELF symbols
//! and imports, and the first instructions of `free` (probed past its NULL check).

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
};

use object::{Object as _, ObjectSymbol as _};
use profiler_common::alloc_layout;

use super::{libraries, procfs};

/// An allocator function and how it takes its arguments (`alloc_layout`).
#[derive(Clone, Copy, Debug)]
pub struct AllocatorFunction {
    /// Symbol name, also the leaf frame of its allocations.
    pub name: &'static str,
    /// Argument layout.
    pub layout: u64,
}

const fn function(name: &'static str, layout: u64) -> AllocatorFunction {
    AllocatorFunction { name, layout }
}

/// The functions probed, in every object that defines them: the C allocator API as libc,
/// jemalloc, mimalloc and tcmalloc export it, and jemalloc's and mimalloc's prefixed names.
/// A function's position + 1 is its index in the probe cookie.
pub const FUNCTIONS: &[AllocatorFunction] = &[
    function("malloc", SIZE0),
    function("calloc", CALLOC),
    function("realloc", REALLOC),
    function("reallocarray", REALLOCARRAY),
    function("posix_memalign", POSIX_MEMALIGN),
    function("aligned_alloc", SIZE1),
    function("memalign", SIZE1),
    function("valloc", SIZE0),
    function("pvalloc", SIZE0),
    function("free", FREE),
    function("je_malloc", SIZE0),
    function("je_calloc", CALLOC),
    function("je_realloc", REALLOC),
    function("je_free", FREE),
    function("mi_malloc", SIZE0),
    function("mi_zalloc", SIZE0),
    function("mi_calloc", CALLOC),
    function("mi_realloc", REALLOC),
    function("mi_malloc_aligned", SIZE0),
    function("mi_free", FREE),
    function("tc_malloc", SIZE0),
    function("tc_calloc", CALLOC),
    function("tc_realloc", REALLOC),
    function("tc_free", FREE),
];

use alloc_layout::{CALLOC, FREE, POSIX_MEMALIGN, REALLOC, REALLOCARRAY, SIZE0, SIZE1};

/// The probe cookie of function `index` (position in [`FUNCTIONS`]).
pub fn cookie(index: usize) -> u64 {
    ((index as u64 + 1) << 8) | FUNCTIONS[index].layout
}

/// The function a cookie names.
pub fn function_of(cookie: u32) -> Option<&'static AllocatorFunction> {
    FUNCTIONS.get(((cookie >> 8) as usize).checked_sub(1)?)
}

/// Functions probed in every allocator: the C library calls them itself (`strdup`, `fopen`,
/// `getline` ... allocate through them), whether the program imports them or not.
const ALWAYS_PROBED: [&str; 4] = ["malloc", "calloc", "realloc", "free"];

/// Prefixes under which jemalloc, mimalloc and tcmalloc export the C allocator API.
const PREFIXES: [&str; 3] = ["je_", "mi_", "tc_"];

/// A function name's allocator prefix (`""` for the plain C API) and the rest.
fn split_prefix(name: &str) -> (&str, &str) {
    PREFIXES
        .iter()
        .find_map(|prefix| Some((*prefix, name.strip_prefix(prefix)?)))
        .unwrap_or(("", name))
}

/// Allocator functions an ELF object defines (its own code, not imports), as indices into
/// [`FUNCTIONS`]. An object is an allocator when it defines `malloc` and `free` under one of
/// the prefixes.
pub fn defined_functions(elf: &[u8]) -> Vec<usize> {
    let Ok(file) = object::File::parse(elf) else {
        return Vec::new();
    };
    let defined: HashSet<&str> = file
        .dynamic_symbols()
        .chain(file.symbols())
        .filter(|symbol| symbol.is_definition() && symbol.address() != 0)
        .filter_map(|symbol| symbol.name().ok())
        .collect();
    let allocator_families: Vec<&str> = std::iter::once("")
        .chain(PREFIXES)
        .filter(|prefix| {
            defined.contains(format!("{prefix}malloc").as_str())
                && defined.contains(format!("{prefix}free").as_str())
        })
        .collect();
    FUNCTIONS
        .iter()
        .enumerate()
        .filter(|(_, f)| {
            defined.contains(f.name) && allocator_families.contains(&split_prefix(f.name).0)
        })
        .map(|(index, _)| index)
        .collect()
}

/// Names an ELF object imports (undefined dynamic symbols).
pub fn imported_names(elf: &[u8]) -> HashSet<String> {
    let Ok(file) = object::File::parse(elf) else {
        return HashSet::new();
    };
    file.dynamic_symbols()
        .filter(|symbol| symbol.is_undefined())
        .filter_map(|symbol| symbol.name().ok())
        .map(|name| name.split('@').next().unwrap_or(name).to_owned())
        .collect()
}

/// Whether function `index` needs a probe, given the names the process's objects import:
/// each probe costs a tenth of a second to detach (an RCU grace period, one after another),
/// so the rarely used functions are probed only when something imports them.
pub fn worth_probing(index: usize, imported: &HashSet<String>) -> bool {
    let name = FUNCTIONS[index].name;
    ALWAYS_PROBED.contains(&split_prefix(name).1) || imported.contains(name)
}

/// Where in a `free`-like function to put its probe, bytes from its start.
///
/// A uprobe on an instruction the kernel cannot emulate is single-stepped out of line: an
/// extra trap per call, 9 µs of the 10 µs a probe on glibc's `free` costs on a VM. glibc's
/// `free` opens with `test %rdi,%rdi; je <return>` (the `free(NULL)` no-op) and then a
/// `push`, which the kernel emulates. Probing that `push` skips only `free(NULL)`, and the
/// pointer is still in `%rdi` there. Any other opening keeps the probe at the entry.
pub fn free_probe_offset(code: &[u8]) -> u64 {
    if !cfg!(target_arch = "x86_64") {
        return 0;
    }
    let is_push = |code: &[u8]| matches!(code, [0x50..=0x57, ..] | [0x41, 0x50..=0x57, ..]);
    let mut at = 0;
    if code.starts_with(&[0xf3, 0x0f, 0x1e, 0xfa]) {
        at += 4; // endbr64
    }
    if !code[at..].starts_with(&[0x48, 0x85, 0xff]) {
        return 0; // not `test %rdi,%rdi`
    }
    at += 3;
    match code.get(at..) {
        Some([0x74, _, ..]) => at += 2,                // je rel8
        Some([0x0f, 0x84, _, _, _, _, ..]) => at += 6, // je rel32
        _ => return 0,
    }
    if is_push(&code[at..]) { at as u64 } else { 0 }
}

/// Where function `name` starts in an ELF object's file, and its first bytes.
pub fn function_location<'a>(elf: &'a [u8], name: &str) -> Option<(u64, &'a [u8])> {
    use object::ObjectSection as _;

    let file = object::File::parse(elf).ok()?;
    let symbol = file
        .dynamic_symbols()
        .chain(file.symbols())
        .find(|symbol| symbol.is_definition() && symbol.name() == Ok(name))?;
    let section = file.section_by_index(symbol.section_index()?).ok()?;
    let (section_offset, _) = section.file_range()?;
    let data = section.data().ok()?;
    let start = symbol.address().checked_sub(section.address())?;
    let end = data.len().min(usize::try_from(start).ok()? + 32);
    Some((
        section_offset.checked_add(start)?,
        data.get(usize::try_from(start).ok()?..end)?,
    ))
}

/// A function probed in an allocator object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbedFunction {
    /// Index into [`FUNCTIONS`].
    pub index: usize,
    /// Where it starts in the file: probes attach by file offset, so the object is parsed
    /// here once, not once per probe (each attach by name read and parsed all of libc).
    pub file_offset: u64,
    /// The probe's distance from the start, bytes (see [`free_probe_offset`]).
    pub offset: u64,
}

/// An object mapped into a process that defines allocator functions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllocatorObject {
    /// Path through which to attach: `/proc/PID/root/PATH` (the file as the process sees it,
    /// in its own mount namespace), or `/proc/PID/map_files/...` for a file deleted since.
    pub attach_path: PathBuf,
    /// Its path as the process sees it, for messages.
    pub path: String,
    /// Device and inode, so each object is probed once per process.
    pub identity: (u64, u64),
    /// The functions probed.
    pub functions: Vec<ProbedFunction>,
}

impl AllocatorObject {
    /// What to attach in this object, one entry per function: `(name, the probe's offset
    /// in the file, cookie, whether it is a free function)`.
    pub fn probe_list(&self) -> Vec<(&'static str, u64, u64, bool)> {
        self.functions
            .iter()
            .map(|probed| {
                let function = &FUNCTIONS[probed.index];
                (
                    function.name,
                    probed.file_offset + probed.offset,
                    cookie(probed.index),
                    function.layout == alloc_layout::FREE,
                )
            })
            .collect()
    }
}

/// The allocator objects mapped into process `pid`, from its memory map (`proc_root` is
/// `/proc` outside tests).
/// Rarely used functions are probed when a mapped object imports them, or `program` (the
/// command a held child will exec) does.
pub fn allocator_objects(
    proc_root: &Path,
    pid: u32,
    program: Option<&Path>,
) -> Vec<AllocatorObject> {
    use std::os::unix::fs::MetadataExt as _;

    let Ok(maps) = procfs::read_maps_under(proc_root, pid) else {
        return Vec::new();
    };
    let mut seen = HashSet::new();
    // A command held before its exec maps the profiler's own program, which the exec
    // replaces: not read (15 MB, the most of this function's time).
    if program.is_some()
        && let Ok(own) = std::fs::metadata("/proc/self/exe")
    {
        seen.insert((own.dev(), own.ino()));
    }
    // A command held before its exec still maps the profiler: the rare functions worth a
    // probe are those the program it will run imports too.
    let mut imported: HashSet<String> = program
        .and_then(libraries::open)
        .and_then(|mut file| procfs::read_object(&mut file))
        .map(|elf| imported_names(&elf))
        .unwrap_or_default();
    let mut candidates = Vec::new();
    for line in maps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [range, perms, _, _, _, path, ..] = fields.as_slice() else {
            continue;
        };
        if !perms.contains('x') || !path.starts_with('/') {
            continue;
        }
        // The mapped file itself, even deleted or in another mount namespace: read through
        // this descriptor, never a path whose folders the process's user could swap (to a
        // FIFO that would hold the profiler, a device, or a link out of a container).
        let mapped = proc_root.join(format!("{pid}/map_files/{range}"));
        let Some(mut file) = libraries::open(&mapped) else {
            continue;
        };
        let Ok(metadata) = file.metadata() else {
            continue;
        };
        let identity = (metadata.dev(), metadata.ino());
        if !seen.insert(identity) {
            continue;
        }
        // Probes attached through a `map_files` link reach mappings made later but not the
        // ones already there (seen on 6.18): attach through the process's root when that
        // path still names the mapped file.
        let rooted = proc_root.join(format!("{pid}/root{path}"));
        let attach_path = match std::fs::metadata(&rooted) {
            Ok(m) if (m.dev(), m.ino()) == identity => rooted,
            _ => mapped,
        };
        let Some(elf) = procfs::read_object(&mut file) else {
            continue;
        };
        imported.extend(imported_names(&elf));
        let defined = defined_functions(&elf);
        if !defined.is_empty() {
            candidates.push((attach_path, (*path).to_owned(), identity, elf, defined));
        }
    }
    candidates
        .into_iter()
        .map(|(attach_path, path, identity, elf, defined)| {
            let functions = defined
                .into_iter()
                .filter(|&index| worth_probing(index, &imported))
                .filter_map(|index| {
                    let function = &FUNCTIONS[index];
                    let (file_offset, code) = function_location(&elf, function.name)?;
                    let offset = if function.layout == FREE {
                        free_probe_offset(code)
                    } else {
                        0
                    };
                    Some(ProbedFunction {
                        index,
                        file_offset,
                        offset,
                    })
                })
                .collect();
            AllocatorObject {
                attach_path,
                path,
                identity,
                functions,
            }
        })
        .collect()
}

/// The programs' allocator probes, described for the summary.
pub fn probed_names(objects: &[AllocatorObject]) -> Vec<String> {
    let mut names: Vec<String> = objects
        .iter()
        .flat_map(|object| {
            object.functions.iter().map(move |probed| {
                let name = FUNCTIONS[probed.index].name;
                match probed.offset {
                    0 => format!("{name}@{}", object.path),
                    offset => format!("{name}+{offset}@{}", object.path),
                }
            })
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_probes_skip_the_null_check_only_before_a_push() {
        // glibc 2.36: test %rdi,%rdi; je rel32; push %rbp
        let glibc = [0x48, 0x85, 0xff, 0x0f, 0x84, 0xbf, 0, 0, 0, 0x55, 0x48];
        assert_eq!(free_probe_offset(&glibc), 9);
        let short_je = [
            0xf3, 0x0f, 0x1e, 0xfa, 0x48, 0x85, 0xff, 0x74, 0x10, 0x41, 0x54,
        ];
        assert_eq!(free_probe_offset(&short_je), 9);
        // Already a push, or an opening not understood: the entry.
        assert_eq!(free_probe_offset(&[0x55, 0x48, 0x89, 0xe5]), 0);
        assert_eq!(
            free_probe_offset(&[0x48, 0x85, 0xff, 0x74, 0x10, 0x48, 0x8b]),
            0
        );
        assert_eq!(free_probe_offset(&[0x48, 0x85]), 0);
    }

    #[test]
    fn rare_functions_are_probed_only_when_imported() {
        let index = |name| FUNCTIONS.iter().position(|f| f.name == name).unwrap();
        let imported: HashSet<String> = ["posix_memalign".to_owned()].into();
        assert!(worth_probing(index("malloc"), &HashSet::new()));
        assert!(worth_probing(index("mi_free"), &HashSet::new()));
        assert!(worth_probing(index("posix_memalign"), &imported));
        assert!(!worth_probing(index("valloc"), &imported));
    }

    #[test]
    fn cookies_round_trip() {
        for (index, function) in FUNCTIONS.iter().enumerate() {
            let cookie = cookie(index);
            assert_eq!(cookie & 0xff, function.layout);
            assert_eq!(function_of(cookie as u32).unwrap().name, function.name);
        }
        assert!(function_of(0).is_none());
    }

    #[test]
    fn libc_defines_the_allocator_and_the_profiler_does_not() {
        let objects = allocator_objects(Path::new("/proc"), std::process::id(), None);
        let libc = objects
            .iter()
            .find(|object| object.path.contains("libc.so"))
            .unwrap_or_else(|| panic!("libc among {objects:?}"));
        let names: Vec<&str> = libc
            .functions
            .iter()
            .map(|probed| FUNCTIONS[probed.index].name)
            .collect();
        for name in ["malloc", "calloc", "realloc", "free"] {
            assert!(names.contains(&name), "{name} in {names:?}");
        }
        assert!(
            !names.contains(&"pvalloc"),
            "nothing imports pvalloc: {names:?}"
        );
        assert!(
            !objects
                .iter()
                .any(|o| o.path.ends_with("/profiler") || o.path.contains("/deps/")),
            "this test binary imports malloc, it does not define it: {objects:?}"
        );
    }
}
