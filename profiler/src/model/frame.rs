//! Frames: one piece of a stack, symbolized or standing in for what could not be collected.
//! What a frame is (user, kernel, inlined, JIT, interpreted, unsymbolized, missing and why) is
//! its [`FrameKind`]; nothing reads it back from the name.

use serde::{Deserialize, Serialize};

/// What a frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// User-space code, symbolized.
    User,
    /// A user-space call the compiler inlined into its caller (the frame before it).
    Inlined,
    /// Kernel code, symbolized.
    Kernel,
    /// Code a runtime compiled at run time, named by the runtime.
    Jit,
    /// A function of an interpreted language, named by its interpreter.
    Interpreted,
    /// An address no symbol covers: the function is `module+0xOFFSET`, `[module]` or
    /// `[unknown]`.
    Unsymbolized {
        /// Whether the address is kernel code.
        kernel: bool,
        /// Where the code is in its module's file (the entry of its function when the
        /// call-frame information tells): what symbolizing it later with debug files needs.
        file_offset: Option<u64>,
    },
    /// Stands in for frames that could not be collected.
    Missing(Missing),
}

/// Why frames are missing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Missing {
    /// The outer frames of a user stack the unwinder could not walk (the frame's name says
    /// why, when the unwinder said).
    Truncated,
    /// A whole user stack.
    UserStack(StackLoss),
    /// A whole kernel stack.
    KernelStack(StackLoss),
}

/// How a whole stack was lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StackLoss {
    /// Another stack took its slot in the kernel's stack map.
    Collision,
    /// The kernel failed to collect it.
    Unavailable,
    /// The kernel's stack map was full.
    MapFull,
    /// A sampled off-CPU period's user stack, not walked: the thread ran on before it could
    /// be, or the run ended first.
    NotWalked,
}

impl FrameKind {
    /// Whether the frame is kernel code (or stands in for kernel frames).
    pub fn is_kernel(self) -> bool {
        matches!(
            self,
            FrameKind::Kernel
                | FrameKind::Unsymbolized { kernel: true, .. }
                | FrameKind::Missing(Missing::KernelStack(_))
        )
    }

    /// Whether the frame names no function: unsymbolized or missing.
    pub fn is_unnamed(self) -> bool {
        matches!(self, FrameKind::Unsymbolized { .. } | FrameKind::Missing(_))
    }

    /// Whether the frame is code no symbol names (not a placeholder for missing frames).
    pub fn is_unsymbolized(self) -> bool {
        matches!(self, FrameKind::Unsymbolized { .. })
    }

    /// Whether the frame is a named function of the program (not the kernel, not a
    /// placeholder): where a user would look.
    pub fn is_program_code(self) -> bool {
        matches!(
            self,
            FrameKind::User | FrameKind::Inlined | FrameKind::Jit | FrameKind::Interpreted
        )
    }
}

/// One frame. Inlined calls are frames of their own.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "SavedFrame", into = "SavedFrame")]
pub struct Frame {
    /// Demangled function name; `[module]` or `[unknown]` when no symbol covers the address;
    /// a bracketed description for missing frames.
    pub function: String,
    /// Object file (executable, library, `[kernel]`) the code belongs to, when known.
    pub module: Option<String>,
    /// Source file of the sampled line, when debug info has it.
    pub file: Option<String>,
    /// Source line, when debug info has it.
    pub line: Option<u32>,
    /// What the frame is.
    pub kind: FrameKind,
}

/// Module of frames in code a runtime compiled (named by it or not).
pub const JIT_MODULE: &str = "[jit]";

/// Name of the frame standing in for the outer frames of a cut user stack, and how it starts.
pub const TRUNCATED_STACK: &str = "[stack truncated";

impl Frame {
    /// A frame standing in for frames that could not be collected.
    fn missing(function: String, missing: Missing) -> Frame {
        Frame {
            function,
            module: None,
            file: None,
            line: None,
            kind: FrameKind::Missing(missing),
        }
    }

    /// The root frame of a user stack whose outer frames could not be walked; `why` (`: …`)
    /// when the unwinder said.
    pub fn truncated(why: &str) -> Frame {
        Frame::missing(format!("{TRUNCATED_STACK}{why}]"), Missing::Truncated)
    }

    /// The frame standing in for a whole user or kernel stack that was lost.
    pub fn lost_stack(kernel: bool, loss: StackLoss) -> Frame {
        let missing = match kernel {
            true => Missing::KernelStack(loss),
            false => Missing::UserStack(loss),
        };
        Frame::missing(lost_stack_name(kernel, loss), missing)
    }

    /// Whether the frame is in the C library or the C/C++ runtime (`libc.so.6`,
    /// `libpthread`, the dynamic loader, `libstdc++`, `libgcc_s`): wrappers around the
    /// system call a program waits in, rarely the code to look at.
    pub fn in_system_library(&self) -> bool {
        const LIBRARIES: [&str; 6] = [
            "libc.so",
            "libc-",
            "libpthread",
            "ld-linux",
            "libstdc++",
            "libgcc_s",
        ];
        self.module.as_deref().is_some_and(|module| {
            let file = module.rsplit('/').next().unwrap_or(module);
            LIBRARIES.iter().any(|library| file.starts_with(library))
        })
    }

    /// The frame's name as written in folded stacks: kernel frames carry inferno's `_[k]`
    /// suffix, inlined ones `_[i]`.
    pub fn label(&self) -> String {
        // `;` separates frames and a line ends at the weight: keep names from breaking either.
        let name: String = self
            .function
            .chars()
            .map(|c| match c {
                ';' => ':',
                '\n' | '\r' => ' ',
                c => c,
            })
            .collect();
        if self.kind.is_kernel() {
            format!("{name}_[k]")
        } else if self.kind == FrameKind::Inlined {
            format!("{name}_[i]")
        } else {
            name
        }
    }
}

fn lost_stack_name(kernel: bool, loss: StackLoss) -> String {
    let side = if kernel { "kernel" } else { "user" };
    match loss {
        StackLoss::Collision => format!("[{side} stack lost: stack map collision]"),
        StackLoss::Unavailable => format!("[{side} stack unavailable]"),
        StackLoss::MapFull => format!("[{side} stack lost: stack map full]"),
        StackLoss::NotWalked => format!("[{side} stack not walked under stack sampling]"),
    }
}

/// Functions a complete user stack starts in: the program's entry and thread starts.
pub fn is_entry_function(function: &str) -> bool {
    matches!(
        function,
        "_start"
            | "__libc_start_main"
            | "__libc_start_main_impl"
            | "__libc_start_call_main"
            | "clone"
            | "__clone"
            | "clone3"
            | "__clone3"
            | "start_thread"
            | "thread_start"
            // Go: the bottom of every goroutine's stack, and of a runtime thread's own.
            | "runtime.goexit"
            | "runtime.goexit.abi0"
            | "runtime.mstart"
            | "runtime.mstart.abi0"
    )
}

/// Side of the saved form's `kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum SavedKind {
    User,
    Kernel,
    Jit,
    Interpreted,
}

/// A frame as `profile.json.gz` has always stored it: a side and two flags, missing frames
/// told by their names. Only loading and saving see this.
#[derive(Clone, Serialize, Deserialize)]
struct SavedFrame {
    function: String,
    module: Option<String>,
    file: Option<String>,
    line: Option<u32>,
    kind: SavedKind,
    inlined: bool,
    unsymbolized: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    file_offset: Option<u64>,
}

impl From<SavedFrame> for Frame {
    fn from(saved: SavedFrame) -> Frame {
        let kernel = saved.kind == SavedKind::Kernel;
        let lost = |loss| match kernel {
            true => Missing::KernelStack(loss),
            false => Missing::UserStack(loss),
        };
        let kind = match saved.kind {
            SavedKind::Jit => FrameKind::Jit,
            SavedKind::Interpreted => FrameKind::Interpreted,
            _ if saved.unsymbolized => {
                // The saved form tells missing frames by their names alone.
                let name = saved.function.as_str();
                let loss = [
                    StackLoss::Collision,
                    StackLoss::Unavailable,
                    StackLoss::MapFull,
                    StackLoss::NotWalked,
                ]
                .into_iter()
                .find(|&loss| name == lost_stack_name(kernel, loss));
                match loss {
                    Some(loss) => FrameKind::Missing(lost(loss)),
                    None if name.starts_with(TRUNCATED_STACK) && !kernel => {
                        FrameKind::Missing(Missing::Truncated)
                    }
                    None => FrameKind::Unsymbolized {
                        kernel,
                        file_offset: saved.file_offset,
                    },
                }
            }
            SavedKind::Kernel => FrameKind::Kernel,
            SavedKind::User if saved.inlined => FrameKind::Inlined,
            SavedKind::User => FrameKind::User,
        };
        Frame {
            function: saved.function,
            module: saved.module,
            file: saved.file,
            line: saved.line,
            kind,
        }
    }
}

impl From<Frame> for SavedFrame {
    fn from(frame: Frame) -> SavedFrame {
        let kind = match frame.kind {
            FrameKind::Jit => SavedKind::Jit,
            FrameKind::Interpreted => SavedKind::Interpreted,
            kind if kind.is_kernel() => SavedKind::Kernel,
            _ => SavedKind::User,
        };
        let file_offset = match frame.kind {
            FrameKind::Unsymbolized { file_offset, .. } => file_offset,
            _ => None,
        };
        SavedFrame {
            file_offset,
            inlined: frame.kind == FrameKind::Inlined,
            unsymbolized: frame.kind.is_unnamed(),
            function: frame.function,
            module: frame.module,
            file: frame.file,
            line: frame.line,
            kind,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_survives_the_saved_form() {
        let kinds = [
            ("main", FrameKind::User),
            ("helper", FrameKind::Inlined),
            ("schedule", FrameKind::Kernel),
            ("Hot.hotA", FrameKind::Jit),
            ("parse_row", FrameKind::Interpreted),
            (
                "[libz.so.1]",
                FrameKind::Unsymbolized {
                    kernel: false,
                    file_offset: None,
                },
            ),
            (
                "prog+0x1139",
                FrameKind::Unsymbolized {
                    kernel: false,
                    file_offset: Some(0x1139),
                },
            ),
            (
                "[unknown]",
                FrameKind::Unsymbolized {
                    kernel: true,
                    file_offset: None,
                },
            ),
            (
                "[stack truncated: unreadable frame]",
                FrameKind::Missing(Missing::Truncated),
            ),
            (
                "[user stack lost: stack map collision]",
                FrameKind::Missing(Missing::UserStack(StackLoss::Collision)),
            ),
            (
                "[kernel stack unavailable]",
                FrameKind::Missing(Missing::KernelStack(StackLoss::Unavailable)),
            ),
        ];
        for (function, kind) in kinds {
            let frame = Frame {
                function: function.into(),
                module: None,
                file: None,
                line: None,
                kind,
            };
            let json = serde_json::to_string(&frame).unwrap();
            assert_eq!(
                serde_json::from_str::<Frame>(&json).unwrap(),
                frame,
                "{json}"
            );
        }
    }
}
