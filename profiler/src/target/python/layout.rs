//! Where CPython keeps what the profiler reads, per minor version: offsets into its
//! structures on x86-64, taken from the release's headers (`Include/internal/pycore_*.h`,
//! `Include/cpython/*.h`) and checked against the installed headers by the tests.

use profiler_common::PythonOffsets;

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
const LAYOUTS: &[Layout] = &[Layout {
    version: (3, 11),
    kernel: PythonOffsets {
        runtime_main_interpreter: 48,
        interpreter_threads: 16,
        thread_next: 8,
        thread_native_id: 160,
        thread_cframe: 56,
        cframe_current_frame: 8,
        frame_code: 32,
        frame_previous: 48,
        frame_is_entry: 68,
        _pad: 0,
    },
    code_qualname: 128,
    code_filename: 112,
    code_first_line: 72,
    unicode_length: 16,
    unicode_state: 32,
    ascii_data: 48,
    compact_data: 72,
}];

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
    use std::{collections::HashMap, path::Path, process::Command};

    use super::*;

    /// The fields' offsets as the C compiler lays them out from the headers in `include`.
    fn offsets_from_headers(include: &Path) -> HashMap<String, u32> {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("offsets.c");
        let fields = [
            (
                "runtime_main_interpreter",
                "_PyRuntimeState",
                "interpreters.main",
            ),
            ("interpreter_threads", "PyInterpreterState", "threads.head"),
            ("thread_next", "PyThreadState", "next"),
            ("thread_native_id", "PyThreadState", "native_thread_id"),
            ("thread_cframe", "PyThreadState", "cframe"),
            ("cframe_current_frame", "_PyCFrame", "current_frame"),
            ("frame_code", "_PyInterpreterFrame", "f_code"),
            ("frame_previous", "_PyInterpreterFrame", "previous"),
            ("frame_is_entry", "_PyInterpreterFrame", "is_entry"),
            ("code_qualname", "PyCodeObject", "co_qualname"),
            ("code_filename", "PyCodeObject", "co_filename"),
            ("code_first_line", "PyCodeObject", "co_firstlineno"),
            ("unicode_length", "PyASCIIObject", "length"),
            ("unicode_state", "PyASCIIObject", "state"),
        ];
        let mut program = String::from(
            "#define Py_BUILD_CORE 1\n#include <Python.h>\n\
             #include <internal/pycore_runtime.h>\n#include <internal/pycore_interp.h>\n\
             #include <internal/pycore_frame.h>\n#include <stddef.h>\n#include <stdio.h>\n\
             int main(void) {\n",
        );
        for (name, type_name, field) in fields {
            program.push_str(&format!(
                "printf(\"{name} %zu\\n\", offsetof({type_name}, {field}));\n"
            ));
        }
        program.push_str(
            "printf(\"ascii_data %zu\\n\", sizeof(PyASCIIObject));\n\
             printf(\"compact_data %zu\\n\", sizeof(PyCompactUnicodeObject));\nreturn 0;\n}\n",
        );
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

    #[test]
    fn layout_of_3_11_matches_the_installed_headers() {
        // Debian's python3.11-dev, which the set-up installs.
        let include = Path::new("/usr/include/python3.11");
        assert!(
            include.join("internal/pycore_frame.h").exists(),
            "{} is missing: run `cargo xtask setup` (python3.11-dev)",
            include.display()
        );
        let found = offsets_from_headers(include);
        let layout = layout((3, 11)).unwrap();
        let k = &layout.kernel;
        let expected = [
            ("runtime_main_interpreter", k.runtime_main_interpreter),
            ("interpreter_threads", k.interpreter_threads),
            ("thread_next", k.thread_next),
            ("thread_native_id", k.thread_native_id),
            ("thread_cframe", k.thread_cframe),
            ("cframe_current_frame", k.cframe_current_frame),
            ("frame_code", k.frame_code),
            ("frame_previous", k.frame_previous),
            ("frame_is_entry", k.frame_is_entry),
            ("code_qualname", layout.code_qualname),
            ("code_filename", layout.code_filename),
            ("code_first_line", layout.code_first_line),
            ("unicode_length", layout.unicode_length),
            ("unicode_state", layout.unicode_state),
            ("ascii_data", layout.ascii_data),
            ("compact_data", layout.compact_data),
        ];
        for (name, value) in expected {
            assert_eq!(found.get(name), Some(&value), "{name}");
        }
    }

    #[test]
    fn unknown_versions_have_no_layout() {
        assert!(layout((3, 11)).is_some());
        assert!(layout((2, 7)).is_none());
        assert_eq!(known_versions(), "3.11");
    }
}
