//! An unprivileged user against a profiler run through sudo: output paths raced and planted
//! with symlinks, hostile saved profiles for `report`, and bad durations. The sudo run is
//! simulated as sudo leaves it: root, with `SUDO_UID`/`SUDO_GID` naming the user (nobody).

use std::{
    io::Write as _,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use flate2::{Compression, write::GzEncoder};
use profiler_tests::{have_root, output, profiler, program, serial};

/// The unprivileged user of these tests.
const USER: u32 = 65534;

/// A profiler command as `sudo` would start it for `USER`.
fn as_sudo() -> Command {
    let mut command = profiler();
    command
        .env("SUDO_UID", USER.to_string())
        .env("SUDO_GID", USER.to_string());
    command
}

/// A command run as `USER`, with no capabilities.
fn as_user(program: &Path) -> Command {
    let mut command = Command::new("setpriv");
    command
        .args([
            format!("--reuid={USER}"),
            format!("--regid={USER}"),
            "--clear-groups".into(),
            "--inh-caps=-all".into(),
        ])
        .arg(program);
    command
}

/// A temporary folder anyone may enter (the user must reach their own folder inside it).
fn open_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// A folder owned by `USER`.
fn users_folder(path: &Path) {
    std::fs::create_dir_all(path).unwrap();
    std::os::unix::fs::chown(path, Some(USER), Some(USER)).unwrap();
}

/// A folder with a saved profile, for `diff` and `report`.
fn saved_profile(dir: &Path) -> PathBuf {
    let path = dir.join("saved");
    let out = output(
        profiler()
            .args(["synthesize", "--samples", "1000", "--stacks", "10", "-o"])
            .arg(&path),
    );
    assert!(out.status.success());
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        path.join("profile.json.gz"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    path
}

/// Every entry below `root` with its owner, mode and inode: a fingerprint to compare.
fn fingerprint(root: &Path) -> Vec<(PathBuf, u32, u32, u64)> {
    let mut entries = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        let metadata = std::fs::symlink_metadata(&path).unwrap();
        entries.push((
            path.clone(),
            metadata.uid(),
            metadata.mode(),
            metadata.ino(),
        ));
        if metadata.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                pending.push(entry.unwrap().path());
            }
        }
    }
    entries.sort();
    entries
}

/// A root-only folder in a system place, removed when dropped.
struct Victim(PathBuf);

impl Victim {
    fn new(parent: &str) -> Self {
        let path = Path::new(parent).join(format!("profiler-victim-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(path.join("existing")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        Victim(path)
    }
}

impl Drop for Victim {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_raced_path_component_never_leads_outside_the_users_folder() {
    let _serial = serial();
    if !have_root("a_raced_path_component_never_leads_outside_the_users_folder") {
        return;
    }
    let base = open_tempdir();
    let saved = saved_profile(base.path());
    let victim = Victim::new("/etc");
    let before = fingerprint(&victim.0);
    // The user's folder: `p` is a real folder of theirs, `q` a symlink into /etc; the
    // attacker exchanges the two names as fast as it can.
    let users = base.path().join("U");
    users_folder(&users);
    users_folder(&users.join("p"));
    let status = as_user(Path::new("/bin/ln"))
        .arg("-s")
        .arg(&victim.0)
        .arg(users.join("q"))
        .status()
        .unwrap();
    assert!(status.success());
    let mut attacker = profiler_tests::Spawned::new(
        as_user(&program("swap_paths"))
            .arg(users.join("p"))
            .arg(users.join("q"))
            .arg("60")
            .stdout(std::process::Stdio::piped()),
    );
    std::thread::sleep(Duration::from_millis(100));
    assert!(attacker.is_running(), "the attacker's loop runs");
    let (mut written, mut refused) = (0, 0);
    for run in 0..150 {
        // New folders, and a folder that exists in the victim (never to be given away).
        let target = if run % 3 == 0 {
            users.join("p/existing/out")
        } else {
            users.join(format!("p/victim{run}/x"))
        };
        let out = as_sudo()
            .args(["diff"])
            .arg(&saved)
            .arg(&saved)
            .arg("-o")
            .arg(&target)
            .output()
            .unwrap();
        if out.status.success() {
            written += 1;
        } else {
            refused += 1;
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!stderr.contains("panicked"), "{stderr}");
        }
    }
    attacker.signal(libc::SIGKILL);
    eprintln!("{written} runs wrote, {refused} were refused");
    assert_eq!(
        fingerprint(&victim.0),
        before,
        "nothing created, changed or given away under {}",
        victim.0.display()
    );
    assert!(written > 0, "runs that found the real folder wrote to it");
    // What was written is the user's, in their folder.
    let real = if std::fs::symlink_metadata(users.join("p")).unwrap().is_dir() {
        users.join("p")
    } else {
        users.join("q")
    };
    for (path, uid, ..) in fingerprint(&real) {
        assert_eq!(uid, USER, "{} belongs to the user", path.display());
    }
}

#[test]
fn planted_symlinks_into_places_the_user_cannot_write_are_refused() {
    let _serial = serial();
    if !have_root("planted_symlinks_into_places_the_user_cannot_write_are_refused") {
        return;
    }
    let base = open_tempdir();
    let saved = saved_profile(base.path());
    let users = base.path().join("U");
    users_folder(&users);
    let root_home = Victim::new("/root");
    // Another user's home: theirs, readable, not writable by others.
    let other_home = base.path().join("home-other");
    std::fs::create_dir(&other_home).unwrap();
    std::os::unix::fs::chown(&other_home, Some(12345), Some(12345)).unwrap();
    std::fs::set_permissions(&other_home, std::fs::Permissions::from_mode(0o755)).unwrap();
    let before = (fingerprint(&root_home.0), fingerprint(&other_home));
    for (name, target) in [("to-root", &root_home.0), ("to-other", &other_home)] {
        let status = as_user(Path::new("/bin/ln"))
            .arg("-s")
            .arg(target)
            .arg(users.join(name))
            .status()
            .unwrap();
        assert!(status.success());
        let out = output(
            as_sudo()
                .arg("diff")
                .arg(&saved)
                .arg(&saved)
                .arg("-o")
                .arg(users.join(name).join("results")),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("Permission denied") && stderr.contains("the user who ran sudo"),
            "{stderr}"
        );
    }
    // The default folder, `benchmarks` in the working directory, planted the same way.
    let status = as_user(Path::new("/bin/ln"))
        .arg("-s")
        .arg(&root_home.0)
        .arg(users.join("benchmarks"))
        .status()
        .unwrap();
    assert!(status.success());
    let out = output(
        as_sudo()
            .current_dir(&users)
            .arg("diff")
            .arg(&saved)
            .arg(&saved),
    );
    assert_eq!(out.status.code(), Some(1));
    // A link someone else planted is not followed at all, even for root itself.
    let foreign = base.path().join("foreign");
    std::os::unix::fs::symlink(&other_home, &foreign).unwrap();
    std::os::unix::fs::lchown(&foreign, Some(12345), Some(12345)).unwrap();
    let out = output(
        profiler()
            .arg("diff")
            .arg(&saved)
            .arg(&saved)
            .arg("-o")
            .arg(foreign.join("results")),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("owned by uid 12345"), "{stderr}");
    assert_eq!(
        (fingerprint(&root_home.0), fingerprint(&other_home)),
        before
    );
    // A folder the user cannot write is refused before anything runs, not after.
    let out = output(
        as_sudo()
            .args(["record", "-o"])
            .arg(root_home.0.join("new"))
            .args(["--", "true"]),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(!root_home.0.join("new").exists());
}

/// Writes a gzip file of `parts` in order, each repeated its count of times.
fn gzip(path: &Path, parts: &[(&[u8], usize)]) {
    let file = std::fs::File::create(path).unwrap();
    let mut encoder = GzEncoder::new(std::io::BufWriter::new(file), Compression::fast());
    for &(bytes, times) in parts {
        let chunk = bytes.repeat((65536 / bytes.len().max(1)).max(1));
        let per_chunk = chunk.len() / bytes.len().max(1);
        let mut left = times;
        while left > 0 {
            let now = left.min(per_chunk);
            encoder.write_all(&chunk[..now * bytes.len()]).unwrap();
            left -= now;
        }
    }
    encoder.finish().unwrap();
}

/// Runs `command` to its end; returns its exit code, peak RSS in bytes and wall time.
fn measured(command: &mut Command) -> (Option<i32>, u64, Duration, String) {
    let started = Instant::now();
    #[expect(
        clippy::zombie_processes,
        reason = "reaped by wait4 below, which also gives the peak RSS"
    )]
    let child = command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let mut stderr = child.stderr.unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let mut status = 0;
    // SAFETY: `rusage` is written by the call; our own child, reaped here.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(reaped, pid);
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    (
        code,
        usage.ru_maxrss as u64 * 1024,
        started.elapsed(),
        reader.join().unwrap(),
    )
}

/// The start of a valid saved profile, up to and including `"stacks":[`.
const HEAD: &[u8] = br#"{"format_version":1,"run":{"target":"t","command":["t"],"root_pids":[1],"follow_children":false,"start_unix_ms":0,"duration_secs":1.0,"frequency_hz":99,"min_block_us":1,"events":["cpu"],"alloc_sample_bytes":0,"stop_reason":"x","exit_code":null,"attach_ms":null,"first_sample_ms":null,"unwind":null,"kernel":"","profiler_version":"0"},"processes":[],"frames":[{"function":"f","module":null,"file":null,"line":null,"kind":"user","inlined":false,"unsymbolized":false}],"stacks":["#;

/// A name, the parts of the file (bytes, repeated so many times), and what the error says.
type Bomb = (&'static str, Vec<(&'static [u8], usize)>, &'static str);

#[test]
fn hostile_saved_profiles_end_in_seconds_within_a_gibibyte() {
    let _serial = serial();
    if !have_root("hostile_saved_profiles_end_in_seconds_within_a_gibibyte") {
        return;
    }
    let dir = open_tempdir();
    let sample = br#"{"pid":1,"tid":1,"thread":"t","stack":0,"weight":18446744073709551000},"#;
    let row = br#"{"time_secs":1.0,"heap_live_bytes":1,"rss_bytes":1,"alloc_bytes_per_sec":1.0},"#;
    let tail: &[u8] = br#"[0]],"samples":{"cpu":[]},"losses":{"user_stack_collisions":0,"kernel_stack_collisions":0,"user_stack_errors":0,"kernel_stack_errors":0,"sample_map_full":0,"process_events_lost":0,"target_map_full":0,"offcpu_filtered":0,"offcpu_filtered_us":0,"offcpu_map_full":0,"offcpu_stack_collisions":0,"io_calls":0,"io_map_full":0,"open_events_lost":0,"block_pending_full":0,"alloc_calls":0,"live_map_full":0,"alloc_sites_full":0}}"#;
    // One 10 000-byte name on a 100 000-frame stack: a kilobyte of file, a gigabyte of text.
    let name_at = HEAD
        .windows(12)
        .position(|w| w == br#""function":""#)
        .unwrap()
        + 12;
    let (before_name, after_name) = (&HEAD[..name_at], &HEAD[name_at + 1..]);
    let bombs: Vec<Bomb> = vec![
        (
            "render-size",
            vec![
                (before_name, 1),
                (b"f", 10_000),
                (after_name, 1),
                (b"[", 1),
                (b"0,", 100_000),
                (br#"0]],"samples":{"cpu":[{"pid":1,"tid":1,"thread":"t","stack":0,"weight":1}]},"losses":{"user_stack_collisions":0,"kernel_stack_collisions":0,"user_stack_errors":0,"kernel_stack_errors":0,"sample_map_full":0,"process_events_lost":0,"target_map_full":0,"offcpu_filtered":0,"offcpu_filtered_us":0,"offcpu_map_full":0,"offcpu_stack_collisions":0,"io_calls":0,"io_map_full":0,"open_events_lost":0,"block_pending_full":0,"alloc_calls":0,"live_map_full":0,"alloc_sites_full":0}}"#, 1),
            ],
            "would render",
        ),
        // 300 MB of `[],` in the stacks: 24 bytes each in memory, 3 in the file.
        ("empty-stacks", vec![(HEAD, 1), (b"[],", 100_000_000), (tail, 1)], "MiB of memory"),
        ("whitespace", vec![(HEAD, 1), (b" ", 1 << 30), (tail, 1)], "decompressed"),
        ("nesting", vec![(b"{\"x\":", 1), (b"[", 10_000_000)], "not a valid"),
        ("long-number", vec![(HEAD, 1), (b"[1", 1), (b"9", 50_000_000)], "not a valid"),
        (
            "long-string",
            vec![(b"{\"run\":{\"target\":\"", 1), (b"x", 500 << 20), (b"\"}}", 1)],
            "a string of",
        ),
        (
            "many-frames",
            vec![
                (&HEAD[..HEAD.len() - br#"}],"stacks":["#.len()], 1),
                (br#"},{"function":"","module":null,"file":null,"line":null,"kind":"user","inlined":false,"unsymbolized":false"#, 4_000_000),
                (br#"}],"stacks":["#, 1),
                (tail, 1),
            ],
            "MiB of memory",
        ),
        // Weights near u64::MAX: sums would wrap and show every function at 100%.
        (
            "huge-weights",
            vec![
                (HEAD, 1),
                (br#"[0]],"samples":{"cpu":["#, 1),
                (sample, 3),
                (br#"{"pid":1,"tid":1,"thread":"t","stack":0,"weight":1}]},"losses":{"user_stack_collisions":0,"kernel_stack_collisions":0,"user_stack_errors":0,"kernel_stack_errors":0,"sample_map_full":0,"process_events_lost":0,"target_map_full":0,"offcpu_filtered":0,"offcpu_filtered_us":0,"offcpu_map_full":0,"offcpu_stack_collisions":0,"io_calls":0,"io_map_full":0,"open_events_lost":0,"block_pending_full":0,"alloc_calls":0,"live_map_full":0,"alloc_sites_full":0}}"#, 1),
            ],
            "total past",
        ),
    ];
    for (name, parts, expected) in bombs {
        let folder = dir.path().join(name);
        std::fs::create_dir(&folder).unwrap();
        gzip(&folder.join("profile.json.gz"), &parts);
        let (code, rss, took, stderr) = measured(profiler().arg("report").arg(&folder));
        eprintln!(
            "{name}: {} KiB compressed, exit {code:?}, peak RSS {} MiB, {:.2} s",
            std::fs::metadata(folder.join("profile.json.gz"))
                .unwrap()
                .len()
                >> 10,
            rss >> 20,
            took.as_secs_f64()
        );
        assert_eq!(code, Some(1), "{name}: {stderr}");
        assert!(stderr.contains(expected), "{name}: {stderr}");
        assert!(rss < 1 << 30, "{name}: peak RSS {} MiB", rss >> 20);
        // A bound on runaway work (the runs above take a few seconds), not a benchmark.
        assert!(took < Duration::from_secs(30), "{name}: {took:?}");
        assert_eq!(
            std::fs::read_dir(&folder).unwrap().count(),
            1,
            "{name}: nothing written"
        );
    }

    // A valid profile with a two-million-row memory timeline (55 hours at ten rows a second)
    // renders, its chart from at most two points per pixel column.
    let folder = dir.path().join("long-timeline");
    std::fs::create_dir(&folder).unwrap();
    gzip(
        &folder.join("profile.json.gz"),
        &[
            (HEAD, 1),
            (br#"[0]],"samples":{"alloc":[],"inuse":[]},"losses":{"user_stack_collisions":0,"kernel_stack_collisions":0,"user_stack_errors":0,"kernel_stack_errors":0,"sample_map_full":0,"process_events_lost":0,"target_map_full":0,"offcpu_filtered":0,"offcpu_filtered_us":0,"offcpu_map_full":0,"offcpu_stack_collisions":0,"io_calls":0,"io_map_full":0,"open_events_lost":0,"block_pending_full":0,"alloc_calls":0,"live_map_full":0,"alloc_sites_full":0},"memory":{"sample_bytes":0,"leak_age_secs":1.0,"sites":[],"mappings":{"mmap_count":0,"mmap_bytes":0,"munmap_count":0,"munmap_bytes":0,"brk_count":0,"brk_bytes":0},"probed":[],"timeline":["#, 1),
            (row, 1_999_999),
            (&row[..row.len() - 1], 1),
            (b"]}}", 1),
        ],
    );
    let (code, rss, took, stderr) = measured(profiler().arg("report").arg(&folder));
    eprintln!(
        "long-timeline: exit {code:?}, peak RSS {} MiB, {:.2} s",
        rss >> 20,
        took.as_secs_f64()
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(rss < 1 << 30, "peak RSS {} MiB", rss >> 20);
    let svg = std::fs::read_to_string(folder.join("memory-timeline.svg")).unwrap();
    assert!(svg.len() < 1 << 20, "{} bytes of chart", svg.len());
}

#[test]
fn report_reads_with_the_users_rights_and_never_blocks_on_a_fifo() {
    let _serial = serial();
    if !have_root("report_reads_with_the_users_rights_and_never_blocks_on_a_fifo") {
        return;
    }
    let base = open_tempdir();
    let saved = saved_profile(base.path());
    let secret = base.path().join("secret");
    std::fs::create_dir(&secret).unwrap();
    std::fs::copy(
        saved.join("profile.json.gz"),
        secret.join("profile.json.gz"),
    )
    .unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o700)).unwrap();
    let users = base.path().join("U");
    users_folder(&users);
    let out = output(
        as_sudo()
            .arg("diff")
            .arg(&secret)
            .arg(&saved)
            .arg("-o")
            .arg(users.join("d")),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("Permission denied"), "{stderr}");
    let fifo = users.join("fifo");
    std::fs::create_dir(&fifo).unwrap();
    let path = std::ffi::CString::new(
        fifo.join("profile.json.gz")
            .into_os_string()
            .into_encoded_bytes(),
    )
    .unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o666) }, 0);
    let (code, _, took, stderr) = measured(profiler().arg("report").arg(&fifo));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("not a regular file"), "{stderr}");
    assert!(took < Duration::from_secs(30));
}

#[test]
fn durations_past_a_year_are_usage_errors() {
    for duration in ["100000000000000000000", "9223372036854775807", "400d"] {
        let out = output(profiler().args(["record", "-d", duration, "--", "true"]));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{duration}: {stderr}");
        assert!(stderr.contains("longer than a year"), "{stderr}");
    }
}
