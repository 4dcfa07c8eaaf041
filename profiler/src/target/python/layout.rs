//! Where CPython keeps what the profiler reads, per minor version: offsets into its
//! structures on x86-64, taken from the release's headers (`Include/internal/pycore_*.h`,
//! `Include/cpython/*.h`) and checked against the installed headers by the tests.

use profiler_common::{PYTHON_EVERY_FRAME_ENTRY, PYTHON_FRAME_DIRECT, PythonOffsets};

/// The offsets of one CPython minor version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// (major, minor).
    pub version: (u8, u8),
    /// What the kernel walks: runtime to thread states to frames.
    pub kernel: PythonOffsets,
    /// `PyCodeObject.co_qualname` (`co_name` before 3.11).
    pub code_qualname: u32,
    /// `PyCodeObject.co_filename`.
    pub code_filename: u32,
    /// `PyCodeObject.co_firstlineno`.
    pub code_first_line: u32,
    /// `PyASCIIObject.length`.
    pub unicode_length: u32,
    /// `PyASCIIObject.state`: kind in bits 2–4, compact bit 5, ascii bit 6.
    pub unicode_state: u32,
    /// Where a compact ASCII string's characters start: `sizeof(PyASCIIObject)`.
    pub ascii_data: u32,
    /// Where another compact string's characters start: `sizeof(PyCompactUnicodeObject)`.
    pub compact_data: u32,
}

/// 3.8 to 3.10, alike where the profiler reads: one `PyFrameObject` (and one evaluation loop)
/// per Python call, thread states known by `pthread_self()`, no qualified names.
const fn older_layout(minor: u8) -> Layout {
    Layout {
        version: (3, minor),
        kernel: PythonOffsets {
            runtime_main_interpreter: 40,
            interpreter_threads: 8,
            thread_next: 8,
            thread_id: 176,
            thread_id_is_pthread: 1,
            thread_frame: 24,
            cframe_current_frame: PYTHON_FRAME_DIRECT,
            frame_code: 32,
            frame_previous: 24,
            frame_is_entry: PYTHON_EVERY_FRAME_ENTRY,
            frame_owner: 0,
            _pad: 0,
        },
        // `co_name`: `co_qualname` came with 3.11.
        code_qualname: 112,
        code_filename: 104,
        code_first_line: 40,
        unicode_length: 16,
        unicode_state: 32,
        ascii_data: 48,
        compact_data: 72,
    }
}

/// The versions whose frames the profiler walks.
const LAYOUTS: &[Layout] = &[
    older_layout(8),
    older_layout(9),
    older_layout(10),
    Layout {
        version: (3, 11),
        kernel: PythonOffsets {
            runtime_main_interpreter: 48,
            interpreter_threads: 16,
            thread_next: 8,
            thread_id: 160,
            thread_id_is_pthread: 0,
            thread_frame: 56,
            cframe_current_frame: 8,
            frame_code: 32,
            frame_previous: 48,
            frame_is_entry: 68,
            frame_owner: 0,
            _pad: 0,
        },
        code_qualname: 128,
        code_filename: 112,
        code_first_line: 72,
        unicode_length: 16,
        unicode_state: 32,
        ascii_data: 48,
        compact_data: 72,
    },
    Layout {
        version: (3, 12),
        kernel: PythonOffsets {
            runtime_main_interpreter: 48,
            interpreter_threads: 72,
            thread_next: 8,
            thread_id: 144,
            thread_id_is_pthread: 0,
            thread_frame: 56,
            cframe_current_frame: 0,
            frame_code: 0,
            frame_previous: 8,
            frame_is_entry: 0,
            frame_owner: 70,
            _pad: 0,
        },
        code_qualname: 128,
        code_filename: 112,
        code_first_line: 68,
        unicode_length: 16,
        unicode_state: 32,
        ascii_data: 40,
        compact_data: 56,
    },
    Layout {
        version: (3, 13),
        kernel: PythonOffsets {
            runtime_main_interpreter: 640,
            interpreter_threads: 7344,
            thread_next: 8,
            thread_id: 160,
            thread_id_is_pthread: 0,
            thread_frame: 72,
            cframe_current_frame: PYTHON_FRAME_DIRECT,
            frame_code: 0,
            frame_previous: 8,
            frame_is_entry: 0,
            frame_owner: 70,
            _pad: 0,
        },
        code_qualname: 128,
        code_filename: 112,
        code_first_line: 68,
        unicode_length: 16,
        unicode_state: 32,
        ascii_data: 40,
        compact_data: 56,
    },
];

/// The layout of CPython `major.minor`, if the profiler knows it.
pub fn layout(version: (u8, u8)) -> Option<&'static Layout> {
    LAYOUTS.iter().find(|layout| layout.version == version)
}

/// The versions known, as `3.N` words for messages.
pub fn known_versions() -> String {
    LAYOUTS
        .iter()
        .map(|layout| format!("{}.{}", layout.version.0, layout.version.1))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use std::{
        collections::HashMap,
        path::{Path, PathBuf},
        process::Command,
    };

    use super::*;

    /// The C expression giving each field of `layout` for its version, by name, with the
    /// value the table has.
    fn fields(layout: &Layout) -> Vec<(&'static str, String, u32)> {
        let k = &layout.kernel;
        let offset = |owner: &str, field: &str| format!("offsetof({owner}, {field})");
        let thread = "PyThreadState";
        let mut fields = vec![
            (
                "runtime_main_interpreter",
                offset("_PyRuntimeState", "interpreters.main"),
                k.runtime_main_interpreter,
            ),
            ("thread_next", offset(thread, "next"), k.thread_next),
            (
                "code_filename",
                offset("PyCodeObject", "co_filename"),
                layout.code_filename,
            ),
            (
                "code_first_line",
                offset("PyCodeObject", "co_firstlineno"),
                layout.code_first_line,
            ),
            (
                "unicode_length",
                offset("PyASCIIObject", "length"),
                layout.unicode_length,
            ),
            (
                "unicode_state",
                offset("PyASCIIObject", "state"),
                layout.unicode_state,
            ),
            (
                "ascii_data",
                "sizeof(PyASCIIObject)".to_owned(),
                layout.ascii_data,
            ),
            (
                "compact_data",
                "sizeof(PyCompactUnicodeObject)".to_owned(),
                layout.compact_data,
            ),
        ];
        let direct = PYTHON_FRAME_DIRECT.to_string();
        let older = layout.version < (3, 11);
        // Before 3.11 a frame is a `PyFrameObject`, a thread state knows its thread by
        // `pthread_self()`, and a code object has no qualified name.
        let (frame, previous) = match older {
            true => ("PyFrameObject", "f_back"),
            false => ("_PyInterpreterFrame", "previous"),
        };
        let (threads, thread_id, qualname) = match older {
            true => ("tstate_head", "thread_id", "co_name"),
            false => ("threads.head", "native_thread_id", "co_qualname"),
        };
        let (thread_frame, cframe_current_frame) = match layout.version {
            (3, 11 | 12) => (
                offset(thread, "cframe"),
                offset("_PyCFrame", "current_frame"),
            ),
            (3, ..=10) => (offset(thread, "frame"), direct),
            _ => (offset(thread, "current_frame"), direct),
        };
        let code = match layout.version >= (3, 13) {
            true => "f_executable",
            false => "f_code",
        };
        let entry = match layout.version {
            (3, ..=10) => (
                "frame_is_entry",
                PYTHON_EVERY_FRAME_ENTRY.to_string(),
                k.frame_is_entry,
            ),
            (3, 11) => (
                "frame_is_entry",
                offset(frame, "is_entry"),
                k.frame_is_entry,
            ),
            _ => ("frame_owner", offset(frame, "owner"), k.frame_owner),
        };
        let by_version = [
            (
                "interpreter_threads",
                offset("PyInterpreterState", threads),
                k.interpreter_threads,
            ),
            ("thread_id", offset(thread, thread_id), k.thread_id),
            ("thread_frame", thread_frame, k.thread_frame),
            (
                "cframe_current_frame",
                cframe_current_frame,
                k.cframe_current_frame,
            ),
            ("frame_code", offset(frame, code), k.frame_code),
            ("frame_previous", offset(frame, previous), k.frame_previous),
            entry,
            (
                "code_qualname",
                offset("PyCodeObject", qualname),
                layout.code_qualname,
            ),
        ];
        fields.extend(by_version);
        fields
    }

    /// The internal headers declaring what [`fields`] reads, per version.
    fn includes(version: (u8, u8)) -> &'static [&'static str] {
        match version {
            (3, ..=8) => &["internal/pycore_pystate.h", "frameobject.h"],
            (3, 9 | 10) => &[
                "internal/pycore_runtime.h",
                "internal/pycore_interp.h",
                "frameobject.h",
            ],
            _ => &[
                "internal/pycore_runtime.h",
                "internal/pycore_interp.h",
                "internal/pycore_frame.h",
            ],
        }
    }

    /// Each field's value as the C compiler lays it out from the headers in `include`.
    fn values_from_headers(
        include: &Path,
        version: (u8, u8),
        fields: &[(&'static str, String, u32)],
    ) -> HashMap<String, u32> {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("offsets.c");
        let mut program = String::from("#define Py_BUILD_CORE 1\n#include <Python.h>\n");
        for header in includes(version) {
            program.push_str(&format!("#include <{header}>\n"));
        }
        program.push_str("#include <stddef.h>\n#include <stdio.h>\nint main(void) {\n");
        for (name, expression, _) in fields {
            program.push_str(&format!(
                "printf(\"{name} %zu\\n\", (size_t)({expression}));\n"
            ));
        }
        program.push_str("return 0;\n}\n");
        std::fs::write(&source, program).unwrap();
        let binary = dir.path().join("offsets");
        let compiled = Command::new("gcc")
            .arg("-I")
            .arg(include)
            .arg(&source)
            .arg("-o")
            .arg(&binary)
            .output()
            .expect("gcc runs");
        assert!(
            compiled.status.success(),
            "{}",
            String::from_utf8_lossy(&compiled.stderr)
        );
        let output = Command::new(&binary).output().unwrap();
        String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .filter_map(|line| {
                let (name, value) = line.split_once(' ')?;
                Some((name.to_owned(), value.parse().ok()?))
            })
            .collect()
    }

    /// Header folders of CPython `major.minor` on this machine: Debian's, and pyenv's.
    fn header_folders((major, minor): (u8, u8)) -> Vec<PathBuf> {
        let name = format!("python{major}.{minor}");
        let mut folders = vec![Path::new("/usr/include").join(&name)];
        let pyenv = std::env::var_os("PYENV_ROOT")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".pyenv")));
        if let Some(Ok(versions)) = pyenv.map(|root| std::fs::read_dir(root.join("versions"))) {
            folders.extend(
                versions
                    .flatten()
                    .filter(|entry| {
                        entry
                            .file_name()
                            .to_string_lossy()
                            .starts_with(&format!("{major}.{minor}."))
                    })
                    .map(|entry| entry.path().join("include").join(&name)),
            );
        }
        folders
            .into_iter()
            .filter(|folder| folder.join("internal").is_dir())
            .collect()
    }

    #[test]
    fn layouts_match_the_headers_on_this_machine() {
        // Debian's python3.11-dev, which the set-up installs, at least; other versions'
        // headers where pyenv built them.
        assert!(
            !header_folders((3, 11)).is_empty(),
            "/usr/include/python3.11 is missing: run `cargo xtask setup` (python3.11-dev)"
        );
        for layout in LAYOUTS {
            let fields = fields(layout);
            for include in header_folders(layout.version) {
                eprintln!("{:?} against {}", layout.version, include.display());
                let found = values_from_headers(&include, layout.version, &fields);
                for (name, _, value) in &fields {
                    assert_eq!(
                        found.get(*name),
                        Some(value),
                        "{name} in {}",
                        include.display()
                    );
                }
            }
        }
    }

    #[test]
    fn unknown_versions_have_no_layout() {
        assert!(layout((3, 11)).is_some());
        assert!(layout((3, 13)).is_some());
        assert!(layout((2, 7)).is_none());
        assert!(layout((3, 8)).is_some());
        assert!(layout((3, 7)).is_none());
        assert_eq!(known_versions(), "3.8, 3.9, 3.10, 3.11, 3.12, 3.13");
    }
}
