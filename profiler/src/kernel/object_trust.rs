//! Whether an object file's contents are root's own, so that its unwind table may be shared by
//! build-id and kept on disk ([`super::table_cache`]). A user's own file could carry libc's
//! build-id and a forged table, with which every process's libc would then be walked.

use std::{
    fs::{File, Metadata},
    io::Read as _,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::fs::MetadataExt as _,
    },
};

/// The most of a mount table read: a host with thousands of mounts has a few hundred KiB.
const MAX_MOUNT_TABLE_BYTES: u64 = 16 << 20;
/// `NS_GET_USERNS` (`<linux/nsfs.h>`, `_IO(0xb7, 0x1)`): the user namespace owning a
/// namespace.
const NS_GET_USERNS: libc::c_ulong = 0xb701;

/// Whether `file` (its `metadata`), mapped by process `mapped_by` or opened by the profiler
/// itself, is trusted:
/// - a regular file of root's or of the profiler's own user, no one else may write;
/// - on a file system mounted without `nosuid` and not served by FUSE: users mount their own
///   (a disk image through udisks, FUSE) `nosuid`, where a file can claim root as its owner,
///   and a FUSE daemon answers each read as it likes, whatever the mount's flags;
/// - on a mount of the profiler's own mount namespace, or of the mapping process's when root
///   made that namespace (a container's). In a user namespace of their own, a user mounts what
///   they like without `nosuid`: an overlay over their FUSE or disk image files keeps the owner
///   those files claim.
pub fn trusted_object(file: &File, metadata: &Metadata, mapped_by: Option<u32>) -> bool {
    owned(metadata) && trusted_file_system(file) && mount_made_by_root(file, mapped_by)
}

fn owned(metadata: &Metadata) -> bool {
    // SAFETY: no preconditions.
    let euid = unsafe { libc::geteuid() };
    metadata.is_file()
        && (metadata.uid() == 0 || metadata.uid() == euid)
        && metadata.mode() & 0o022 == 0
}

fn trusted_file_system(file: &File) -> bool {
    // SAFETY: an open descriptor and zeroed structs for the kernel to fill.
    unsafe {
        let mut flags: libc::statvfs = std::mem::zeroed();
        let mut kind: libc::statfs = std::mem::zeroed();
        libc::fstatvfs(file.as_raw_fd(), &mut flags) == 0
            && flags.f_flag & libc::ST_NOSUID == 0
            && libc::fstatfs(file.as_raw_fd(), &mut kind) == 0
            && kind.f_type != libc::FUSE_SUPER_MAGIC
    }
}

fn mount_made_by_root(file: &File, mapped_by: Option<u32>) -> bool {
    let Some(mount) = mount_id(file) else {
        return false;
    };
    // Mount ids are unique across namespaces: one listed in a table is that namespace's.
    if lists_mount("/proc/self/mountinfo", mount) {
        return true;
    }
    mapped_by.is_some_and(|pid| {
        namespace_of_our_user_namespace(pid)
            && lists_mount(&format!("/proc/{pid}/mountinfo"), mount)
    })
}

/// The id of the mount `file` is on, as mount tables list it.
fn mount_id(file: &File) -> Option<u64> {
    // SAFETY: an open descriptor, an empty C string with `AT_EMPTY_PATH`, and a zeroed struct
    // for the kernel to fill.
    let stats = unsafe {
        let mut stats: libc::statx = std::mem::zeroed();
        let done = libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_MNT_ID,
            &mut stats,
        );
        (done == 0).then_some(stats)
    }?;
    (stats.stx_mask & libc::STATX_MNT_ID != 0).then_some(stats.stx_mnt_id)
}

/// Whether the mount table at `path` (a `mountinfo`, read bounded) lists `mount`.
fn lists_mount(path: &str, mount: u64) -> bool {
    let mut table = String::new();
    let read = File::open(path)
        .and_then(|file| file.take(MAX_MOUNT_TABLE_BYTES).read_to_string(&mut table));
    read.is_ok()
        && table
            .lines()
            .any(|line| line.split(' ').next().and_then(|id| id.parse::<u64>().ok()) == Some(mount))
}

/// Whether the mount namespace of process `pid` belongs to the profiler's own user namespace:
/// root made it (a container's), not a user in a namespace of their own.
fn namespace_of_our_user_namespace(pid: u32) -> bool {
    let Ok(namespace) = File::open(format!("/proc/{pid}/ns/mnt")) else {
        return false;
    };
    // SAFETY: an open namespace descriptor; the ioctl returns a new descriptor or -1.
    let owner = unsafe { libc::ioctl(namespace.as_raw_fd(), NS_GET_USERNS) };
    if owner < 0 {
        return false;
    }
    // SAFETY: a descriptor the kernel just made for us alone.
    let owner = File::from(unsafe { OwnedFd::from_raw_fd(owner) });
    let ours = std::fs::metadata("/proc/self/ns/user");
    match (owner.metadata(), ours) {
        (Ok(owner), Ok(ours)) => (owner.dev(), owner.ino()) == (ours.dev(), ours.ino()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn only_objects_no_one_else_may_write_are_trusted() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let object = dir.path().join("lib.so");
        std::fs::write(&object, b"\x7fELF").unwrap();
        let trusted = |path: &Path, mapped_by: Option<u32>| {
            let file = File::open(path).unwrap();
            trusted_object(&file, &file.metadata().unwrap(), mapped_by)
        };
        // A temporary folder on a `nosuid` or FUSE mount trusts nothing: the tests of those
        // and of other mount namespaces are `safety`'s, which make them.
        let file_system_trusted = trusted_file_system(&File::open(&object).unwrap());
        std::fs::set_permissions(&object, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(trusted(&object, None), file_system_trusted);
        assert_eq!(
            trusted(&object, Some(std::process::id())),
            file_system_trusted
        );
        std::fs::set_permissions(&object, std::fs::Permissions::from_mode(0o775)).unwrap();
        assert!(!trusted(&object, None));
        assert!(!trusted(dir.path(), None));
    }

    #[test]
    fn a_mount_is_found_in_its_own_table_only() {
        let file = File::open("/proc/self/exe").unwrap();
        let mount = mount_id(&file).expect("statx gives the mount id");
        assert!(lists_mount("/proc/self/mountinfo", mount));
        assert!(!lists_mount("/proc/self/mountinfo", u64::MAX));
        assert!(!lists_mount("/proc/self/no-such-table", mount));
        assert!(namespace_of_our_user_namespace(std::process::id()));
        assert!(!namespace_of_our_user_namespace(u32::MAX));
    }
}
