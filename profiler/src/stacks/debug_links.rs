//! Whether symbolization may read an object's DWARF. With it, blazesym also follows the
//! object's `.gnu_debuglink`, `.gnu_debugaltlink` or `.debug_sup` to a separate file by name:
//! under `/usr/lib/debug`, in the object's own folder, or wherever an absolute name in the link
//! points, opened as root, blocking, following symlinks; and it trusts the DWARF's own sizes
//! (a compressed section's size is allocated as given). So the DWARF is read only for objects
//! root wrote ([`object_trust`]: no one else can change them meanwhile, which a check of a
//! user's file could not promise), and of those, the ones naming a separate file only where
//! every folder up to `/` is root's alone. Others are named from their symbol tables: a user's
//! program profiled under sudo loses its inlined frames and line numbers, but cannot make root
//! open a FIFO (a hang) or a device. (Objects are handed to blazesym as `/proc/self/fd/N`, so
//! the DWARF package it looks for, `N.dwp` there, never exists.)

use std::{
    fs::{File, Metadata},
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::Path,
};

use object::Object as _;

use crate::target::{object_trust, procfs::MAX_OBJECT_BYTES};

/// The sections by which an object names another file holding its debug information.
const LINK_SECTIONS: [&str; 3] = [".gnu_debuglink", ".gnu_debugaltlink", ".debug_sup"];

/// Whether blazesym may read `file`'s DWARF (see the module's comment).
pub fn dwarf_is_safe(file: &File) -> bool {
    let Ok(metadata) = file.metadata() else {
        return false;
    };
    if !object_trust::trusted_object(file, &metadata) {
        return false;
    }
    match links_to_other_files(file, &metadata) {
        Some(false) => true,
        // Linked, or unreadable as an ELF file (then blazesym will not get far either).
        Some(true) | None => in_root_folders(file),
    }
}

/// Whether `file` (its `metadata`) has a section naming a separate debug file; `None` if it is
/// not an ELF file this can read. Only the headers and section names are read.
fn links_to_other_files(file: &File, metadata: &Metadata) -> Option<bool> {
    if !metadata.is_file() || metadata.len() > MAX_OBJECT_BYTES {
        return None;
    }
    // A descriptor of its own: reading moves the file offset, which a clone of `file` shares.
    let own = File::open(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()?;
    let cache = object::ReadCache::new(own);
    let elf = object::File::parse(&cache).ok()?;
    Some(
        LINK_SECTIONS
            .iter()
            .any(|name| elf.section_by_name(name).is_some()),
    )
}

/// Whether every folder of the path blazesym will search from (the descriptor's, as the
/// kernel names it) is root's alone: no one else can put a file in them, nor rename them.
fn in_root_folders(file: &File) -> bool {
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

    fn links(file: &File) -> Option<bool> {
        links_to_other_files(file, &file.metadata().unwrap())
    }

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
    fn a_root_object_without_debug_links_keeps_its_dwarf_a_users_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let binary = program(dir.path(), None);
        let file = File::open(&binary).unwrap();
        assert_eq!(links(&file), Some(false));
        // Root's (the tests run as root), where the folders may be anyone's: no link to follow.
        assert_eq!(
            dwarf_is_safe(&file),
            object_trust::trusted_object(&file, &file.metadata().unwrap())
        );
        // Another user's: whatever it says now, they could rewrite it.
        std::os::unix::fs::chown(&binary, Some(65534), Some(65534)).unwrap();
        assert!(!dwarf_is_safe(&file));
    }

    #[test]
    fn a_linked_object_in_a_folder_others_can_write_is_read_without_dwarf() {
        let dir = tempfile::tempdir().unwrap();
        let binary = program(dir.path(), Some("p.debug"));
        let file = File::open(&binary).unwrap();
        assert_eq!(links(&file), Some(true));
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
        assert_eq!(links(&file), Some(true));
        assert!(dwarf_is_safe(&file));
    }

    #[test]
    fn not_an_elf_file_is_treated_as_linked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("not-elf");
        std::fs::write(&path, b"plain text").unwrap();
        assert_eq!(links(&File::open(&path).unwrap()), None);
    }
}
