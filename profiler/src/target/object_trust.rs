//! Whether an object file's contents are root's own, so that its unwind table may be shared by
//! build-id and kept on disk ([`crate::kernel::table_cache`]), and its DWARF read
//! ([`crate::stacks`]' `debug_links`). A user's own file could carry libc's build-id and a
//! forged table, with which every process's libc would then be walked; or name a FIFO as its
//! debug file, or change between a check and its use.

use std::{
    fs::{File, Metadata},
    io::Read as _,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
};

/// The most of a mount table read: a host with thousands of mounts has a few hundred KiB.
const MAX_MOUNT_TABLE_BYTES: u64 = 16 << 20;

/// Whether `file` (its `metadata`) is trusted:
/// - a regular file of root's or of the profiler's own user, no one else may write;
/// - on a file system mounted without `nosuid` and not served by FUSE: users mount their own
///   (a disk image through udisks, FUSE) `nosuid`, where a file can claim root as its owner,
///   and a FUSE daemon answers each read as it likes, whatever the mount's flags;
/// - on a mount of the profiler's own mount namespace. In a user namespace of their own, a
///   user mounts what they like without `nosuid`: an overlay over their FUSE or disk image
///   files keeps the owner those files claim. A container's mounts are not trusted either:
///   its root, or its image, writes files root owns.
pub fn trusted_object(file: &File, metadata: &Metadata) -> bool {
    owned(metadata) && trusted_file_system(file) && mount_of_ours(file)
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

fn mount_of_ours(file: &File) -> bool {
    // Mount ids are unique across namespaces: one listed in our table is a mount of ours.
    mount_id(file).is_some_and(|mount| lists_mount("/proc/self/mountinfo", mount))
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

/// Whether the mount table at `path` (a `mountinfo`, read bounded) lists `mount`. Read as
/// bytes: a mount point's name need not be UTF-8.
fn lists_mount(path: &str, mount: u64) -> bool {
    let mut table = Vec::new();
    let read =
        File::open(path).and_then(|file| file.take(MAX_MOUNT_TABLE_BYTES).read_to_end(&mut table));
    let id = mount.to_string();
    read.is_ok()
        && table.split(|&byte| byte == b'\n').any(|line| {
            line.split(|&byte| byte == b' ')
                .next()
                .is_some_and(|first| first == id.as_bytes())
        })
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
        let trusted = |path: &Path| {
            let file = File::open(path).unwrap();
            trusted_object(&file, &file.metadata().unwrap())
        };
        // A temporary folder on a `nosuid` or FUSE mount trusts nothing: the tests of those
        // and of other mount namespaces are `safety`'s, which make them.
        let file_system_trusted = trusted_file_system(&File::open(&object).unwrap());
        std::fs::set_permissions(&object, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(trusted(&object), file_system_trusted);
        std::fs::set_permissions(&object, std::fs::Permissions::from_mode(0o775)).unwrap();
        assert!(!trusted(&object));
        assert!(!trusted(dir.path()));
    }

    #[test]
    fn a_mount_is_found_in_its_own_table_only() {
        let file = File::open("/proc/self/exe").unwrap();
        let mount = mount_id(&file).expect("statx gives the mount id");
        assert!(lists_mount("/proc/self/mountinfo", mount));
        assert!(!lists_mount("/proc/self/mountinfo", u64::MAX));
        assert!(!lists_mount("/proc/self/no-such-table", mount));
    }
}
