//! Names of Python functions, read from a live interpreter's code objects.

use super::layout::Layout;
use crate::le;

/// Longest name or file name read, characters: longer ones are cut.
const MAX_STRING_CHARS: u64 = 256;

/// A Python function as its code object names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PythonFunction {
    /// Qualified name (`Class.method`, `outer.<locals>.inner`).
    pub qualname: String,
    /// Source file, as the interpreter was given it.
    pub file: String,
    /// Line of the `def`.
    pub first_line: u32,
}

/// A process's memory, opened while it ran the interpreter found in it: `/proc/PID/mem` holds
/// that address space, so reads fail once the process has exited or executed another program
/// (its pid reused or not), instead of reading whatever has the pid now.
#[derive(Debug)]
pub struct ProcessMemory(std::fs::File);

impl ProcessMemory {
    /// Opens `pid`'s memory for reading.
    pub fn open(pid: u32) -> std::io::Result<Self> {
        let path = format!("/proc/{pid}/mem");
        crate::target::open::open_at(None, &path, libc::O_RDONLY | libc::O_NOFOLLOW)
            .map(|fd| ProcessMemory(fd.into()))
    }

    /// `len` bytes at `address`, or nothing if any of them is unreadable.
    fn read(&self, address: u64, len: usize) -> Option<Vec<u8>> {
        use std::os::unix::fs::FileExt as _;
        let mut bytes = vec![0u8; len];
        self.0.read_exact_at(&mut bytes, address).ok()?;
        Some(bytes)
    }
}

/// The `u64` at byte `offset` of `bytes`.
fn u64_at(bytes: &[u8], offset: u32) -> Option<u64> {
    le::u64_at(bytes, offset as usize)
}

/// The `u32` at byte `offset` of `bytes`.
fn u32_at(bytes: &[u8], offset: u32) -> Option<u32> {
    le::u32_at(bytes, offset as usize)
}

/// The function of the code object at `code` in `memory`, if it is one: its type must be
/// `code_type` (`PyCode_Type` there), so a freed or reused address names nothing.
pub fn read_function(
    memory: &ProcessMemory,
    code: u64,
    code_type: u64,
    layout: &Layout,
) -> Option<PythonFunction> {
    const OB_TYPE: u32 = 8;
    let header_len = layout.code_qualname.max(layout.code_filename) + 8;
    let header = memory.read(code, header_len as usize)?;
    if u64_at(&header, OB_TYPE)? != code_type {
        return None;
    }
    Some(PythonFunction {
        qualname: read_string(memory, u64_at(&header, layout.code_qualname)?, layout)?,
        file: read_string(memory, u64_at(&header, layout.code_filename)?, layout)?,
        first_line: u32_at(&header, layout.code_first_line)?,
    })
}

/// A `str` object's text: compact strings only (what the compiler makes of names); control
/// characters, which the target chose and a terminal would act on, replaced.
fn read_string(memory: &ProcessMemory, string: u64, layout: &Layout) -> Option<String> {
    let header = memory.read(string, layout.compact_data as usize)?;
    let length = u64_at(&header, layout.unicode_length)?;
    let state = u32_at(&header, layout.unicode_state)?;
    let kind = (state >> 2) & 7;
    let compact = state & (1 << 5) != 0;
    let ascii = state & (1 << 6) != 0;
    if !compact {
        return None;
    }
    let chars = length.min(MAX_STRING_CHARS);
    let (data, width) = if ascii {
        (layout.ascii_data, 1)
    } else {
        (layout.compact_data, kind)
    };
    if !matches!(width, 1 | 2 | 4) {
        return None;
    }
    let bytes = memory.read(
        string.checked_add(u64::from(data))?,
        (chars * u64::from(width)) as usize,
    )?;
    let text: String = match width {
        1 => bytes.iter().map(|&b| char::from(b)).collect(),
        2 => char::decode_utf16(
            bytes
                .chunks_exact(2)
                .map(|pair| u16::from_le_bytes([pair[0], pair[1]])),
        )
        .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
        .collect(),
        _ => bytes
            .chunks_exact(4)
            .map(|quad| {
                char::from_u32(u32::from_le_bytes([quad[0], quad[1], quad[2], quad[3]]))
                    .unwrap_or(char::REPLACEMENT_CHARACTER)
            })
            .collect(),
    };
    Some(
        text.chars()
            .map(|c| {
                if c.is_control() {
                    char::REPLACEMENT_CHARACTER
                } else {
                    c
                }
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_memory_reads_nothing() {
        let layout = super::super::layout::layout((3, 11)).unwrap();
        let memory = ProcessMemory::open(std::process::id()).unwrap();
        assert_eq!(memory.read(0, 8), None);
        assert_eq!(read_function(&memory, 8, 1, layout), None);
    }

    #[test]
    fn reads_own_memory() {
        let value = 0x1122_3344_5566_7788u64;
        let memory = ProcessMemory::open(std::process::id()).unwrap();
        let bytes = memory.read(&value as *const u64 as u64, 8).unwrap();
        assert_eq!(u64_at(&bytes, 0), Some(value));
    }

    #[test]
    fn a_process_gone_reads_nothing() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let memory = ProcessMemory::open(child.id()).unwrap();
        // The stack of a live process is readable; of one gone, nothing is.
        let maps = std::fs::read_to_string(format!("/proc/{}/maps", child.id())).unwrap();
        let stack = maps
            .lines()
            .find(|line| line.ends_with("[stack]"))
            .and_then(|line| u64::from_str_radix(line.split('-').next()?, 16).ok())
            .unwrap();
        assert!(memory.read(stack, 8).is_some());
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(memory.read(stack, 8), None);
    }
}
