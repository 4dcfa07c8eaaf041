//! tracefs: where classic tracepoints are described (and attached by id), and the layout of
//! their records, which the eBPF programs read at fixed offsets.

use std::path::{Path, PathBuf};

/// Mount points the kernel documents for tracefs, preferred first.
const MOUNT_POINTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// Errors finding or reading tracefs.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TracefsError {
    /// Not mounted, and mounting failed.
    #[error(
        "tracefs is not mounted and mounting it failed ({0}); mount it with \
         `mount -t tracefs tracefs /sys/kernel/tracing`"
    )]
    NotMounted(String),
    /// Mounted, but this user may not read it.
    #[error(
        "tracefs is mounted at {0} but this user cannot read it (permission denied); run as \
         root (sudo), or remount it readable by a group of the user \
         (`mount -o remount,gid=GID,mode=0750 {0}`)"
    )]
    Unreadable(String),
    /// The event's format file is missing or unreadable.
    #[error("tracepoint {0} is not available: {1}")]
    NoEvent(String, String),
    /// A field is not where the programs read it.
    #[error(
        "tracepoint {event}: field `{field}` is {found} here, the profiler needs it {expected}; \
         this kernel's record layout is not supported"
    )]
    Layout {
        /// The event.
        event: String,
        /// The field.
        field: String,
        /// What the format file says.
        found: String,
        /// Where and how large the programs need it.
        expected: String,
    },
}

/// The tracefs mount, mounting it at `/sys/kernel/tracing` if it is nowhere (as root).
pub fn ensure_mounted() -> Result<PathBuf, TracefsError> {
    if let Some(found) = MOUNT_POINTS
        .iter()
        .map(Path::new)
        .find(|path| path.join("events").is_dir())
    {
        return Ok(found.to_path_buf());
    }
    if let Some(mounted) = mounted_at() {
        return Err(TracefsError::Unreadable(mounted.to_owned()));
    }
    let target = MOUNT_POINTS[0];
    let c = |text: &str| std::ffi::CString::new(text).expect("no NUL");
    let (source, target_c, kind) = (c("tracefs"), c(target), c("tracefs"));
    // SAFETY: valid NUL-terminated strings; no data argument.
    let result = unsafe {
        libc::mount(
            source.as_ptr(),
            target_c.as_ptr(),
            kind.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if result != 0 {
        return Err(TracefsError::NotMounted(
            std::io::Error::last_os_error().to_string(),
        ));
    }
    log::info!("mounted tracefs at {target}");
    Ok(PathBuf::from(target))
}

/// The documented mount point where tracefs is mounted, per `/proc/self/mounts`.
fn mounted_at() -> Option<&'static str> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounted_in(&mounts)
}

fn mounted_in(mounts: &str) -> Option<&'static str> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, point, kind) = (fields.next()?, fields.next()?, fields.next()?);
        (kind == "tracefs")
            .then(|| MOUNT_POINTS.into_iter().find(|&known| known == point))
            .flatten()
    })
}

/// Offset and size of `field` in a tracepoint `format` file's text.
pub fn field_layout(format: &str, field: &str) -> Option<(usize, usize)> {
    format.lines().find_map(|line| {
        let mut parts = line.trim().split(';').map(str::trim);
        let declaration = parts.next()?.strip_prefix("field:")?;
        let name = declaration.rsplit([' ', '*']).next()?;
        let name = name.split('[').next()?;
        if name != field {
            return None;
        }
        let mut offset = None;
        let mut size = None;
        for part in parts {
            if let Some(value) = part.strip_prefix("offset:") {
                offset = value.parse().ok();
            } else if let Some(value) = part.strip_prefix("size:") {
                size = value.parse().ok();
            }
        }
        Some((offset?, size?))
    })
}

/// An event's `format` file.
pub struct EventFormat {
    event: String,
    text: String,
}

/// Reads the `format` file of `event` (`category/name`).
pub fn read_format(root: &Path, event: &str) -> Result<EventFormat, TracefsError> {
    let path = root.join("events").join(event).join("format");
    let text = std::fs::read_to_string(&path)
        .map_err(|err| TracefsError::NoEvent(event.to_owned(), err.to_string()))?;
    Ok(EventFormat {
        event: event.to_owned(),
        text,
    })
}

impl EventFormat {
    /// The offset of `field`, whose size must be in `sizes`.
    pub fn field(
        &self,
        field: &str,
        sizes: std::ops::RangeInclusive<usize>,
    ) -> Result<usize, TracefsError> {
        match field_layout(&self.text, field) {
            Some((offset, size)) if sizes.contains(&size) => Ok(offset),
            found => Err(self.layout_error(field, found, None, sizes)),
        }
    }

    /// Checks that `field` is at `offset`, with a size in `sizes`.
    pub fn expect_field(
        &self,
        field: &str,
        offset: usize,
        sizes: std::ops::RangeInclusive<usize>,
    ) -> Result<(), TracefsError> {
        match field_layout(&self.text, field) {
            Some((o, size)) if o == offset && sizes.contains(&size) => Ok(()),
            found => Err(self.layout_error(field, found, Some(offset), sizes)),
        }
    }

    fn layout_error(
        &self,
        field: &str,
        found: Option<(usize, usize)>,
        offset: Option<usize>,
        sizes: std::ops::RangeInclusive<usize>,
    ) -> TracefsError {
        TracefsError::Layout {
            event: self.event.clone(),
            field: field.to_owned(),
            found: found.map_or_else(
                || "missing".to_owned(),
                |(o, s)| format!("at offset {o} (size {s})"),
            ),
            expected: {
                let at = offset.map_or_else(String::new, |o| format!("at offset {o}, "));
                match (sizes.start(), sizes.end()) {
                    (low, high) if low == high => format!("{at}size {low}"),
                    (low, &usize::MAX) => format!("{at}size {low} or more"),
                    (low, high) => format!("{at}size {low} to {high}"),
                }
            },
        }
    }
}

/// Checks that `event` (`category/name`) has each `(field, offset, size)`; size 0 accepts any
/// size (arrays whose length varies between kernels, read only in part).
pub fn check_layout(
    root: &Path,
    event: &str,
    fields: &[(&str, usize, usize)],
) -> Result<(), TracefsError> {
    let format = read_format(root, event)?;
    for &(field, offset, size) in fields {
        let sizes = if size == 0 {
            1..=usize::MAX
        } else {
            size..=size
        };
        format.expect_field(field, offset, sizes)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_tracefs_in_the_mount_table() {
        let mounts = "sysfs /sys sysfs rw 0 0\ntracefs /sys/kernel/tracing tracefs rw 0 0\n";
        assert_eq!(mounted_in(mounts), Some("/sys/kernel/tracing"));
        assert_eq!(mounted_in("tracefs /elsewhere tracefs rw 0 0\n"), None);
        assert_eq!(mounted_in("sysfs /sys sysfs rw 0 0\n"), None);
    }

    const SWITCH: &str = "name: sched_switch
ID: 372
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:char prev_comm[16];\toffset:8;\tsize:16;\tsigned:0;
\tfield:pid_t prev_pid;\toffset:24;\tsize:4;\tsigned:1;
\tfield:long prev_state;\toffset:32;\tsize:8;\tsigned:1;
\tfield:pid_t next_pid;\toffset:56;\tsize:4;\tsigned:1;
";

    #[test]
    fn reads_field_layouts() {
        assert_eq!(field_layout(SWITCH, "prev_state"), Some((32, 8)));
        assert_eq!(field_layout(SWITCH, "next_pid"), Some((56, 4)));
        assert_eq!(field_layout(SWITCH, "prev_comm"), Some((8, 16)));
        assert_eq!(field_layout(SWITCH, "common_type"), Some((0, 2)));
        assert_eq!(field_layout(SWITCH, "pid"), None);
    }

    #[test]
    fn checks_layouts_against_a_format_file() {
        let dir = tempfile::tempdir().unwrap();
        let event = dir.path().join("events/sched/sched_switch");
        std::fs::create_dir_all(&event).unwrap();
        std::fs::write(event.join("format"), SWITCH).unwrap();
        assert_eq!(
            check_layout(dir.path(), "sched/sched_switch", &[("next_pid", 56, 4)]),
            Ok(())
        );
        assert_eq!(
            check_layout(dir.path(), "sched/sched_switch", &[("prev_comm", 8, 0)]),
            Ok(())
        );
        let err = check_layout(dir.path(), "sched/sched_switch", &[("next_pid", 60, 4)]);
        assert!(matches!(err, Err(TracefsError::Layout { .. })), "{err:?}");
        let err = check_layout(dir.path(), "sched/nope", &[]);
        assert!(matches!(err, Err(TracefsError::NoEvent(..))), "{err:?}");
    }
}
