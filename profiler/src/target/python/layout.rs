//! Where CPython keeps what the profiler reads, per minor version: offsets into its
//! structures on x86-64, taken from the release's headers (`Include/internal/pycore_*.h`,
//! `Include/cpython/*.h`) and checked against the installed headers by the tests.

use profiler_common::{PYTHON_FRAME_DIRECT, PythonOffsets};

/// The offsets of one CPython minor version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// (major, minor).
    pub version: (u8, u8),
    /// What the kernel walks: runtime to thread states to frames.
    pub kernel: PythonOffsets,
    /// `PyCodeObject.co_qualname`.
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

/// The versions whose frames the profiler walks.
const LAYOUTS: &[Layout] = &[
    Layout {
        version: (3, 11),
        kernel: PythonOffsets {
            runtime_main_interpreter: 48,
            interpreter_threads: 16,
            thread_next: 8,
            thread_native_id: 160,
            thread_frame: 56,
            cframe_current_frame: 8,
            frame_code: 32,
            frame_previous: 48,
            frame_is_entry: 68,
            frame_owner: 0,
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
            thread_native_id: 144,
            thread_frame: 56,
            cframe_current_frame: 0,
            frame_code: 0,
            frame_previous: 8,
            frame_is_entry: 0,
            frame_owner: 70,
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
            thread_native_id: 160,
            thread_frame: 72,
            cframe_current_frame: PYTHON_FRAME_DIRECT,
            frame_code: 0,
            frame_previous: 8,
            frame_is_entry: 0,
            frame_owner: 70,
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
        let (thread_frame, cframe_current_frame, frame_code) = match layout.version {
            (3, 11) | (3, 12) => (
                "offsetof(PyThreadState, cframe)",
                "offsetof(_PyCFrame, current_frame)",
                "offsetof(_PyInterpreterFrame, f_code)",
            ),
            _ => (
                "offsetof(PyThreadState, current_frame)",
                "0xffffffffu",
                "offsetof(_PyInterpreterFrame, f_executable)",
            ),
        };
        let mut fields = vec![
            (
                "runtime_main_interpreter",
                "offsetof(_PyRuntimeState, interpreters.main)".to_owned(),
                k.runtime_main_interpreter,
            ),
            (
                "interpreter_threads",
                "offsetof(PyInterpreterState, threads.head)".to_owned(),
                k.interpreter_threads,
            ),
            (
                "thread_next",
                "offsetof(PyThreadState, next)".to_owned(),
                k.thread_next,
            ),
            (
                "thread_native_id",
                "offsetof(PyThreadState, native_thread_id)".to_owned(),
                k.thread_native_id,
            ),
            ("thread_frame", thread_frame.to_owned(), k.thread_frame),
            (
                "cframe_current_frame",
                cframe_current_frame.to_owned(),
                k.cframe_current_frame,
            ),
            ("frame_code", frame_code.to_owned(), k.frame_code),
            (
                "frame_previous",
                "offsetof(_PyInterpreterFrame, previous)".to_owned(),
                k.frame_previous,
            ),
            (
                "code_qualname",
                "offsetof(PyCodeObject, co_qualname)".to_owned(),
                layout.code_qualname,
            ),
            (
                "code_filename",
                "offsetof(PyCodeObject, co_filename)".to_owned(),
                layout.code_filename,
            ),
            (
                "code_first_line",
                "offsetof(PyCodeObject, co_firstlineno)".to_owned(),
                layout.code_first_line,
            ),
            (
                "unicode_length",
                "offsetof(PyASCIIObject, length)".to_owned(),
                layout.unicode_length,
            ),
            (
                "unicode_state",
                "offsetof(PyASCIIObject, state)".to_owned(),
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
        if layout.version == (3, 11) {
            fields.push((
                "frame_is_entry",
                "offsetof(_PyInterpreterFrame, is_entry)".to_owned(),
                k.frame_is_entry,
            ));
        } else {
            fields.push((
                "frame_owner",
                "offsetof(_PyInterpreterFrame, owner)".to_owned(),
                k.frame_owner,
            ));
        }
        fields
    }

    /// Each field's value as the C compiler lays it out from the headers in `include`.
    fn values_from_headers(
        include: &Path,
        fields: &[(&'static str, String, u32)],
    ) -> HashMap<String, u32> {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("offsets.c");
        let mut program = String::from(
            "#define Py_BUILD_CORE 1\n#include <Python.h>\n\
             #include <internal/pycore_runtime.h>\n#include <internal/pycore_interp.h>\n\
             #include <internal/pycore_frame.h>\n#include <stddef.h>\n#include <stdio.h>\n\
             int main(void) {\n",
        );
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
            .filter(|folder| folder.join("internal/pycore_frame.h").exists())
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
                let found = values_from_headers(&include, &fields);
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
        assert_eq!(known_versions(), "3.11, 3.12, 3.13");
    }
}
