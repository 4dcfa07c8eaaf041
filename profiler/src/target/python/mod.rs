//! CPython in a target: which interpreter a process runs (the executable or a
//! `libpython3.N.so` it maps), where its runtime state is, and the layout of its version
//! ([`layout`]); the names of its functions are read from its code objects ([`code`]).

pub mod code;
pub mod layout;

use std::collections::HashMap;

use object::{Object as _, ObjectSection as _, ObjectSegment as _, ObjectSymbol as _};

use self::layout::Layout;
use super::procfs::{self, MapEntry};

/// A process's CPython interpreter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interpreter {
    /// (major, minor).
    pub version: (u8, u8),
    /// File name of the object the interpreter is in (`python3.11`,
    /// `libpython3.11.so.1.0`): its frames are the interpreter's own.
    pub object: String,
    /// Address of `_PyRuntime` in the process.
    pub runtime: u64,
    /// Address of `PyCode_Type` in the process: what a code object's type is.
    pub code_type: u64,
    /// The version's layout; `None` when the profiler does not know it.
    pub layout: Option<&'static Layout>,
}

/// What an interpreter's object file says, wherever it is mapped.
#[derive(Clone, Copy, Debug)]
struct InterpreterSymbols {
    version: (u8, u8),
    runtime: u64,
    code_type: u64,
    /// Address of the first loadable segment (what file offset 0 is mapped for).
    first_segment: u64,
}

/// Finds the interpreters of processes, reading each interpreter file once.
#[derive(Debug, Default)]
pub struct PythonDetector {
    files: HashMap<(String, u64), Option<InterpreterSymbols>>,
}

impl PythonDetector {
    /// The interpreter process `pid` runs, given its memory map, if it runs CPython.
    pub fn detect(&mut self, pid: u32, maps: &[MapEntry]) -> Option<Interpreter> {
        for entry in maps
            .iter()
            .filter(|entry| entry.executable && is_interpreter_file(&entry.path))
        {
            let key = (entry.device.clone(), entry.inode);
            let symbols = match self.files.get(&key) {
                Some(symbols) => *symbols,
                None => {
                    let symbols = procfs::open_mapped_file(pid, entry)
                        .ok()
                        .filter(|file| {
                            file.metadata()
                                .is_ok_and(|metadata| metadata.len() <= MAX_INTERPRETER_BYTES)
                        })
                        .and_then(|mut file| procfs::read_object(&mut file))
                        .and_then(|bytes| interpreter_symbols(&bytes, file_name(&entry.path)));
                    self.files.insert(key, symbols);
                    symbols
                }
            };
            let Some(symbols) = symbols else {
                continue;
            };
            // The mapping of the file's start gives the load bias.
            let Some(start) = maps
                .iter()
                .find(|other| {
                    other.inode == entry.inode
                        && other.device == entry.device
                        && other.file_offset == 0
                })
                .map(|first| first.start)
            else {
                continue;
            };
            let bias = start.wrapping_sub(symbols.first_segment & !0xfff);
            return Some(Interpreter {
                version: symbols.version,
                object: file_name(&entry.path).to_owned(),
                runtime: bias.wrapping_add(symbols.runtime),
                code_type: bias.wrapping_add(symbols.code_type),
                layout: layout::layout(symbols.version),
            });
        }
        None
    }
}

/// Largest interpreter file read (a debug build's `libpython` is tens of MiB).
const MAX_INTERPRETER_BYTES: u64 = 512 << 20;

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Whether a mapped file may hold a CPython interpreter: `python3.N` (a static build, as
/// Debian's) or `libpython3.N.so` (a shared one); not a free-threaded build (`python3.13t`),
/// whose structures differ.
fn is_interpreter_file(path: &str) -> bool {
    let name = file_name(path);
    let shape = (name.starts_with("python3") && !name.contains(".so"))
        || (name.starts_with("libpython3") && name.contains(".so"));
    shape && version_in_name(name).is_some()
}

/// The version a file name says: `python3.11`, `libpython3.11.so.1.0`, `python3.8d` (ABI
/// flags `d`, `m`); none for a free-threaded build's `t`.
fn version_in_name(name: &str) -> Option<(u8, u8)> {
    let rest = name
        .strip_prefix("lib")
        .unwrap_or(name)
        .strip_prefix("python")?;
    let (major, rest) = rest.split_once('.')?;
    let digits = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    let (minor, flags) = rest.split_at(digits);
    let flags = flags.split('.').next().unwrap_or("");
    if !flags.chars().all(|flag| flag == 'd' || flag == 'm') {
        return None;
    }
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// The interpreter's symbols in an object file, if it has them (`_PyRuntime` and
/// `PyCode_Type`); the version from `Py_Version` (3.11 and later), else from the file name.
fn interpreter_symbols(bytes: &[u8], name: &str) -> Option<InterpreterSymbols> {
    let file = object::File::parse(bytes).ok()?;
    let find = |wanted: &str| {
        file.dynamic_symbols()
            .chain(file.symbols())
            .find(|symbol| symbol.name() == Ok(wanted) && symbol.address() != 0)
    };
    let runtime = find("_PyRuntime")?.address();
    let code_type = find("PyCode_Type")?.address();
    let version = find("Py_Version")
        .and_then(|symbol| {
            let section = file.section_by_index(symbol.section_index()?).ok()?;
            let data = section.data().ok()?;
            let at = usize::try_from(symbol.address().checked_sub(section.address())?).ok()?;
            let value = crate::le::u32_at(data, at)?;
            Some(((value >> 24) as u8, (value >> 16) as u8))
        })
        .or_else(|| version_in_name(name))?;
    let first_segment = file
        .segments()
        .find(|segment| segment.file_range().0 == 0)?
        .address();
    Some(InterpreterSymbols {
        version,
        runtime,
        code_type,
        first_segment,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_from_file_names() {
        assert_eq!(version_in_name("python3.11"), Some((3, 11)));
        assert_eq!(version_in_name("libpython3.9.so.1.0"), Some((3, 9)));
        assert_eq!(version_in_name("libpython3.8d.so"), Some((3, 8)));
        assert_eq!(version_in_name("python3"), None);
        assert_eq!(version_in_name("python3.13t"), None);
        assert_eq!(version_in_name("libpython3.13t.so.1.0"), None);
        assert!(is_interpreter_file("/usr/bin/python3.11"));
        assert!(is_interpreter_file("/opt/lib/libpython3.12.so.1.0"));
        assert!(!is_interpreter_file("/usr/bin/python3.13t"));
        assert!(!is_interpreter_file("/usr/bin/python3-config"));
        assert!(!is_interpreter_file("/usr/lib/libpython3-stub.a"));
        assert!(!is_interpreter_file("/usr/bin/perl"));
    }

    #[test]
    fn debian_python_has_its_runtime_and_version() {
        let path = "/usr/bin/python3.11";
        let bytes = std::fs::read(path).expect("Debian's python3.11 (`cargo xtask setup`)");
        let symbols = interpreter_symbols(&bytes, "python3.11").expect("interpreter symbols");
        assert_eq!(symbols.version, (3, 11));
        assert_ne!(symbols.runtime, 0);
        assert_ne!(symbols.code_type, 0);
    }

    #[test]
    fn other_objects_are_no_interpreter() {
        let bytes = std::fs::read("/proc/self/exe").unwrap();
        assert!(interpreter_symbols(&bytes, "profiler").is_none());
        assert!(interpreter_symbols(b"not an object", "python3.11").is_none());
    }
}
