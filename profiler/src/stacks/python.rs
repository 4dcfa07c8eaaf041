//! Python frames in stacks: each run of Python frames put in place of the native evaluation
//! frame that ran it, as py-spy's `--native` does (the functions are named by
//! [`super::python_names`]).

use std::collections::HashMap;

pub use super::python_names::{native_part, python_part};
use crate::{
    model::{FrameKind, Interner, Profile},
    stacks::{python_names::code_of, symbolize::Symbols},
};

/// The interpreter's evaluation function: one native frame per run of Python frames.
pub const EVAL_FUNCTION: &str = "_PyEval_EvalFrameDefault";

/// Whether a native function is the evaluation loop (or a part the compiler split off it,
/// `_PyEval_EvalFrameDefault.cold`).
fn is_eval_function(name: &str) -> bool {
    name.strip_prefix(EVAL_FUNCTION)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}

/// A stack's frame ids (root first, native frames in `native`) with the frames of its Python
/// `entries` of process `pid` spliced in (see [`splice`]); each Python frame interned once
/// per (process, entry) in `interned`.
pub fn with_python_frames(
    profile: &mut Profile,
    interner: &mut Interner,
    symbols: &mut dyn Symbols,
    interned: &mut HashMap<(u32, u64), usize>,
    pid: u32,
    entries: &[u64],
    native: &[usize],
) -> Vec<usize> {
    let mut python: Vec<(usize, bool)> = Vec::with_capacity(entries.len());
    for &entry in entries {
        let (code, is_entry) = code_of(entry);
        if code == 0 {
            // The evaluation loop's frame on the C stack: the frame before was its first.
            if let Some(last) = python.last_mut() {
                last.1 = true;
            }
            continue;
        }
        let id = *interned
            .entry((pid, entry))
            .or_insert_with(|| interner.frame(profile, symbols.python(pid, entry)));
        python.push((id, is_entry));
    }
    let interpreter = symbols.python_interpreter(pid);
    let frames = &profile.frames;
    splice(
        native,
        &python,
        |&id| frames[id].kind == FrameKind::User && is_eval_function(&frames[id].function),
        |&id| interpreter.is_some() && frames[id].module == interpreter,
        symbols.keep_interpreter_frames(),
    )
}

/// Puts Python frames into a native stack. `native` is root first; `python` is the Python
/// entries' frames newest first, each with whether it is its evaluation loop's first. Each
/// run of Python frames (newest first, up to and including an entry frame) replaces one
/// native evaluation frame, matched from the newest; runs with no evaluation frame left go
/// to the outermost one (or the root, when the native stack has none). The interpreter's own
/// frames above the outermost run (its call machinery, and its work for the newest Python
/// function: what py-spy counts as that function) are left out where `is_interpreter` says;
/// those below it, from the entry point to the first Python frame, stay. With
/// `keep_interpreter`, every native frame stays, each run above its evaluation frame.
pub fn splice<T: Clone>(
    native: &[T],
    python: &[(T, bool)],
    is_eval: impl Fn(&T) -> bool,
    is_interpreter: impl Fn(&T) -> bool,
    keep_interpreter: bool,
) -> Vec<T> {
    // Runs of Python frames, newest run first, each root first.
    let mut runs: Vec<Vec<T>> = Vec::new();
    let mut current: Vec<T> = Vec::new();
    for (frame, entry) in python {
        current.push(frame.clone());
        if *entry {
            current.reverse();
            runs.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        current.reverse();
        runs.push(current);
    }
    let evals: Vec<usize> = native
        .iter()
        .enumerate()
        .filter(|(_, frame)| is_eval(frame))
        .map(|(index, _)| index)
        .collect();
    // Which run each evaluation frame gets, outermost evaluation frame first.
    let mut run_of_eval: Vec<Vec<T>> = vec![Vec::new(); evals.len()];
    let mut unmatched: Vec<T> = Vec::new();
    for (newest, run) in runs.into_iter().enumerate() {
        match evals.len().checked_sub(newest + 1) {
            Some(slot) => run_of_eval[slot] = run,
            // Older runs than evaluation frames: root first, before what is already there.
            None => {
                let mut older = run;
                older.append(&mut unmatched);
                unmatched = older;
            }
        }
    }
    if evals.is_empty() {
        let mut stack = unmatched;
        stack.extend_from_slice(native);
        return stack;
    }
    let first_eval = evals[0];
    let mut stack = Vec::with_capacity(native.len() + python.len());
    let mut slot = 0;
    for (index, frame) in native.iter().enumerate() {
        if slot < evals.len() && evals[slot] == index {
            if keep_interpreter {
                stack.push(frame.clone());
            }
            if slot == 0 {
                stack.append(&mut unmatched);
            }
            stack.append(&mut run_of_eval[slot]);
            slot += 1;
        } else if keep_interpreter || index < first_eval || !is_interpreter(frame) {
            stack.push(frame.clone());
        }
    }
    stack
}

#[cfg(test)]
mod tests {
    use super::*;

    fn splice_names(native: &[&str], python: &[(&str, bool)], keep: bool) -> Vec<String> {
        let is_interpreter = |f: &String| f.starts_with("Py") || f.starts_with("_Py");
        let native: Vec<String> = native.iter().map(|s| s.to_string()).collect();
        let python: Vec<(String, bool)> = python.iter().map(|(s, e)| (s.to_string(), *e)).collect();
        splice(
            &native,
            &python,
            |f| f == EVAL_FUNCTION,
            is_interpreter,
            keep,
        )
    }

    #[test]
    fn each_run_replaces_its_evaluation_frame() {
        // main -> eval(run: driver, work) -> PyObject_Call -> c_ext -> PyObject_Call ->
        // eval(run: callback) -> PyLong_Mul -> memcpy
        let native = [
            "main",
            "Py_RunMain",
            EVAL_FUNCTION,
            "PyObject_Call",
            "c_ext",
            "_PyObject_Call",
            EVAL_FUNCTION,
            "PyLong_Mul",
            "memcpy",
        ];
        let python = [("callback", true), ("work", false), ("driver", true)];
        assert_eq!(
            splice_names(&native, &python, false),
            [
                "main",
                "Py_RunMain",
                "driver",
                "work",
                "c_ext",
                "callback",
                "memcpy"
            ]
        );
        assert_eq!(
            splice_names(&native, &python, true),
            [
                "main",
                "Py_RunMain",
                EVAL_FUNCTION,
                "driver",
                "work",
                "PyObject_Call",
                "c_ext",
                "_PyObject_Call",
                EVAL_FUNCTION,
                "callback",
                "PyLong_Mul",
                "memcpy"
            ]
        );
    }

    #[test]
    fn runs_beyond_the_native_stack_go_to_its_outermost_evaluation_frame() {
        // The native walk was cut above the outer evaluation frame.
        let native = [EVAL_FUNCTION, "leaf"];
        let python = [("inner", true), ("outer", false), ("main_py", true)];
        assert_eq!(
            splice_names(&native, &python, false),
            ["main_py", "outer", "inner", "leaf"]
        );
        // No evaluation frame at all: Python frames at the root.
        let native = ["c_leaf"];
        assert_eq!(
            splice_names(&native, &python, false),
            ["main_py", "outer", "inner", "c_leaf"]
        );
    }

    #[test]
    fn a_run_without_an_entry_frame_still_counts() {
        let native = ["main", EVAL_FUNCTION, "leaf"];
        let python = [("b", false), ("a", false)];
        assert_eq!(
            splice_names(&native, &python, false),
            ["main", "a", "b", "leaf"]
        );
    }
}
