//! `vm-test`: the integration tests that cover each event kind, run inside Debian's own
//! kernels. Each kernel package is fetched from Debian's repositories and unpacked here (never
//! installed on the host), then booted under qemu with an initramfs of busybox, the release
//! `profiler`, the test binaries and the test programs; the tests print to the serial console,
//! which is read back. This machine has no hardware virtualisation: qemu emulates (TCG), so
//! the in-VM run is kept to a few checks that cover every event kind and both unwinders.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{cargo, profiler_bin, root, run};

#[derive(clap::Args)]
pub struct VmTestArgs {
    /// Kernel series to boot, from Debian's packages: 6.1 and 6.12 (Debian 12), 7 (the newest
    /// of Debian 13's backports). Repeat for several.
    #[arg(long = "kernel", default_values = KERNEL_SERIES)]
    kernels: Vec<String>,
    /// Longest one kernel's run may take, seconds.
    #[arg(long, default_value_t = 900)]
    timeout: u64,
}

impl VmTestArgs {
    /// Every kernel series, as `cargo xtask test` runs them.
    pub fn every_kernel() -> Self {
        VmTestArgs {
            kernels: KERNEL_SERIES
                .iter()
                .map(|series| series.to_string())
                .collect(),
            timeout: 900,
        }
    }
}

/// What `profiler check` says of the stack walker on kernel `series`: inlined before 6.13,
/// which gives BPF programs no private stacks; one function after.
fn expected_walker(series: &str) -> &'static str {
    if series.starts_with("6.") {
        "inlined into each program"
    } else {
        "one function"
    }
}

/// The Debian kernel series tested.
const KERNEL_SERIES: [&str; 3] = ["6.1", "6.12", "7"];

/// The checks run in every kernel: `(test binary, test)`, after `profiler check`. Each test
/// asserts what the profiler reports of a program with known behaviour and that nothing stays
/// loaded after it (read with the kernel's program list, not bpftool).
const CHECKS: &[(&str, &str)] = &[
    ("cpu", "record_splits_cpu_70_30_under_a_common_caller"),
    (
        "cpu",
        "frame_pointer_unwinding_splits_cpu_70_30_under_a_common_caller",
    ),
    (
        "cpu",
        "attach_profiles_a_running_process_for_a_duration_and_leaves_it_running",
    ),
    ("unwind", "leaf_function_keeps_its_caller"),
    (
        "unwind",
        "a_library_of_three_million_rows_is_walked_whole_at_default_settings",
    ),
    (
        "offcpu",
        "blocked_time_splits_between_sleep_and_pipe_and_adds_up_to_wall_time",
    ),
    ("offcpu", "sampled_offcpu_stacks_keep_shares_and_totals"),
    // Both run-queue paths: the kernel's `sched_info`, and the wakeup program.
    (
        "offcpu",
        "run_queue_delay_is_reported_when_threads_outnumber_cpus",
    ),
    (
        "io",
        "file_io_is_counted_exactly_per_path_and_fsync_dominates",
    ),
    (
        "alloc",
        "leaks_are_exact_churn_is_freed_and_every_allocator_counts",
    ),
];

/// What the console shows around each check's result.
const RESULT_MARK: &str = "VMTEST RESULT ";
const KERNEL_MARK: &str = "VMTEST KERNEL ";

pub fn vm_test(args: &VmTestArgs) -> anyhow::Result<()> {
    if !crate::is_root() {
        bail!("vm-test fetches and unpacks kernel packages with apt-get: run it as root");
    }
    crate::setup::install_vm_tools()?;
    crate::build()?;
    let built = build_tests()?;
    let work = root().join("target/vm-test");
    let initramfs = build_initramfs(&work, &built)?;
    let mut failed = Vec::new();
    for series in &args.kernels {
        let started = Instant::now();
        let kernel = fetch_kernel(&work.join("kernels"), series)?;
        let log = work.join(format!("console-{series}.log"));
        let vm = Vm {
            initramfs: with_modules(&initramfs, &kernel, &work.join(format!("{series}.cpio")))?,
            disk: ext4_disk(&work.join(format!("disk-{series}.img")))?,
            kernel,
        };
        let results = boot(&vm, &log, Duration::from_secs(args.timeout))?;
        let name = results.kernel.as_deref().unwrap_or("(did not boot)");
        println!(
            "vm-test: Linux {name} ({series}), {:.0} s, console in {}",
            started.elapsed().as_secs_f64(),
            log.display()
        );
        // Which stack walker the loader chose, against what the series should take: a kernel
        // whose probe was refused for another cause would pass every test with the inlined
        // one, and the walker as one function would go untested.
        let walker = expected_walker(series);
        let walker_chosen = results.output_of("check").is_some_and(|output| {
            output
                .lines()
                .any(|line| line.contains("stack walker") && line.contains(walker))
        });
        println!(
            "{:<5} {series:<5} stack walker: {walker}",
            if walker_chosen { "PASS" } else { "FAIL" }
        );
        if !walker_chosen {
            failed.push(format!("{series} stack walker"));
        }
        for check in std::iter::once("check").chain(CHECKS.iter().map(|(_, test)| *test)) {
            let verdict = match results.checks.iter().find(|(name, _)| name == check) {
                Some((_, true)) => "PASS",
                Some((_, false)) => "FAIL",
                None => "FAIL (no result: the VM stopped or timed out first)",
            };
            println!("{verdict:<5} {series:<5} {check}");
            if !verdict.starts_with("PASS") {
                failed.push(format!("{series} {check}"));
                // CI keeps the job's output, not target/: the failing test's own words go there.
                if let Some(output) = results.output_of(check) {
                    eprintln!("--- {series} {check}: what the test printed ---\n{output}\n---");
                }
            }
        }
    }
    if !failed.is_empty() {
        bail!(
            "vm-test: {} failed: {} (each kernel's console log under target/vm-test has the \
             test output)",
            failed.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

/// The test binaries the checks need, and the folder of compiled test programs.
struct BuiltTests {
    binaries: Vec<(String, PathBuf)>,
    programs: PathBuf,
}

/// Builds the integration tests (not run) and finds their executables in cargo's messages.
fn build_tests() -> anyhow::Result<BuiltTests> {
    let output = cargo()
        .args([
            "test",
            "--release",
            "--package",
            "profiler-tests",
            "--no-run",
            "--message-format=json",
        ])
        .current_dir(root())
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run cargo test --no-run")?;
    if !output.status.success() {
        bail!("building the integration tests failed");
    }
    let mut binaries = Vec::new();
    let mut programs = None;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let from_tests = message["package_id"]
            .as_str()
            .is_some_and(|id| id.contains("profiler-tests") || id.contains("/tests#"));
        match message["reason"].as_str() {
            Some("build-script-executed") if from_tests => {
                programs = message["out_dir"].as_str().map(PathBuf::from);
            }
            Some("compiler-artifact") => {
                let name = message["target"]["name"].as_str().unwrap_or_default();
                let is_test = message["target"]["kind"]
                    .as_array()
                    .is_some_and(|kinds| kinds.iter().any(|kind| kind == "test"));
                if let (true, Some(executable)) = (is_test, message["executable"].as_str())
                    && CHECKS.iter().any(|(binary, _)| *binary == name)
                {
                    binaries.push((name.to_owned(), PathBuf::from(executable)));
                }
            }
            _ => {}
        }
    }
    let programs = programs.context("cargo did not report the test programs' folder")?;
    for (binary, _) in CHECKS {
        if !binaries.iter().any(|(name, _)| name == binary) {
            bail!("cargo did not report the `{binary}` test binary");
        }
    }
    Ok(BuiltTests { binaries, programs })
}

/// An initramfs holding busybox, the profiler, the test binaries and programs (at the paths
/// they were built with: the tests find them there) and every shared library they load.
fn build_initramfs(work: &Path, built: &BuiltTests) -> anyhow::Result<PathBuf> {
    let tree = work.join("root");
    if tree.exists() {
        std::fs::remove_dir_all(&tree)?;
    }
    for dir in ["bin", "proc", "sys", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(tree.join(dir))?;
    }
    let mut files = vec![PathBuf::from(BUSYBOX), PathBuf::from(DASH), profiler_bin()];
    files.extend(built.binaries.iter().map(|(_, path)| path.clone()));
    for entry in std::fs::read_dir(&built.programs)? {
        let path = entry?.path();
        if path.is_file() {
            files.push(path);
        }
    }
    let mut libraries = Vec::new();
    for file in &files {
        copy_into(&tree, file)?;
        libraries.extend(shared_libraries(file)?);
    }
    libraries.sort();
    libraries.dedup();
    for library in &libraries {
        copy_into(&tree, library)?;
    }
    // The host's detached debug symbols of those objects (Debian's libc6-dbg, when installed):
    // without them the dynamic loader's `_start` has no name, and a stack that ends there
    // looks cut short.
    for object in files.iter().chain(&libraries) {
        if let Some(debug) = detached_debug_file(object)
            && debug.exists()
        {
            copy_into(&tree, &debug)?;
        }
    }
    // The tests' scratch folder (`CARGO_TARGET_TMPDIR`), compiled into them.
    std::fs::create_dir_all(tree.join(root().join("target/tmp").strip_prefix("/")?))?;
    // Debian's own shell, as on the host: the tests' `sh -c` loops start dynamically linked
    // programs from a dynamically linked shell, whose loader and libc the profiler prepares
    // before the command starts (busybox is static).
    std::os::unix::fs::symlink("dash", tree.join("bin/sh"))?;
    let init = tree.join("init");
    std::fs::write(&init, init_script(built))?;
    std::fs::set_permissions(&init, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let initramfs = work.join("initramfs.cpio");
    let archive = std::fs::File::create(&initramfs)?;
    run_in(
        &tree,
        Command::new("sh")
            .args([
                "-c",
                &format!("find . | {BUSYBOX} cpio -o -H newc 2>/dev/null"),
            ])
            .stdout(archive),
    )?;
    Ok(initramfs)
}

/// Runs a command in `dir` (`crate::run` runs in the workspace), failing if it fails.
fn run_in(dir: &Path, command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .current_dir(dir)
        .status()
        .with_context(|| format!("cannot run {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed with {status}");
    }
    Ok(())
}

/// Debian's static busybox (package busybox-static).
const BUSYBOX: &str = "/bin/busybox";
/// Debian's `/bin/sh`.
const DASH: &str = "/bin/dash";

/// Copies `file` into `tree` at its own absolute path, following symbolic links.
fn copy_into(tree: &Path, file: &Path) -> anyhow::Result<()> {
    let target = tree.join(file.strip_prefix("/").context("absolute path")?);
    std::fs::create_dir_all(target.parent().context("a file has a folder")?)?;
    std::fs::copy(file, &target).with_context(|| format!("cannot copy {}", file.display()))?;
    Ok(())
}

/// Where Debian keeps the detached debug symbols of `object`, by its build id
/// (`/usr/lib/debug/.build-id/xx/yyyy.debug`).
fn detached_debug_file(object: &Path) -> Option<PathBuf> {
    let notes = Command::new("readelf")
        .arg("-n")
        .arg(object)
        .output()
        .ok()?;
    let notes = String::from_utf8_lossy(&notes.stdout);
    let id = notes
        .lines()
        .find_map(|line| line.trim().strip_prefix("Build ID: "))?
        .trim();
    (id.len() > 2 && id.is_ascii()).then(|| {
        PathBuf::from(format!(
            "/usr/lib/debug/.build-id/{}/{}.debug",
            &id[..2],
            &id[2..]
        ))
    })
}

/// The shared libraries (and dynamic loader) an ELF file loads, by `ldd`; none for other files
/// and static programs.
fn shared_libraries(file: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut magic = [0u8; 4];
    let is_elf = std::fs::File::open(file)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok()
        && magic == *b"\x7fELF";
    if !is_elf {
        return Ok(Vec::new());
    }
    let output = Command::new("ldd").arg(file).output()?;
    Ok(String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .filter(|word| word.starts_with('/'))
        .map(PathBuf::from)
        .collect())
}

/// The VM's `/init`: mounts what the profiler reads, runs `profiler check` and each test,
/// printing a result line after each, and powers off.
fn init_script(built: &BuiltTests) -> String {
    // `/tmp` stays the initramfs's own, writable: a tmpfs mounted over it would hide a
    // workspace that lives under `/tmp`.
    let mut script = String::from(
        "#!/bin/sh\n\
         export PATH=/bin\n\
         for applet in mount uname poweroff cat insmod seq; do /bin/busybox ln -s busybox /bin/$applet; done\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sysfs /sys\n\
         mount -t devtmpfs dev /dev\n\
         mount -t tracefs tracefs /sys/kernel/tracing\n\
         mount -t debugfs debugfs /sys/kernel/debug\n\
         for module in $(cat /modules/order); do insmod /modules/$module; done\n",
    );
    // The tests' scratch folder (`CARGO_TARGET_TMPDIR`) on the disk.
    let _ = writeln!(
        script,
        "mount -t ext4 /dev/vda {}",
        root().join("target/tmp").display()
    );
    let profiler = profiler_bin();
    let _ = writeln!(script, "echo \"{KERNEL_MARK}$(uname -r)\"");
    // As in CI: a test that cannot run fails rather than skips.
    let _ = writeln!(script, "export CI=true PROFILER_BIN={}", profiler.display());
    let _ = writeln!(script, "{} check", profiler.display());
    let _ = writeln!(script, "echo \"{RESULT_MARK}check $?\"");
    for (binary, test) in CHECKS {
        let executable = built
            .binaries
            .iter()
            .find(|(name, _)| name == binary)
            .map(|(_, path)| path.display().to_string())
            .unwrap_or_default();
        // What each test measured goes to the console, printed again when it fails.
        let _ = writeln!(
            script,
            "{executable} --exact {test} --test-threads 1 --nocapture\necho \"{RESULT_MARK}{test} $?\""
        );
    }
    script.push_str("poweroff -f\n");
    script
}

/// The newest Debian kernel package of `series`, its `vmlinuz` unpacked under `cache`
/// (downloaded once).
fn fetch_kernel(cache: &Path, series: &str) -> anyhow::Result<PathBuf> {
    let (pattern, suite) = match series {
        "6.1" => (r"^linux-image-6\.1\.0-[0-9]+-amd64$", None),
        "6.12" => (r"^linux-image-6\.12\.[0-9]+\+deb12-amd64$", None),
        "7" => (
            r"^linux-image-7\.[0-9]+\.[0-9]+\+deb13-amd64$",
            Some("trixie-backports"),
        ),
        other => bail!("no Debian kernel package series {other}: use 6.1, 6.12 or 7"),
    };
    let apt = Apt::new(cache, suite)?;
    let search = || -> anyhow::Result<Vec<String>> {
        let output = apt
            .command("apt-cache")
            .args(["search", "--names-only", pattern])
            .output()
            .context("cannot run apt-cache")?;
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
            .collect())
    };
    let mut packages = search()?;
    if packages.is_empty() || apt.stale() {
        run(apt.command("apt-get").args(["update", "-qq"]))?;
        apt.updated()?;
        packages = search()?;
    }
    // The newest: compare the numbers in the names (ABI or patch level).
    let numbers = |name: &str| -> Vec<u64> {
        name.split(|c: char| !c.is_ascii_digit())
            .filter_map(|part| part.parse().ok())
            .collect()
    };
    let package = packages
        .into_iter()
        .max_by_key(|name| numbers(name))
        .with_context(|| format!("no Debian package matches {pattern}: is apt configured?"))?;
    let dir = cache.join(&package);
    if let (Some(vmlinuz), true) = (find_vmlinuz(&dir)?, dir.join(MODULES_ORDER).exists()) {
        return Ok(vmlinuz);
    }
    std::fs::create_dir_all(&dir)?;
    eprintln!("vm-test: fetching {package}");
    // Debian 13's kernels come in two packages, the image and its modules (`linux-image-*`
    // only depends on them); Debian 12's in one.
    let release = package.trim_start_matches("linux-image-");
    let (image, modules) = match suite {
        Some(_) => (
            format!("linux-binary-{release}"),
            Some(format!("linux-modules-{release}")),
        ),
        None => (package.clone(), None),
    };
    // What an interrupted run left is not picked up for this one.
    for entry in std::fs::read_dir(&dir)?.filter_map(Result::ok) {
        if entry.path().extension().is_some_and(|ext| ext == "deb") {
            std::fs::remove_file(entry.path())?;
        }
    }
    let download = |name: &str| -> anyhow::Result<PathBuf> {
        run_in(&dir, apt.command("apt-get").args(["download", "-q", name]))?;
        std::fs::read_dir(&dir)?
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .find(|path| {
                path.extension().is_some_and(|ext| ext == "deb")
                    && path
                        .file_name()
                        .is_some_and(|file| file.to_string_lossy().starts_with(&format!("{name}_")))
            })
            .with_context(|| format!("apt-get download left no .deb of {name}"))
    };
    let image_deb = download(&image)?;
    // Debian 12 keeps it in /boot, Debian 13 beside the modules: it goes to /boot here.
    let listing = Command::new("dpkg-deb")
        .arg("-c")
        .arg(&image_deb)
        .output()?;
    let member = String::from_utf8_lossy(&listing.stdout)
        .split_whitespace()
        .find(|word| {
            word.starts_with("./boot/vmlinuz-")
                || (word.starts_with("./usr/lib/modules/") && word.ends_with("/vmlinuz"))
        })
        .map(str::to_owned)
        .context("the kernel package holds no vmlinuz")?;
    let boot = dir.join("boot");
    std::fs::create_dir_all(&boot)?;
    let partial = boot.join("vmlinuz.partial");
    run(Command::new("bash")
        .args([
            "-c",
            "set -o pipefail; dpkg-deb --fsys-tarfile \"$1\" | tar -xO \"$2\" > \"$3\"",
            "bash",
        ])
        .arg(&image_deb)
        .arg(&member)
        .arg(&partial))?;
    std::fs::rename(&partial, boot.join(format!("vmlinuz-{release}")))?;
    let modules_deb = modules.map(|name| download(&name)).transpose()?;
    extract_modules(modules_deb.as_ref().unwrap_or(&image_deb), &dir)?;
    for deb in std::iter::once(image_deb).chain(modules_deb) {
        std::fs::remove_file(deb)?;
    }
    find_vmlinuz(&dir)?.context("the package holds no vmlinuz")
}

/// apt as configured on this machine (Debian 12's suites), or for one more suite with lists
/// of its own under the cache: the machine's own sources are left alone.
struct Apt {
    options: Vec<String>,
    /// Written after each update of the lists of its own, if any (apt leaves lists it found
    /// unchanged, and their folder, as they were).
    updated_stamp: Option<PathBuf>,
}

impl Apt {
    fn new(cache: &Path, suite: Option<&str>) -> anyhow::Result<Self> {
        let Some(suite) = suite else {
            return Ok(Apt {
                options: Vec::new(),
                updated_stamp: None,
            });
        };
        let dir = cache.join(format!("apt-{suite}"));
        for sub in ["lists/partial", "cache/archives/partial", "sources.list.d"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let sources = dir.join("sources.list");
        std::fs::write(
            &sources,
            format!(
                "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \
                 http://deb.debian.org/debian {suite} main\n"
            ),
        )?;
        let option = |key: &str, value: &Path| format!("{key}={}", value.display());
        Ok(Apt {
            options: [
                option("Dir::Etc::SourceList", &sources),
                option("Dir::Etc::SourceParts", &dir.join("sources.list.d")),
                option("Dir::State::Lists", &dir.join("lists")),
                option("Dir::Cache", &dir.join("cache")),
            ]
            .into_iter()
            .flat_map(|option| ["-o".to_owned(), option])
            .collect(),
            updated_stamp: Some(dir.join("updated")),
        })
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command.args(&self.options);
        command
    }

    /// Whether lists of its own were last updated more than a day ago: the newest kernel of
    /// the suite moves, and an older one's package leaves the archive.
    fn stale(&self) -> bool {
        const DAY: Duration = Duration::from_secs(24 * 3600);
        self.updated_stamp.as_ref().is_some_and(|stamp| {
            std::fs::metadata(stamp)
                .and_then(|meta| meta.modified())
                .ok()
                .and_then(|modified| modified.elapsed().ok())
                .is_none_or(|age| age > DAY)
        })
    }

    /// Notes that the lists of its own were just updated.
    fn updated(&self) -> anyhow::Result<()> {
        if let Some(stamp) = &self.updated_stamp {
            std::fs::write(stamp, b"")?;
        }
        Ok(())
    }
}

/// The modules a disk with an ext4 file system needs (Debian builds them as modules): the
/// I/O test's fsync must reach a device, not the initramfs.
const DISK_MODULES: &[&str] = &["crc32c_generic", "virtio_pci", "virtio_blk", "ext4"];
/// Where a kernel's modules are unpacked, and the file listing them in load order.
const MODULES_DIR: &str = "modules";
const MODULES_ORDER: &str = "modules/order";

/// The modules a module needs: its `.modinfo` section's `depends=` string (NUL-separated
/// `key=value` strings; read from the raw file, as no kmod tools are needed then).
fn module_depends(module: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    let Some(start) = module
        .windows(KEY.len())
        .position(|window| window == KEY)
        .map(|at| at + KEY.len())
    else {
        return Vec::new();
    };
    let end = module[start..]
        .iter()
        .position(|&byte| byte == 0)
        .map_or(module.len(), |len| start + len);
    String::from_utf8_lossy(&module[start..end])
        .split(',')
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Unpacks `DISK_MODULES` and what they depend on from the package `deb` into `dir/modules`,
/// uncompressed (busybox's insmod reads plain files), with their load order. A module the
/// package lacks is built into the kernel.
fn extract_modules(deb: &Path, dir: &Path) -> anyhow::Result<()> {
    let listing = Command::new("dpkg-deb").arg("-c").arg(deb).output()?;
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
    let path_of = |name: &str| -> Option<String> {
        listing.split_whitespace().find_map(|word| {
            let file = word.rsplit('/').next()?;
            let stem = file
                .strip_suffix(".ko")
                .or_else(|| file.strip_suffix(".ko.xz"))?;
            (stem.replace('-', "_") == name.replace('-', "_")).then(|| word.to_owned())
        })
    };
    let modules = dir.join(MODULES_DIR);
    std::fs::create_dir_all(&modules)?;
    let mut order: Vec<String> = Vec::new();
    // Depth first, dependencies before the modules that need them.
    let mut stack: Vec<(String, bool)> = DISK_MODULES
        .iter()
        .rev()
        .map(|m| (m.to_string(), false))
        .collect();
    while let Some((name, expanded)) = stack.pop() {
        if order.contains(&name) {
            continue;
        }
        let Some(path) = path_of(&name) else {
            continue;
        };
        let file = modules.join(format!("{name}.ko"));
        if expanded {
            order.push(name);
            continue;
        }
        run_in(
            dir,
            Command::new("sh")
                .args([
                    "-c",
                    "dpkg-deb --fsys-tarfile \"$1\" | tar -xO \"$2\" | \
                     if [ \"${2%.xz}\" != \"$2\" ]; then xz -dc; else cat; fi > \"$3\"",
                    "sh",
                ])
                .arg(deb)
                .arg(&path)
                .arg(&file),
        )?;
        stack.push((name, true));
        for dependency in module_depends(&std::fs::read(&file)?) {
            stack.push((dependency, false));
        }
    }
    let order: String = order.iter().map(|name| format!("{name}.ko\n")).collect();
    std::fs::write(dir.join(MODULES_ORDER), order)?;
    Ok(())
}

fn find_vmlinuz(dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    let boot = dir.join("boot");
    if !boot.exists() {
        return Ok(None);
    }
    Ok(std::fs::read_dir(boot)?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with("vmlinuz-"))
        }))
}

/// What one kernel boots with.
struct Vm {
    kernel: PathBuf,
    initramfs: PathBuf,
    /// A scratch ext4 disk, mounted where the tests keep files that must reach a device.
    disk: PathBuf,
}

/// `base` with the kernel's disk modules appended (the kernel unpacks concatenated archives).
fn with_modules(base: &Path, vmlinuz: &Path, out: &Path) -> anyhow::Result<PathBuf> {
    let kernel_dir = vmlinuz
        .parent()
        .and_then(Path::parent)
        .context("vmlinuz is in boot/")?;
    std::fs::copy(base, out)?;
    let archive = std::fs::OpenOptions::new().append(true).open(out)?;
    run_in(
        kernel_dir,
        Command::new("sh")
            .args([
                "-c",
                &format!("find {MODULES_DIR} | {BUSYBOX} cpio -o -H newc 2>/dev/null"),
            ])
            .stdout(archive),
    )?;
    Ok(out.to_owned())
}

/// A new, empty 256 MiB ext4 image.
fn ext4_disk(path: &Path) -> anyhow::Result<PathBuf> {
    let file = std::fs::File::create(path)?;
    file.set_len(256 << 20)?;
    run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(path))?;
    Ok(path.to_owned())
}

/// What the console said.
struct Results {
    kernel: Option<String>,
    checks: Vec<(String, bool)>,
    /// Each check's console lines, before its result line.
    outputs: Vec<(String, String)>,
}

impl Results {
    /// The last lines `check` printed, at most a screenful.
    fn output_of(&self, check: &str) -> Option<String> {
        const LINES: usize = 60;
        let (_, output) = self.outputs.iter().find(|(name, _)| name == check)?;
        let lines: Vec<&str> = output.lines().collect();
        Some(lines[lines.len().saturating_sub(LINES)..].join("\n"))
    }
}

/// Boots the VM under qemu's emulation, the console written to `log`,
/// stopped after `timeout`.
fn boot(vm: &Vm, log: &Path, timeout: Duration) -> anyhow::Result<Results> {
    let mut qemu = Command::new("qemu-system-x86_64")
        // One host thread for both vCPUs: with a thread each, a 6.12 guest once died of an
        // `int3` oops in `__schedule` while the kernel patched its text to attach a BTF
        // tracepoint (cross-modifying code under multi-threaded TCG). Not slower on 2 cores.
        .args(["-accel", "tcg,thread=single"])
        .args(["-cpu", "max", "-smp", "2", "-m", "3072"])
        .args(["-display", "none", "-monitor", "none", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .arg("-kernel")
        .arg(&vm.kernel)
        .arg("-initrd")
        .arg(&vm.initramfs)
        .arg("-drive")
        .arg(format!("file={},format=raw,if=virtio", vm.disk.display()))
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .stdin(Stdio::null())
        .spawn()
        .context("cannot start qemu-system-x86_64")?;
    let deadline = Instant::now() + timeout;
    while qemu.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = qemu.kill();
            let _ = qemu.wait();
            eprintln!("vm-test: {} timed out", vm.kernel.display());
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let console = String::from_utf8_lossy(&std::fs::read(log)?).into_owned();
    Ok(parse_console(&console))
}

fn parse_console(console: &str) -> Results {
    let mut results = Results {
        kernel: None,
        checks: Vec::new(),
        outputs: Vec::new(),
    };
    let mut output = String::new();
    for line in console.lines().map(str::trim) {
        if let Some(release) = line.strip_prefix(KERNEL_MARK) {
            results.kernel = Some(release.to_owned());
            output.clear();
        } else if let Some((name, status)) = line
            .strip_prefix(RESULT_MARK)
            .and_then(|rest| rest.rsplit_once(' '))
        {
            results.checks.push((name.to_owned(), status == "0"));
            results
                .outputs
                .push((name.to_owned(), std::mem::take(&mut output)));
        } else {
            output.push_str(line);
            output.push('\n');
        }
    }
    results
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_modules_dependencies() {
        let module = b"\x7fELF...\0license=GPL\0depends=mbcache,jbd2,crc16\0intree=Y\0";
        assert_eq!(module_depends(module), ["mbcache", "jbd2", "crc16"]);
        assert!(module_depends(b"\0depends=\0name=crc16\0").is_empty());
        assert!(module_depends(b"no modinfo").is_empty());
    }

    #[test]
    fn reads_results_off_the_console() {
        let console = "SeaBIOS\r\nVMTEST KERNEL 6.1.0-50-amd64\r\ntest x ... ok\r\n\
                       VMTEST RESULT check 0\r\nVMTEST RESULT leaf 101\r\n";
        let results = parse_console(console);
        assert_eq!(results.kernel.as_deref(), Some("6.1.0-50-amd64"));
        assert_eq!(
            results.checks,
            [("check".to_owned(), true), ("leaf".to_owned(), false)]
        );
        assert_eq!(results.output_of("leaf").as_deref(), Some(""));
        assert_eq!(results.output_of("check").as_deref(), Some("test x ... ok"));
    }
}
