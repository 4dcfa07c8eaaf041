//! The Python processes of a run: the interpreter each runs, and the functions of the code
//! objects their stacks name, read while they live.

use std::{collections::HashMap, time::Instant};

use profiler_common::{PYTHON_ENTRY_FRAME, PYTHON_FRAME};

use crate::{
    model::{Frame, FrameKind, PythonStats},
    target::{
        procfs::MapEntry,
        python::{
            Interpreter, PythonDetector,
            code::{ProcessMemory, PythonFunction, read_function},
        },
    },
};

/// Code objects read in a run, at most (a bound on memory and reading time: 256 characters
/// per name and file name, about 1 KiB a function).
const MAX_FUNCTIONS: usize = 100_000;

/// The Python processes of a run and the functions their stacks name.
#[derive(Debug, Default)]
pub struct PythonNames {
    /// Whether Python frames are read (asked for, and walked with the unwind tables).
    pub enabled: bool,
    /// Whether the interpreter's frames above the first Python frame are kept.
    pub keep_interpreter_frames: bool,
    detector: PythonDetector,
    interpreters: HashMap<u32, Interpreter>,
    /// Each Python process's memory while it runs the interpreter found.
    memories: HashMap<u32, ProcessMemory>,
    /// Functions by (process, code object); `None`: not a code object when read.
    functions: HashMap<(u32, u64), Option<PythonFunction>>,
    /// Code objects not read because of the bound.
    over_bound: u64,
}

/// The Python part of a walked user stack: the entries after the native frames.
pub fn python_part(stack: &[u64]) -> &[u64] {
    let native = native_len(stack);
    &stack[native..]
}

/// The native part of a walked user stack.
pub fn native_part(stack: &[u64]) -> &[u64] {
    &stack[..native_len(stack)]
}

fn native_len(stack: &[u64]) -> usize {
    stack
        .iter()
        .position(|&entry| entry & PYTHON_FRAME != 0)
        .unwrap_or(stack.len())
}

/// A Python entry's code object address and whether it is the first frame its evaluation
/// loop ran.
pub fn code_of(entry: u64) -> (u64, bool) {
    (
        entry & !(PYTHON_FRAME | PYTHON_ENTRY_FRAME),
        entry & PYTHON_ENTRY_FRAME != 0,
    )
}

impl PythonNames {
    /// Looks for an interpreter in `pid`'s new memory map, when enabled. Returns it when it
    /// is new for the process (to tell the kernel).
    pub fn update(&mut self, pid: u32, maps: &[MapEntry]) -> Option<&Interpreter> {
        if !self.enabled {
            return None;
        }
        let found = self.detector.detect(pid, maps)?;
        if self.interpreters.get(&pid) == Some(&found) {
            return None;
        }
        match ProcessMemory::open(pid) {
            Ok(memory) => {
                self.memories.insert(pid, memory);
            }
            Err(err) => log::debug!("process {pid}: its memory: {err}"),
        }
        self.interpreters.insert(pid, found);
        self.interpreters.get(&pid)
    }

    /// Forgets a process's interpreter (it executed another program), and the functions
    /// named in its old image: a new one's code at the same address must not take their
    /// names (the old image's samples not named yet show as `[python code]`).
    pub fn forget(&mut self, pid: u32) {
        self.interpreters.remove(&pid);
        self.memories.remove(&pid);
        self.functions.retain(|(process, _), _| *process != pid);
    }

    /// Stops reading a process's memory (it exited); its functions stay named.
    pub fn exited(&mut self, pid: u32) {
        self.memories.remove(&pid);
    }

    /// The interpreter of `pid`, if it runs one.
    pub fn interpreter(&self, pid: u32) -> Option<&Interpreter> {
        self.interpreters.get(&pid)
    }

    /// Whether any target runs Python.
    pub fn any(&self) -> bool {
        !self.interpreters.is_empty()
    }

    /// Names the code objects of `entries` (Python stack entries of `pid`) not named yet,
    /// reading them from the process while it lives, until `deadline`. Returns false when
    /// the deadline stopped it.
    pub fn resolve(&mut self, pid: u32, entries: &[u64], deadline: Instant) -> bool {
        let (Some(interpreter), Some(memory)) =
            (self.interpreters.get(&pid), self.memories.get(&pid))
        else {
            return true;
        };
        let Some(layout) = interpreter.layout else {
            return true;
        };
        for &entry in entries {
            let (code, _) = code_of(entry);
            if code == 0 || self.functions.contains_key(&(pid, code)) {
                continue;
            }
            if self.functions.len() >= MAX_FUNCTIONS {
                if self.over_bound == 0 {
                    log::warn!(
                        "{MAX_FUNCTIONS} Python code objects read; others show as `[python code]`"
                    );
                }
                self.over_bound += 1;
                continue;
            }
            if Instant::now() >= deadline {
                return false;
            }
            let function = read_function(memory, code, interpreter.code_type, layout);
            self.functions.insert((pid, code), function);
        }
        true
    }

    /// What the summary says of the run's Python processes; `None` without any.
    pub fn stats(&self) -> Option<PythonStats> {
        if self.interpreters.is_empty() {
            return None;
        }
        let mut interpreters: Vec<String> = self
            .interpreters
            .values()
            .map(|interpreter| {
                let (major, minor) = interpreter.version;
                let walked = if interpreter.layout.is_some() {
                    ""
                } else {
                    " (not walked)"
                };
                format!("{major}.{minor} {}{walked}", interpreter.object)
            })
            .collect();
        interpreters.sort();
        interpreters.dedup();
        let named = self.functions.values().filter(|f| f.is_some()).count() as u64;
        Some(PythonStats {
            processes: self.interpreters.len() as u32,
            interpreters,
            functions: named,
            unnamed: self.functions.len() as u64 - named + self.over_bound,
        })
    }

    /// The frame of a Python stack entry of `pid`.
    pub fn frame(&self, pid: u32, entry: u64) -> Frame {
        let (code, _) = code_of(entry);
        match self.functions.get(&(pid, code)) {
            Some(Some(function)) => Frame {
                function: function.qualname.clone(),
                module: None,
                file: Some(function.file.clone()),
                line: Some(function.first_line),
                kind: FrameKind::Interpreted,
            },
            _ => Frame {
                function: "[python code]".to_owned(),
                module: self
                    .interpreters
                    .get(&pid)
                    .map(|interpreter| interpreter.object.clone()),
                file: None,
                line: None,
                kind: FrameKind::Unsymbolized {
                    kernel: false,
                    file_offset: None,
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stack_parts_split_at_the_first_python_entry() {
        let stack = [
            0x10,
            0x20,
            PYTHON_FRAME | 0x1000,
            PYTHON_FRAME | PYTHON_ENTRY_FRAME | 0x2000,
        ];
        assert_eq!(native_part(&stack), &[0x10, 0x20]);
        assert_eq!(python_part(&stack).len(), 2);
        assert_eq!(code_of(stack[3]), (0x2000, true));
        assert_eq!(code_of(stack[2]), (0x1000, false));
        assert_eq!(native_part(&[0x10]), &[0x10]);
    }

    #[test]
    fn unnamed_code_is_a_placeholder() {
        let names = PythonNames::default();
        let frame = names.frame(1, PYTHON_FRAME | 0x1234);
        assert_eq!(frame.function, "[python code]");
        assert!(frame.kind.is_unsymbolized());
    }
}
