//! Executable mappings of the profiled processes, kept from the moment they are seen so that
//! addresses can be symbolized after the process (or its binary) is gone.

use std::{
    collections::HashMap,
    fs::File,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::OnceLock,
};

use crate::{
    stacks::{debug_links, jit_names::JitNames, python_names::PythonNames},
    target::{
        procfs::{self, MapEntry},
        python::Interpreter,
    },
};

/// Index into [`AddressSpaces::objects`].
pub type ObjectId = usize;

/// An executable or library mapped by some target process.
#[derive(Debug)]
pub struct Object {
    /// Path as the process named it (for display).
    pub path: String,
    /// The file mapped, opened when the mapping was seen: read through `/proc/self/fd`
    /// whatever its path names by now, deleted, or the process gone. `None` if it could not
    /// be opened: nothing to symbolize with.
    file: Option<File>,
    /// Whether symbolization may read its DWARF ([`debug_links`]), found when first asked.
    dwarf: OnceLock<bool>,
}

impl Object {
    fn new(path: String, file: Option<File>) -> Self {
        Object {
            path,
            file,
            dwarf: OnceLock::new(),
        }
    }

    /// A path to the very file mapped (`/proc/self/fd/N` of the descriptor held), for reading
    /// it whatever its own path names by now.
    pub fn held_path(&self) -> Option<PathBuf> {
        let file = self.file.as_ref()?;
        Some(PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd())))
    }

    /// Whether symbolization may read the object's DWARF, and so follow its links to separate
    /// debug files ([`debug_links`]).
    pub fn dwarf_is_safe(&self) -> bool {
        *self
            .dwarf
            .get_or_init(|| self.file.as_ref().is_some_and(debug_links::dwarf_is_safe))
    }

    /// The file name, used as the module name of frames.
    pub fn name(&self) -> &str {
        Path::new(&self.path)
            .file_name()
            .and_then(|name| name.to_str())
            .unwrap_or(&self.path)
    }
}

/// One executable mapping of one process.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Mapping {
    start: u64,
    end: u64,
    file_offset: u64,
    /// `None` for mappings without a file (`[vdso]`, JIT code).
    object: Option<ObjectId>,
    name: String,
}

/// Where an address of a process lands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location<'a> {
    /// Inside a mapped file, at this file offset.
    File {
        /// The file.
        object: ObjectId,
        /// Offset in the file.
        file_offset: u64,
    },
    /// Inside an executable mapping without a file (`[vdso]`, anonymous JIT code).
    Anonymous(&'a str),
    /// In no known executable mapping.
    Unmapped,
}

/// Executable mappings of every profiled process.
#[derive(Debug, Default)]
pub struct AddressSpaces {
    objects: Vec<Object>,
    /// Objects by (device, inode), so a library mapped by many processes is opened once.
    by_file: HashMap<(String, u64), ObjectId>,
    /// Per process, every mapping ever seen, newest last: a process that exec'd or
    /// unmapped a library still resolves addresses sampled before that.
    processes: HashMap<u32, Vec<Mapping>>,
    /// Last maps text read per process, to skip re-parsing when nothing changed.
    last_maps: HashMap<u32, String>,
    /// The vDSO object, once looked for (`None` inside if it could not be copied).
    vdso: Option<Option<ObjectId>>,
    /// Temporary files backing objects, deleted when this is dropped.
    kept_files: Vec<tempfile::NamedTempFile>,
    /// The names runtimes gave the code they compiled, per process.
    jit: JitNames,
    /// The Python processes and the functions their stacks name.
    python: PythonNames,
}

/// Name of the vDSO mapping in `/proc/PID/maps`.
const VDSO: &str = "[vdso]";

impl AddressSpaces {
    /// The known objects.
    pub fn objects(&self) -> &[Object] {
        &self.objects
    }

    /// Whether mappings of `pid` were ever read.
    pub fn knows(&self, pid: u32) -> bool {
        self.processes.contains_key(&pid)
    }

    /// Reads the current maps of `pid` and records mappings not seen before.
    pub fn refresh(&mut self, pid: u32) -> std::io::Result<()> {
        self.update(pid, procfs::read_maps(pid)?);
        Ok(())
    }

    /// The same with the text of `/proc/PID/maps` already read. Returns the CPython
    /// interpreter found in it when it is new for the process (see [`PythonNames::update`]).
    pub fn update(&mut self, pid: u32, text: String) -> Option<Interpreter> {
        if self.last_maps.get(&pid) == Some(&text) {
            return None;
        }
        let entries = procfs::parse_maps(&text);
        self.last_maps.insert(pid, text);
        // Through `map_files` (the mapped inode even when deleted or in another mount
        // namespace), never by the path in the maps, which names a file of the target's mount
        // namespace, or whatever its folder's owner has put there since.
        self.add(pid, &entries, |entry| {
            procfs::open_mapped_file(pid, entry).ok()
        });
        self.jit.update(pid, &entries);
        self.python.update(pid, &entries).cloned()
    }

    /// Forgets `pid`'s interpreter (it executed another program): its next memory map is
    /// looked at again, even if it reads the same.
    pub fn forget_python(&mut self, pid: u32) {
        self.python.forget(pid);
        self.last_maps.remove(&pid);
    }

    /// Forgets an exited process whose addresses will not be symbolized again (a continuous
    /// run, after its last window); the objects it mapped stay for the others.
    pub fn forget(&mut self, pid: u32) {
        self.processes.remove(&pid);
        self.last_maps.remove(&pid);
        self.jit.forget(pid);
        self.python.forget(pid);
    }

    /// The names runtimes gave the code they compiled.
    pub fn jit(&self) -> &JitNames {
        &self.jit
    }

    /// The same, to read more of them.
    pub fn jit_mut(&mut self) -> &mut JitNames {
        &mut self.jit
    }

    /// The Python processes and their functions.
    pub fn python(&self) -> &PythonNames {
        &self.python
    }

    /// The same, to find interpreters and name functions.
    pub fn python_mut(&mut self) -> &mut PythonNames {
        &mut self.python
    }

    /// Records mappings described without `/proc/PID/maps` (the process is gone), each with
    /// its file open. Symbolized through that descriptor, never the path: whoever owns the
    /// path's folder could have put anything there by the end of the run.
    pub fn add_open_files(&mut self, pid: u32, mappings: &[(MapEntry, &File)]) {
        let entries: Vec<MapEntry> = mappings.iter().map(|(entry, _)| entry.clone()).collect();
        self.add(pid, &entries, |entry| {
            mappings
                .iter()
                .find(|(known, _)| known == entry)
                .and_then(|(_, file)| file.try_clone().ok())
        });
    }

    /// Records the executable mappings among `entries`, opening new files with `open`.
    fn add(
        &mut self,
        pid: u32,
        entries: &[MapEntry],
        mut open: impl FnMut(&MapEntry) -> Option<File>,
    ) {
        for entry in entries.iter().filter(|entry| entry.executable) {
            let object = if entry.inode == 0 {
                (entry.path == VDSO).then(|| self.vdso_object()).flatten()
            } else {
                let key = (entry.device.clone(), entry.inode);
                Some(*self.by_file.entry(key).or_insert_with(|| {
                    let file = open(entry);
                    self.objects.push(Object::new(entry.path.clone(), file));
                    self.objects.len() - 1
                }))
            };
            let mapping = Mapping {
                start: entry.start,
                end: entry.end,
                file_offset: entry.file_offset,
                object,
                name: entry.path.clone(),
            };
            let mappings = self.processes.entry(pid).or_default();
            if !mappings.contains(&mapping) {
                mappings.push(mapping);
            }
        }
        self.processes.entry(pid).or_default();
    }

    /// The vDSO as an object file: every process on this kernel maps the same image, so the
    /// profiler's own copy, saved to a temporary file, symbolizes the targets' vDSO frames
    /// (`clock_gettime` and friends).
    fn vdso_object(&mut self) -> Option<ObjectId> {
        *self.vdso.get_or_insert_with(|| {
            let file = copy_own_vdso()?;
            self.objects
                .push(Object::new(VDSO.to_owned(), Some(file.reopen().ok()?)));
            self.kept_files.push(file);
            Some(self.objects.len() - 1)
        })
    }

    /// Where `address` of `pid` lands, preferring the most recently seen mapping.
    pub fn locate(&self, pid: u32, address: u64) -> Location<'_> {
        let Some(mappings) = self.processes.get(&pid) else {
            return Location::Unmapped;
        };
        match mappings
            .iter()
            .rev()
            .find(|mapping| (mapping.start..mapping.end).contains(&address))
        {
            Some(Mapping {
                object: Some(object),
                start,
                file_offset,
                ..
            }) => Location::File {
                object: *object,
                file_offset: address - start + file_offset,
            },
            Some(mapping) => Location::Anonymous(&mapping.name),
            None => Location::Unmapped,
        }
    }
}

/// Copies this process's vDSO image into a temporary file.
fn copy_own_vdso() -> Option<tempfile::NamedTempFile> {
    let maps = procfs::read_maps(std::process::id()).ok()?;
    let vdso = procfs::parse_maps(&maps)
        .into_iter()
        .find(|entry| entry.path == VDSO)?;
    let len = usize::try_from(vdso.end - vdso.start).ok()?;
    // SAFETY: the kernel maps the vDSO readable for the life of the process, at exactly this
    // range.
    let image = unsafe { std::slice::from_raw_parts(vdso.start as *const u8, len) };
    let mut file = tempfile::NamedTempFile::new().ok()?;
    std::io::Write::write_all(&mut file, image).ok()?;
    Some(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(start: u64, end: u64, offset: u64, inode: u64, path: &str) -> MapEntry {
        MapEntry {
            start,
            end,
            executable: true,
            file_offset: offset,
            device: "fe:01".into(),
            inode,
            path: path.into(),
            deleted: false,
        }
    }

    fn fake_open(_: &MapEntry) -> Option<File> {
        None
    }

    #[test]
    fn locates_file_offsets_and_shares_objects() {
        let mut spaces = AddressSpaces::default();
        let libc = entry(0x7000, 0x9000, 0x2000, 7, "/lib/libc.so.6");
        spaces.add(
            1,
            &[entry(0x1000, 0x2000, 0x1000, 5, "/bin/demo"), libc.clone()],
            fake_open,
        );
        spaces.add(
            2,
            &[entry(0x5000, 0x7000, 0x2000, 7, "/lib/libc.so.6")],
            fake_open,
        );
        assert_eq!(spaces.objects().len(), 2);
        assert_eq!(spaces.objects()[1].name(), "libc.so.6");
        assert_eq!(
            spaces.locate(1, 0x1234),
            Location::File {
                object: 0,
                file_offset: 0x1234
            }
        );
        assert_eq!(
            spaces.locate(1, 0x7010),
            Location::File {
                object: 1,
                file_offset: 0x2010
            }
        );
        assert_eq!(
            spaces.locate(2, 0x5010),
            Location::File {
                object: 1,
                file_offset: 0x2010
            }
        );
        assert_eq!(spaces.locate(1, 0x3000), Location::Unmapped);
        assert_eq!(spaces.locate(3, 0x1234), Location::Unmapped);
    }

    #[test]
    fn newest_mapping_wins_and_old_ones_stay() {
        let mut spaces = AddressSpaces::default();
        spaces.add(1, &[entry(0x1000, 0x2000, 0, 5, "/bin/shell")], fake_open);
        // After exec the same range holds another program; a library elsewhere stays known.
        spaces.add(1, &[entry(0x1000, 0x3000, 0, 6, "/bin/test")], fake_open);
        assert_eq!(
            spaces.locate(1, 0x1800),
            Location::File {
                object: 1,
                file_offset: 0x800
            }
        );
        spaces.add(1, &[entry(0x8000, 0x9000, 0, 0, "[anon:jit]")], fake_open);
        assert_eq!(spaces.locate(1, 0x8008), Location::Anonymous("[anon:jit]"));
    }

    #[test]
    fn reads_own_maps_and_opens_files() {
        let mut spaces = AddressSpaces::default();
        let pid = std::process::id();
        spaces.refresh(pid).unwrap();
        let here = reads_own_maps_and_opens_files as *const () as u64;
        let Location::File { object, .. } = spaces.locate(pid, here) else {
            panic!("own code not in an executable file mapping");
        };
        let object = &spaces.objects()[object];
        assert!(object.held_path().unwrap().exists(), "{object:?}");
        // The test binary names no separate debug file.
        assert!(object.dwarf_is_safe(), "{object:?}");
    }
}
