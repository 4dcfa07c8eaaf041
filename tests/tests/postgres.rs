//! A real server under load: PostgreSQL (Debian's `postgresql` package) started in a
//! temporary folder as its own user, `pgbench -c 8` against it, the profiler attached to the
//! postmaster and its backends. The verdict must tell the story a DBA would: commits wait for
//! the WAL flush (`XLogFlush`, fdatasync on `pg_wal/`), lock waits are named by PostgreSQL's
//! own functions, and backends waiting for their clients are idle, not the bottleneck.

use std::{os::unix::process::CommandExt as _, path::PathBuf, process::Command};

use profiler_tests::{assert_nothing_loaded, have_root, output, profiler, read_summary, serial};

/// The newest installed PostgreSQL's programs (`/usr/lib/postgresql/N/bin`). Panics under
/// `CI=true` when there is none (`cargo xtask test` installs it), else returns `None` to skip.
fn postgres_bin(test: &str) -> Option<PathBuf> {
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("pgbench").exists().then_some((version, bin))
        })
        .max();
    if let Some((_, bin)) = newest {
        return Some(bin);
    }
    if std::env::var("CI").is_ok_and(|ci| ci == "true") {
        panic!("{test}: needs PostgreSQL (Debian's postgresql), and CI=true forbids skipping");
    }
    eprintln!("skipping {test}: needs PostgreSQL (apt install postgresql)");
    None
}

/// The `postgres` account the package creates: (uid, gid).
fn postgres_user() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let line = passwd
        .lines()
        .find(|line| line.starts_with("postgres:"))
        .expect("the postgresql package creates the postgres user");
    let fields: Vec<&str> = line.split(':').collect();
    (fields[2].parse().unwrap(), fields[3].parse().unwrap())
}

/// A cluster in a temporary folder, stopped when dropped.
struct Cluster {
    bin: PathBuf,
    root: tempfile::TempDir,
    user: (u32, u32),
    port: u16,
}

impl Cluster {
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        command
            .uid(self.user.0)
            .gid(self.user.1)
            .current_dir(self.root.path())
            .env_remove("PGDATA");
        command
    }

    fn data(&self) -> PathBuf {
        self.root.path().join("data")
    }

    fn socket_dir(&self) -> PathBuf {
        self.root.path().join("socket")
    }

    /// initdb and start, listening only on a socket in the folder.
    fn start(bin: PathBuf) -> Self {
        // On the build's file system: fdatasync must reach a device (a tmpfs flush is free).
        let root = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let user = postgres_user();
        std::os::unix::fs::chown(root.path(), Some(user.0), Some(user.1)).unwrap();
        let cluster = Cluster {
            bin,
            root,
            user,
            port: 54000 + (std::process::id() % 1000) as u16,
        };
        std::fs::create_dir(cluster.socket_dir()).unwrap();
        std::os::unix::fs::chown(cluster.socket_dir(), Some(user.0), Some(user.1)).unwrap();
        let ok = |command: &mut Command| {
            let out = output(command);
            assert!(out.status.success(), "{command:?}: {out:?}");
        };
        ok(cluster
            .command("initdb")
            .args(["-A", "trust", "-U", "postgres", "-D"])
            .arg(cluster.data()));
        let options = format!(
            "-k {} -p {} -c listen_addresses=''",
            cluster.socket_dir().display(),
            cluster.port
        );
        ok(cluster
            .command("pg_ctl")
            .arg("-D")
            .arg(cluster.data())
            .args(["-o", &options, "-l"])
            .arg(cluster.root.path().join("log"))
            .args(["-w", "start"]));
        ok(cluster.pgbench().args(["-i", "-q", "-s", "2", "postgres"]));
        cluster
    }

    fn pgbench(&self) -> Command {
        let mut command = self.command("pgbench");
        command
            .arg("-h")
            .arg(self.socket_dir())
            .args(["-p", &self.port.to_string()]);
        command
    }

    fn postmaster_pid(&self) -> u32 {
        std::fs::read_to_string(self.data().join("postmaster.pid"))
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

fn finding<'a>(verdict: &'a [serde_json::Value], kind: &str) -> Option<&'a serde_json::Value> {
    verdict.iter().find(|finding| finding["kind"] == kind)
}

#[test]
fn pgbench_verdict_names_the_wal_flush_and_postgres_lock_waits() {
    let _serial = serial();
    let test = "pgbench_verdict_names_the_wal_flush_and_postgres_lock_waits";
    if !have_root(test) {
        return;
    }
    let Some(bin) = postgres_bin(test) else {
        return;
    };
    let cluster = Cluster::start(bin);
    let mut load = cluster
        .pgbench()
        .args(["-c", "8", "-j", "2", "-T", "14", "postgres"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The clients are connected (a backend each) before the profiler attaches.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let out_dir = tempfile::tempdir().unwrap();
    let out = output(
        profiler()
            .args([
                "attach",
                "--children",
                "-e",
                "cpu,offcpu,io",
                "-d",
                "8s",
                "-o",
            ])
            .arg(out_dir.path())
            .arg(cluster.postmaster_pid().to_string()),
    );
    assert!(out.status.success(), "{out:?}");
    let _ = load.wait();
    drop(cluster);

    let summary = read_summary(out_dir.path());
    let verdict = summary["verdict"].as_array().unwrap();
    let texts: Vec<&str> = verdict
        .iter()
        .map(|f| f["text"].as_str().unwrap())
        .collect();
    // Commits wait for the WAL: an I/O finding through XLogFlush, on a pg_wal file.
    let io = finding(verdict, "io").unwrap_or_else(|| panic!("no I/O finding: {texts:#?}"));
    let io_text = io["text"].as_str().unwrap();
    assert!(
        io_text.contains("XLogFlush") && io_text.contains("/pg_wal/"),
        "{io_text}"
    );
    // Backends waiting for their clients and background processes waiting on their latch
    // are idle: said, but never first.
    assert_ne!(verdict[0]["kind"], "idle", "{texts:#?}");
    assert_ne!(verdict[0]["kind"], "blocked", "{texts:#?}");
    assert_eq!(verdict.last().unwrap()["kind"], "idle", "{texts:#?}");
    // Lock waits are named by PostgreSQL's functions, past the C library's futex wrappers.
    let stacks = summary["offcpu"]["top_stacks"].as_array().unwrap();
    let locks: Vec<&serde_json::Value> = stacks.iter().filter(|s| s["reason"] == "lock").collect();
    assert!(!locks.is_empty(), "no lock wait in {stacks:#?}");
    for lock in &locks {
        let function = lock["function"].as_str().unwrap_or_default();
        assert!(
            !function.starts_with("__") && !function.contains("futex"),
            "a lock wait named by the C library: {lock}"
        );
    }
    assert!(
        locks.iter().any(|lock| {
            [
                "PGSemaphoreLock",
                "LWLockAcquire",
                "ProcSleep",
                "WaitOnLock",
            ]
            .iter()
            .any(|name| lock["function"] == *name || lock["caller"] == *name)
        }),
        "lock waits: {locks:#?}"
    );
    // The WAL flush's wait is I/O in the off-CPU reasons too (fdatasync under io_schedule*).
    assert!(
        stacks
            .iter()
            .any(|s| s["function"] == "XLogFlush" && s["reason"] == "io"),
        "{stacks:#?}"
    );
    assert_nothing_loaded();
}
