//! Which processes a selection (`--all`, `--comm`, `--cgroup`) names, from `/proc`.

use crate::{collect::config::Selection, target::procfs};

/// Where systemd and container runtimes mount the cgroup hierarchies.
const CGROUP_MOUNTS: &str = "/sys/fs/cgroup";

/// Whether `pid` is one of the selection's now (a process's name and cgroup can change).
pub fn selects(selection: &Selection, pid: u32) -> bool {
    match selection {
        Selection::All => true,
        Selection::Comm(pattern) => {
            procfs::process_name(pid).is_ok_and(|name| pattern.is_match(&name))
        }
        Selection::Cgroup(path) => procfs::cgroup_paths(pid)
            .iter()
            .any(|cgroup| is_within(cgroup, path)),
    }
}

/// The selection's processes running now, the profiler's own and kernel threads excepted.
pub fn running(selection: &Selection) -> Vec<u32> {
    procfs::user_processes_but_self()
        .into_iter()
        .filter(|&pid| selects(selection, pid))
        .collect()
}

/// Whether a cgroup is `root` or below it.
fn is_within(cgroup: &str, root: &str) -> bool {
    root == "/"
        || cgroup
            .strip_prefix(root)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// A cgroup's path from its hierarchy's root (`/` first, no `/` last), as
/// `/proc/PID/cgroup` names it: given as that, without the first `/`, or as a folder where a
/// hierarchy is mounted (`/sys/fs/cgroup/...`, `/sys/fs/cgroup/memory/...` with cgroup v1).
pub fn cgroup_path(text: &str) -> Result<String, String> {
    below_mount(text, &cgroup_mount_points())
}

fn below_mount(text: &str, mount_points: &[String]) -> Result<String, String> {
    if text.is_empty() || text.contains('\n') {
        return Err(format!(
            "`{text}`: give a cgroup's path, as /proc/PID/cgroup shows it after the second `:`"
        ));
    }
    let below = mount_points
        .iter()
        .filter_map(|point| {
            text.strip_prefix(point.as_str())
                .filter(|rest| rest.is_empty() || rest.starts_with('/'))
        })
        .min_by_key(|rest| rest.len())
        .unwrap_or(text);
    let parts: Vec<&str> = below.split('/').filter(|part| !part.is_empty()).collect();
    if parts.iter().any(|&part| part == "." || part == "..") {
        return Err(format!(
            "`{text}`: give the cgroup's path without `.` or `..`"
        ));
    }
    Ok(format!("/{}", parts.join("/")))
}

/// Where cgroup hierarchies (v1 and v2) are mounted, per `/proc/self/mounts`; the usual
/// places when it cannot be read.
fn cgroup_mount_points() -> Vec<String> {
    let mounts = procfs::read_small("/proc/self/mounts".as_ref()).unwrap_or_default();
    let mut points: Vec<String> = String::from_utf8_lossy(&mounts)
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, point, kind) = (fields.next()?, fields.next()?, fields.next()?);
            matches!(kind, "cgroup" | "cgroup2").then(|| point.to_owned())
        })
        .collect();
    if points.is_empty() {
        points.push(CGROUP_MOUNTS.to_owned());
    }
    points
}

/// A warning when a cgroup selected does not exist (yet) in any hierarchy: a mistyped path
/// would otherwise profile nothing, silently.
pub fn missing_cgroup(selection: &Selection) -> Option<String> {
    let Selection::Cgroup(path) = selection else {
        return None;
    };
    let exists = cgroup_mount_points().iter().any(|point| {
        std::path::Path::new(point)
            .join(path.trim_start_matches('/'))
            .is_dir()
    });
    (!exists).then(|| {
        format!(
            "no cgroup {path} in any cgroup hierarchy: its processes are profiled once it has \
             some"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cgroup_holds_its_descendants_only() {
        assert!(is_within("/system.slice/pg.service", "/system.slice"));
        assert!(is_within("/system.slice", "/system.slice"));
        assert!(!is_within("/system.slice2/x", "/system.slice"));
        assert!(!is_within("/user.slice", "/system.slice"));
        assert!(is_within("/user.slice", "/"));
    }

    #[test]
    fn this_process_is_selected_by_its_name_and_cgroup() {
        let me = std::process::id();
        let name = procfs::process_name(me).unwrap();
        let pattern = regex::Regex::new(&format!("^{}$", regex::escape(&name))).unwrap();
        assert!(selects(&Selection::Comm(pattern), me));
        assert!(!selects(
            &Selection::Comm(regex::Regex::new("^no such name$").unwrap()),
            me
        ));
        let cgroup = procfs::cgroup_paths(me).pop().expect("a cgroup");
        assert!(selects(&Selection::Cgroup(cgroup), me));
        assert!(!selects(&Selection::Cgroup("/no/such/cgroup".into()), me));
    }

    #[test]
    fn a_cgroup_is_named_below_its_mount_point() {
        let mounts = [
            "/sys/fs/cgroup".to_owned(),
            "/sys/fs/cgroup/memory".to_owned(),
        ];
        let path = |text| below_mount(text, &mounts);
        assert_eq!(
            path("/sys/fs/cgroup/system.slice/"),
            Ok("/system.slice".into())
        );
        assert_eq!(
            path("/sys/fs/cgroup/memory/docker/ab"),
            Ok("/docker/ab".into())
        );
        assert_eq!(path("a.slice//b.scope"), Ok("/a.slice/b.scope".into()));
        assert_eq!(path("/sys/fs/cgroupx"), Ok("/sys/fs/cgroupx".into()));
        assert_eq!(path("/sys/fs/cgroup"), Ok("/".into()));
        assert!(path("/a/../b").is_err());
        assert!(path("").is_err());
    }
}
