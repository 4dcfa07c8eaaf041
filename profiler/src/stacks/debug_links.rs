//! Whether symbolization may read an object's DWARF. With it, blazesym also follows the
//! object's `.gnu_debuglink`, `.gnu_debugaltlink` or `.debug_sup` to a separate file by name:
//! under `/usr/lib/debug`, in the object's own folder, or wherever an absolute name in the link
//! points, opened as root, blocking, following symlinks. A user's object, or a folder a user
//! can write, could name a FIFO there (the profiler would wait forever) or a device. So the
//! DWARF is read for objects with no such link, and for those root wrote in folders only root
//! can change; others are symbolized from their symbol tables. (Objects are handed to blazesym
//! as `/proc/self/fd/N`, so the DWARF package it looks for, `N.dwp` there, never exists.)

use std::{
    fs::File,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::Path,
};

use object::Object as _;

use crate::target::{object_trust, procfs::MAX_OBJECT_BYTES};

/// The sections by which an object names another file holding its debug information.
const LINK_SECTIONS: [&str; 3] = [".gnu_debuglink", ".gnu_debugaltlink", ".debug_sup"];

/// Whether blazesym may read `file`'s DWARF (see the module's comment).
pub fn dwarf_is_safe(file: &File) -> bool {
    match links_to_other_files(file) {
        Some(false) => true,
        // Linked, or unreadable as an ELF file (then blazesym will not get far either).
        Some(true) | None => root_written_in_root_folders(file),
    }
}

/// Whether `file` has a section naming a separate debug file; `None` if it is not an ELF file
/// this can read. Only the headers and section names are read.
fn links_to_other_files(file: &File) -> Option<bool> {
    let metadata = file.metadata().ok()?;
    if !metadata.is_file() || metadata.len() > MAX_OBJECT_BYTES {
        return None;
    }
    let cache = object::ReadCache::new(file);
    let elf = object::File::parse(&cache).ok()?;
    Some(
        LINK_SECTIONS
            .iter()
            .any(|name| elf.section_by_name(name).is_some()),
    )
}

/// Whether `file` is root's own ([`object_trust`]) and every folder of the path blazesym will
/// search from (the descriptor's, as the kernel names it) is too: no one else can put a file
/// in them, nor rename them.
fn root_written_in_root_folders(file: &File) -> bool {
    let Ok(metadata) = file.metadata() else {
        return false;
    };
    if !object_trust::trusted_object(file, &metadata) {
        return false;
    }
    let Ok(path) = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())) else {
        return false;
    };
    path.is_absolute() && path.ancestors().skip(1).all(root_folder)
}

fn root_folder(folder: &Path) -> bool {
    // SAFETY: no preconditions.
    let euid = unsafe { libc::geteuid() };
    std::fs::symlink_metadata(folder).is_ok_and(|metadata| {
        metadata.is_dir()
            && (metadata.uid() == 0 || metadata.uid() == euid)
            && metadata.mode() & 0o022 == 0
    })
}

#[cfg(test)]
mod tests {
    use std::{os::unix::fs::PermissionsExt as _, process::Command};

    use super::*;

    /// Compiles a small program in `dir`, with a debug link to `link` if given.
    fn program(dir: &Path, link: Option<&str>) -> std::path::PathBuf {
        let source = dir.join("p.c");
        std::fs::write(&source, "int main(void) { return 0; }\n").unwrap();
        let binary = dir.join("p");
        let built = Command::new("cc")
            .arg("-g")
            .arg("-o")
            .arg(&binary)
            .arg(&source)
            .status()
            .unwrap();
        assert!(built.success());
        if let Some(link) = link {
            std::fs::write(dir.join(link), b"").unwrap();
            let linked = Command::new("objcopy")
                .arg(format!("--add-gnu-debuglink={link}"))
                .arg(&binary)
                .current_dir(dir)
                .status()
                .unwrap();
            assert!(linked.success());
        }
        binary
    }

    #[test]
    fn an_object_without_debug_links_keeps_its_dwarf() {
        let dir = tempfile::tempdir().unwrap();
        let binary = program(dir.path(), None);
        let file = File::open(&binary).unwrap();
        assert_eq!(links_to_other_files(&file), Some(false));
        assert!(dwarf_is_safe(&file));
    }

    #[test]
    fn a_linked_object_in_a_folder_others_can_write_is_read_without_dwarf() {
        let dir = tempfile::tempdir().unwrap();
        let binary = program(dir.path(), Some("p.debug"));
        let file = File::open(&binary).unwrap();
        assert_eq!(links_to_other_files(&file), Some(true));
        // The object is root's and the folder too, but one above it is writable by all.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(!dwarf_is_safe(&file));
        assert!(!root_folder(Path::new("/tmp")), "/tmp is writable by all");
        assert!(root_folder(Path::new("/")));
    }

    #[test]
    fn a_linked_object_root_installed_keeps_its_dwarf() {
        // Debian's binaries link to their `-dbgsym` files; `/usr/bin` and those above it are
        // root's alone.
        let file = File::open("/usr/bin/ls").unwrap();
        assert_eq!(links_to_other_files(&file), Some(true));
        assert!(dwarf_is_safe(&file));
    }

    #[test]
    fn not_an_elf_file_is_treated_as_linked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("not-elf");
        std::fs::write(&path, b"plain text").unwrap();
        assert_eq!(links_to_other_files(&File::open(&path).unwrap()), None);
    }
}
