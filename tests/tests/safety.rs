//! Running as root next to production: `profiler check`, hostile output folders, a full disk,
//! capability errors, and targets that churn threads and exec.

use std::{
    ffi::OsStr,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use profiler_tests::{
    Spawned, assert_nothing_loaded, build_id, have_root, output, profiler, profiler_bin, program,
    read_summary, runtimes::have_runtime, serial, wait_for,
};

/// A file system mounted on a folder for one test, unmounted however the test ends.
struct Mounted<'a>(&'a Path);

impl<'a> Mounted<'a> {
    fn tmpfs(folder: &'a Path, options: &str) -> Self {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(folder)
            .status()
            .unwrap();
        assert!(status.success(), "mounting a tmpfs ({options})");
        Mounted(folder)
    }

    /// `source` served again on `folder` by FUSE (Debian's bindfs), setuid allowed.
    fn fuse(source: &Path, folder: &'a Path) -> Self {
        let status = Command::new("bindfs")
            .args(["-o", "suid"])
            .arg(source)
            .arg(folder)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "mounting {} with bindfs",
            source.display()
        );
        let mounted = Mounted(folder);
        // What the test is about: FUSE, and no `nosuid` to refuse it by.
        let path = std::ffi::CString::new(folder.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a C string and zeroed structs for the kernel to fill.
        let (flags, kind) = unsafe {
            let mut flags: libc::statvfs = std::mem::zeroed();
            let mut kind: libc::statfs = std::mem::zeroed();
            assert_eq!(libc::statvfs(path.as_ptr(), &mut flags), 0);
            assert_eq!(libc::statfs(path.as_ptr(), &mut kind), 0);
            (flags.f_flag, kind.f_type)
        };
        assert_eq!(flags & libc::ST_NOSUID, 0, "bindfs mounted suid");
        assert_eq!(kind, libc::FUSE_SUPER_MAGIC, "bindfs serves by FUSE");
        mounted
    }
}

impl Drop for Mounted<'_> {
    /// A FUSE daemon may hold its source folder for a moment after its unmount: tried again,
    /// then detached lazily, so that no mount outlives the test.
    fn drop(&mut self) {
        for _ in 0..20 {
            let unmounted = Command::new("umount")
                .arg(self.0)
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|status| status.success());
            if unmounted {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("umount").arg("-l").arg(self.0).status();
    }
}

/// A copy of the profiler binary any user can execute.
fn public_binary(dir: &Path) -> PathBuf {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let binary = dir.join("profiler");
    std::fs::copy(profiler_bin(), &binary).unwrap();
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
    binary
}

#[test]
fn check_reports_each_capability_and_what_to_do() {
    let _serial = serial();
    if !have_root("check_reports_each_capability_and_what_to_do") {
        return;
    }
    let out = output(profiler().arg("check"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for name in [
        "kernel",
        "capabilities",
        "ptrace",
        "BTF",
        "tracefs",
        "kprobes",
        "eBPF programs",
        "stack walker",
        "perf events",
        "BTF tracepoints",
        "tracepoints",
        "uprobes",
    ] {
        let line = text
            .lines()
            .find(|line| line[6..].starts_with(&format!("{name:<16}")))
            .unwrap_or_else(|| panic!("no `{name}` line in:\n{text}"));
        assert!(
            line.starts_with("PASS") || line.starts_with("INFO"),
            "{line}"
        );
    }
    assert_nothing_loaded();

    // An unprivileged user: the capability line fails and names what is missing.
    let dir = tempfile::tempdir().unwrap();
    let binary = public_binary(dir.path());
    let out = output(
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
            ])
            .arg(&binary)
            .arg("check"),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let line = text
        .lines()
        .find(|line| line.contains("capabilities"))
        .unwrap();
    assert!(
        line.starts_with("FAIL") && line.contains("CAP_BPF") && line.contains("sudo"),
        "{line}"
    );
    assert!(
        text.lines()
            .any(|line| line.starts_with("FAIL  eBPF programs") && line.contains("not tried")),
        "{text}"
    );
    // With the capabilities but not root, where tracefs is mounted root-only: said so, and
    // the verifier is not blamed for what a permission refused.
    let tracefs_private = std::fs::metadata("/sys/kernel/tracing/events").is_ok()
        && std::fs::metadata("/sys/kernel/tracing").unwrap().mode() & 0o005 == 0;
    if tracefs_private {
        let out = output(
            Command::new("setpriv")
                .args([
                    "--reuid=65534",
                    "--regid=65534",
                    "--clear-groups",
                    "--inh-caps=-all,+bpf,+perfmon",
                    "--ambient-caps=+bpf,+perfmon",
                ])
                .arg(&binary)
                .arg("check"),
        );
        let with_caps = String::from_utf8_lossy(&out.stdout);
        assert!(
            with_caps
                .lines()
                .any(|line| line.starts_with("FAIL  tracefs") && line.contains("cannot read it")),
            "{with_caps}"
        );
        assert!(!with_caps.contains("verifier"), "{with_caps}");
    } else {
        eprintln!("tracefs is readable by others here: the capability-only check is not run");
    }
    // Only other users' processes need CAP_SYS_PTRACE: said, not failed.
    assert!(
        text.lines()
            .any(|line| line.starts_with("INFO  ptrace") && line.contains("sudo")),
        "{text}"
    );
}

#[test]
fn system_folders_and_planted_symlinks_are_refused() {
    let _serial = serial();
    if !have_root("system_folders_and_planted_symlinks_are_refused") {
        return;
    }
    let refused = |dir: &Path, expected: &str| {
        let out = output(
            profiler()
                .args(["record", "-o"])
                .arg(dir)
                .args(["--", "true"]),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{}: {stderr}", dir.display());
        assert!(stderr.contains(expected), "{}: {stderr}", dir.display());
    };
    refused(Path::new("/etc/profiler-results"), "system folder /etc");
    assert!(!Path::new("/etc/profiler-results").exists());
    let dir = tempfile::tempdir().unwrap();
    // A planted link into a system folder, as the folder or on the way to it.
    let planted = dir.path().join("results");
    std::os::unix::fs::symlink("/usr/lib", &planted).unwrap();
    refused(&planted, "symbolic link");
    refused(&planted.join("run"), "system folder /usr");
    assert!(!Path::new("/usr/lib/run").exists());
    // A link anywhere else is not followed either.
    let elsewhere = tempfile::tempdir().unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(elsewhere.path(), &link).unwrap();
    refused(&link, "symbolic link");
    assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
    assert_nothing_loaded();
}

#[test]
fn results_belong_to_the_sudo_user() {
    let _serial = serial();
    if !have_root("results_belong_to_the_sudo_user") {
        return;
    }
    // A folder of the user's: under sudo the profiler creates only where they could.
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).unwrap();
    let results = dir.path().join("new/run");
    let out = output(
        profiler()
            .env("SUDO_UID", "65534")
            .env("SUDO_GID", "65534")
            .args(["record", "-o"])
            .arg(&results)
            .args(["--"])
            .arg(program("cpu_split"))
            .args(["1", "0"]),
    );
    assert!(out.status.success(), "{out:?}");
    for path in [
        dir.path().join("new"),
        results.clone(),
        results.join("summary.json"),
    ] {
        let metadata = std::fs::metadata(&path).unwrap();
        assert_eq!(
            (metadata.uid(), metadata.gid()),
            (65534, 65534),
            "{}",
            path.display()
        );
    }
}

#[test]
fn a_full_disk_keeps_the_results_in_a_temporary_folder() {
    let _serial = serial();
    if !have_root("a_full_disk_keeps_the_results_in_a_temporary_folder") {
        return;
    }
    let mount = tempfile::tempdir().unwrap();
    std::fs::set_permissions(mount.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // Room for the writability probe, not for the results; the sudo user's to write in.
    let mounted = Mounted::tmpfs(mount.path(), "size=8k,uid=65534,gid=65534");
    let out = output(
        profiler()
            .env("SUDO_UID", "65534")
            .env("SUDO_GID", "65534")
            .args(["record", "-o"])
            .arg(mount.path())
            .args(["--"])
            .arg(program("cpu_split"))
            .args(["1", "0"]),
    );
    drop(mounted);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    let fallback = stderr
        .lines()
        .find_map(|line| line.split("they were saved in ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no fallback folder named: {stderr}"));
    let fallback = Path::new(fallback);
    assert!(fallback.join("profile.json.gz").exists(), "{stderr}");
    assert!(read_summary(fallback)["cpu"]["samples"].as_u64().unwrap() > 10);
    // The sudo user's to read, folder and files, and no one else's: a private folder.
    for path in [fallback.to_path_buf(), fallback.join("summary.json")] {
        let metadata = std::fs::metadata(&path).unwrap();
        assert_eq!((metadata.uid(), metadata.gid()), (65534, 65534));
    }
    assert_eq!(std::fs::metadata(fallback).unwrap().mode() & 0o777, 0o700);
    std::fs::remove_dir_all(fallback).unwrap();
    assert_nothing_loaded();
}

#[test]
fn another_users_process_is_profiled_when_the_kernel_allows_it_and_refused_otherwise() {
    let _serial = serial();
    if !have_root(
        "another_users_process_is_profiled_when_the_kernel_allows_it_and_refused_otherwise",
    ) {
        return;
    }
    // A root process, and the profiler as user 65534 with CAP_BPF and CAP_PERFMON only.
    // Whether that user may read the target's memory map is the kernel's call (CAP_SYS_PTRACE
    // always may; Linux 6.18 lets CAP_PERFMON too): the profiler must follow it, neither
    // refusing what works nor producing unsymbolized stacks.
    let target = Spawned::new(Command::new(program("cpu_split")).args(["30", "0"]));
    let dir = tempfile::tempdir().unwrap();
    let binary = public_binary(dir.path());
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let as_unprivileged = |program: &Path| {
        let mut command = Command::new("setpriv");
        command
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all,+bpf,+perfmon",
                "--ambient-caps=+bpf,+perfmon",
            ])
            .arg(program);
        command
    };
    let maps = format!("/proc/{}/maps", target.pid());
    let readable = as_unprivileged(Path::new("head"))
        .args(["-c", "1", &maps])
        .output()
        .unwrap()
        .status
        .success();
    let out = output(
        as_unprivileged(&binary)
            .args(["attach", "-d", "1", "-o"])
            .arg(dir.path().join("out"))
            .arg(target.pid().to_string()),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    if readable {
        assert!(out.status.success(), "{stderr}");
        let folded = std::fs::read_to_string(dir.path().join("out/cpu.folded")).unwrap();
        assert!(folded.contains("hot_path"), "{folded}");
    } else {
        assert!(!out.status.success(), "{stderr}");
        assert!(
            stderr.contains("CAP_SYS_PTRACE (missing)") && stderr.contains("belongs to user 0"),
            "{stderr}"
        );
        assert!(!dir.path().join("out").exists());
    }
    assert_nothing_loaded();
}

#[test]
fn thousands_of_threads_and_an_exec_are_survived() {
    let _serial = serial();
    if !have_root("thousands_of_threads_and_an_exec_are_survived") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = output(
        profiler()
            .args(["record", "-e", "cpu,offcpu,io,alloc", "-o"])
            .arg(dir.path())
            .args(["--"])
            .arg(program("thread_churn"))
            .args(["2", "sleep", "0.3"]),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let created: u64 = stdout
        .trim()
        .strip_prefix("threads=")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(created > 1000, "only {created} threads");
    let summary = read_summary(dir.path());
    assert_eq!(summary["stop_reason"], "command exited");
    assert!(summary["cpu"]["samples"].as_u64().unwrap() > 50);
    // Every thread's samples are there, under the process's two programs' names.
    let folded = std::fs::read_to_string(dir.path().join("cpu.folded")).unwrap();
    assert!(folded.contains("short_life"), "{folded}");
    assert_nothing_loaded();
}

#[test]
fn the_collector_keeps_to_its_memory_budget_and_counts_what_it_dropped() {
    let _serial = serial();
    if !have_root("the_collector_keeps_to_its_memory_budget_and_counts_what_it_dropped") {
        return;
    }
    let lost = |budget: &str| {
        let dir = tempfile::tempdir().unwrap();
        let out = output(
            profiler()
                .args(["record", "-F", "999", "--max-memory", budget, "-o"])
                .arg(dir.path())
                .args(["--"])
                .arg(program("thread_churn"))
                .arg("3"),
        );
        assert!(out.status.success(), "{out:?}");
        let summary = read_summary(dir.path());
        let dropped = summary["losses"]["memory_cap_dropped"].as_u64().unwrap();
        // The drops are counted with the run's losses, not only in the summary's own count.
        assert!(summary["quality"]["lost_events"].as_u64().unwrap() >= dropped);
        dropped
    };
    // Thousands of threads, each its own key: a 1 KiB budget keeps a few dozen.
    assert!(lost("1KiB") > 0, "nothing dropped at 1 KiB");
    assert_eq!(lost("512MiB"), 0);
}

#[test]
fn a_target_killed_mid_run_still_gets_its_results() {
    let _serial = serial();
    if !have_root("a_target_killed_mid_run_still_gets_its_results") {
        return;
    }
    let target = Spawned::new(Command::new(program("cpu_split")).args(["30", "0"]));
    let dir = tempfile::tempdir().unwrap();
    let mut run = Spawned::new(
        profiler()
            .args(["attach", "-F", "199", "-o"])
            .arg(dir.path())
            .arg(target.pid().to_string()),
    );
    assert!(wait_for(Duration::from_secs(5), || {
        profiler_tests::loaded_profiler_programs().contains_key("cpu_sample")
    }));
    std::thread::sleep(Duration::from_millis(1500));
    target.signal(libc::SIGKILL);
    let status = run.0.wait().unwrap();
    assert!(status.success(), "{status}");
    let summary = read_summary(dir.path());
    assert_eq!(summary["stop_reason"], "target exited");
    assert!(summary["cpu"]["samples"].as_u64().unwrap() > 100);
    assert_nothing_loaded();
}

#[test]
fn a_reused_folder_holds_one_runs_results_and_no_partial_files() {
    let _serial = serial();
    if !have_root("a_reused_folder_holds_one_runs_results_and_no_partial_files") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let run = |events: &str| {
        let out = output(
            profiler()
                .args(["record", "-e", events, "-o"])
                .arg(dir.path())
                .args(["--"])
                .arg(program("cpu_split"))
                .args(["1", "0"]),
        );
        assert!(out.status.success());
    };
    run("cpu,offcpu");
    assert!(dir.path().join("offcpu.folded").exists());
    assert!(dir.path().join("wall.svg").exists());
    // What a run killed while writing leaves, and a file of the user's.
    std::fs::write(dir.path().join(".profiler-partial-99-0"), "half").unwrap();
    std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
    run("cpu");
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "cpu.folded",
            "cpu.svg",
            "notes.txt",
            "profile.json.gz",
            "profile.pb.gz",
            "report.html",
            "speedscope.json",
            "summary.json",
            "summary.md",
        ]
    );
}

#[test]
fn a_stop_while_loading_detaches_and_leaves_nothing() {
    let _serial = serial();
    if !have_root("a_stop_while_loading_detaches_and_leaves_nothing") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("run");
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let started = std::time::Instant::now();
        let mut profiling = Spawned::new(
            profiler()
                .args(["record", "-e", "cpu,offcpu,io,alloc", "-o"])
                .arg(&results)
                .args(["--"])
                .arg(program("cpu_split"))
                .args(["5", "0"])
                .stderr(std::process::Stdio::piped()),
        );
        // Loading every kind of program takes a second or more; the stop comes well before.
        std::thread::sleep(Duration::from_millis(100));
        profiling.signal(signal);
        let status = profiling.0.wait().unwrap();
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut profiling.0.stderr.take().unwrap(), &mut stderr)
            .unwrap();
        eprintln!("stopped after {:?}: {stderr}", started.elapsed());
        assert_eq!(status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("while the programs were loading; nothing was profiled"),
            "{stderr}"
        );
        assert!(!results.exists(), "no output folder");
        assert_nothing_loaded();
    }
}

#[test]
fn sigint_stops_a_run_that_inherited_it_ignored() {
    let _serial = serial();
    if !have_root("sigint_stops_a_run_that_inherited_it_ignored") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut command = profiler();
    command
        .args(["record", "-d", "60s", "-o"])
        .arg(dir.path())
        .args(["--", "sleep", "60"]);
    // As a shell starts a background job: SIGINT ignored.
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            libc::signal(libc::SIGINT, libc::SIG_IGN);
            Ok(())
        });
    }
    let mut profiling = Spawned::new(&mut command);
    assert!(wait_for(Duration::from_secs(20), || {
        !profiler_tests::loaded_profiler_programs().is_empty()
    }));
    std::thread::sleep(Duration::from_secs(1));
    profiling.signal(libc::SIGINT);
    assert!(
        wait_for(Duration::from_secs(20), || !profiling.is_running()),
        "stopped by SIGINT"
    );
    assert_eq!(
        read_summary(dir.path())["stop_reason"].as_str(),
        Some("interrupted (SIGINT)")
    );
    assert_nothing_loaded();
}

#[test]
fn a_target_that_exits_while_loading_is_an_error() {
    let _serial = serial();
    if !have_root("a_target_that_exits_while_loading_is_an_error") {
        return;
    }
    let mut target = Spawned::new(Command::new("sleep").arg("60"));
    let dir = tempfile::tempdir().unwrap();
    let mut profiling = Spawned::new(
        profiler()
            .args(["attach", "-e", "cpu,offcpu,io,alloc", "-o"])
            .arg(dir.path().join("run"))
            .arg(target.pid().to_string())
            .stderr(std::process::Stdio::piped()),
    );
    std::thread::sleep(Duration::from_millis(100));
    target.signal(libc::SIGKILL);
    let _ = target.0.wait();
    let status = profiling.0.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut profiling.0.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("nothing was profiled"), "{stderr}");
    assert!(!dir.path().join("run").exists());
    assert_nothing_loaded();
}

#[test]
fn a_program_on_a_mount_users_can_make_keeps_no_table_in_the_cache() {
    let _serial = serial();
    let test = "a_program_on_a_mount_users_can_make_keeps_no_table_in_the_cache";
    if !have_root(test) || !have_runtime(test, "bindfs") {
        return;
    }
    // A file on a mount a user can make may claim root as its owner: its build-id is not to
    // be trusted, and its table is not kept for other runs. Users mount their own file
    // systems `nosuid` (udisks, FUSE); a FUSE daemon answers reads as it likes whatever the
    // flags; in a user namespace of their own they mount what they like, an overlay over such
    // files too; a container's root writes files root owns. The same root-owned file on a
    // mount of the profiler's own namespace allowing setuid is kept.
    // Python's binary: an object with enough rows to be kept, which the profiler does not map
    // itself.
    let mount = tempfile::tempdir().unwrap();
    let mounted = Mounted::tmpfs(mount.path(), "nosuid,size=64m");
    let python = mount.path().join("python3");
    std::fs::copy("/usr/bin/python3", &python).unwrap();
    // On disk, a table is named by its object's build-id after a `b` (0x62).
    let python_table = format!("62{}.rows", build_id(&python));
    let busy = "import time\nend = time.time() + 1\nwhile time.time() < end: pass";
    let caches = tempfile::tempdir().unwrap();
    let kept_tables = |cache: &str, command: &[&OsStr]| -> Vec<String> {
        let cache = caches.path().join(cache);
        let out = output(
            profiler()
                .args(["record", "-e", "cpu", "--unwind-cache"])
                .arg(&cache)
                .arg("-o")
                .arg(cache.with_extension("out"))
                .arg("--")
                .args(command),
        );
        assert!(out.status.success(), "{out:?}");
        std::fs::read_dir(&cache)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".rows"))
            .collect()
    };
    let run_python = |python: &Path, cache: &str| {
        kept_tables(cache, &[python.as_os_str(), "-c".as_ref(), busy.as_ref()])
    };
    let on_nosuid = run_python(&python, "nosuid");
    let status = Command::new("mount")
        .args(["-o", "remount,suid"])
        .arg(mount.path())
        .status()
        .unwrap();
    assert!(status.success(), "remounting the tmpfs with suid");

    let fuse = tempfile::tempdir().unwrap();
    let served = Mounted::fuse(mount.path(), fuse.path());
    let on_fuse = run_python(&fuse.path().join("python3"), "fuse");
    drop(served);

    // An overlay over the suid tmpfs, mounted in a user and mount namespace of the command's
    // own (as any user may since Linux 5.11), its upper layer on a tmpfs there.
    let scratch = tempfile::tempdir().unwrap();
    let in_namespace = format!(
        "mount -t tmpfs tmpfs \"$1\" && mkdir \"$1/upper\" \"$1/work\" \"$1/merged\" && \
         mount -t overlay overlay -o \"lowerdir=$2,upperdir=$1/upper,workdir=$1/work\" \
         \"$1/merged\" && exec \"$1/merged/python3\" -c '{busy}'"
    );
    let on_overlay = kept_tables(
        "overlay",
        &[
            "unshare".as_ref(),
            "-Urm".as_ref(),
            "sh".as_ref(),
            "-c".as_ref(),
            in_namespace.as_ref(),
            "sh".as_ref(),
            scratch.path().as_os_str(),
            mount.path().as_os_str(),
        ],
    );

    // A mount namespace root made, as a container's: its root writes files root owns.
    let on_container = kept_tables(
        "container",
        &[
            "unshare".as_ref(),
            "-m".as_ref(),
            python.as_os_str(),
            "-c".as_ref(),
            busy.as_ref(),
        ],
    );

    let on_suid = run_python(&python, "suid");
    drop(mounted);
    assert!(
        on_suid.contains(&python_table),
        "Python's table {python_table} kept from root's suid mount: {on_suid:?}"
    );
    for (made_by_user, kept) in [
        ("a nosuid mount", &on_nosuid),
        ("FUSE", &on_fuse),
        ("an overlay in a user namespace", &on_overlay),
        ("another mount namespace", &on_container),
    ] {
        assert!(
            !kept.contains(&python_table),
            "Python's table {python_table} kept from {made_by_user}: {kept:?}"
        );
    }
    // The system's libraries, on root's own mounts, keep their tables whatever mount the
    // program came from. Which ones a run needs depends on where its samples fell; every
    // stack passes through libc's start-up code.
    let libc_table = format!(
        "62{}.rows",
        build_id(Path::new("/lib/x86_64-linux-gnu/libc.so.6"))
    );
    for (run, kept) in [("nosuid", &on_nosuid), ("suid", &on_suid)] {
        assert!(
            kept.contains(&libc_table),
            "libc's table {libc_table} kept from the {run} run: {kept:?}"
        );
    }
    assert_nothing_loaded();
}

#[test]
fn a_debug_link_to_a_fifo_does_not_hold_symbolization() {
    let _serial = serial();
    if !have_root("a_debug_link_to_a_fifo_does_not_hold_symbolization") {
        return;
    }
    // A user's program names a separate debug file (`.gnu_debuglink`) next to itself, which
    // is a FIFO: root opening it would wait for a writer forever. Symbolization reads such an
    // object from its symbol table, without following the link.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let busy = dir.path().join("busy");
    std::fs::copy(program("one_busy"), &busy).unwrap();
    let debug = dir.path().join("busy.debug");
    // objcopy takes the link's checksum from the file named, so that one exists first.
    std::fs::write(&debug, b"").unwrap();
    let linked = Command::new("objcopy")
        .arg("--add-gnu-debuglink=busy.debug")
        .arg(&busy)
        .current_dir(dir.path())
        .status()
        .unwrap();
    assert!(linked.success(), "objcopy --add-gnu-debuglink");
    std::fs::remove_file(&debug).unwrap();
    let fifo = std::ffi::CString::new(debug.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o666) }, 0, "mkfifo");
    let out_dir = dir.path().join("out");
    let run = Spawned::new(
        profiler()
            .args(["record", "-e", "cpu", "-o"])
            .arg(&out_dir)
            .arg("--")
            .arg(&busy)
            .arg("1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped()),
    );
    let out = run.wait_with_output(Duration::from_secs(60));
    assert!(
        out.status.success(),
        "the profiler did not finish (killed after 60 s if it waited on the FIFO): {out:?}"
    );
    let stacks = profiler_tests::read_folded(&out_dir.join("cpu.folded"));
    let crunch = profiler_tests::weight_with_frame(&stacks, "crunch");
    let total: u64 = stacks.iter().map(|(_, weight)| weight).sum();
    assert!(
        crunch * 2 > total,
        "crunch named from the symbol table in most samples: {crunch} of {total}"
    );
    assert_nothing_loaded();
}
