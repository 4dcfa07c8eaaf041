//! Names of Python functions, read from a live interpreter's code objects.

use super::layout::Layout;

/// Longest name or file name read, characters: longer ones are cut.
const MAX_STRING_CHARS: u64 = 1024;

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

/// Reads `len` bytes at `address` of process `pid`, or nothing if any of them is unreadable.
fn read_memory(pid: u32, address: u64, len: usize) -> Option<Vec<u8>> {
    let mut bytes = vec![0u8; len];
    let local = libc::iovec {
        iov_base: bytes.as_mut_ptr().cast(),
        iov_len: len,
    };
    let remote = libc::iovec {
        iov_base: address as *mut libc::c_void,
        iov_len: len,
    };
    // SAFETY: `local` covers `bytes`, which outlives the call; the remote side is only read
    // by the kernel, which checks it.
    let read = unsafe { libc::process_vm_readv(pid as libc::pid_t, &local, 1, &remote, 1, 0) };
    (read == len as isize).then_some(bytes)
}

fn u64_at(bytes: &[u8], offset: u32) -> Option<u64> {
    let offset = offset as usize;
    Some(u64::from_le_bytes(
        bytes.get(offset..offset + 8)?.try_into().ok()?,
    ))
}

fn u32_at(bytes: &[u8], offset: u32) -> Option<u32> {
    let offset = offset as usize;
    Some(u32::from_le_bytes(
        bytes.get(offset..offset + 4)?.try_into().ok()?,
    ))
}

/// The function of the code object at `code` in process `pid`, if it is one: its type must
/// be `code_type` (`PyCode_Type` there), so a freed or reused address names nothing.
pub fn read_function(
    pid: u32,
    code: u64,
    code_type: u64,
    layout: &Layout,
) -> Option<PythonFunction> {
    const OB_TYPE: u32 = 8;
    let header_len = layout.code_qualname.max(layout.code_filename) + 8;
    let header = read_memory(pid, code, header_len as usize)?;
    if u64_at(&header, OB_TYPE)? != code_type {
        return None;
    }
    Some(PythonFunction {
        qualname: read_string(pid, u64_at(&header, layout.code_qualname)?, layout)?,
        file: read_string(pid, u64_at(&header, layout.code_filename)?, layout)?,
        first_line: u32_at(&header, layout.code_first_line)?,
    })
}

/// A `str` object's text: compact strings only (what the compiler makes of names).
fn read_string(pid: u32, string: u64, layout: &Layout) -> Option<String> {
    let header = read_memory(pid, string, layout.compact_data as usize)?;
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
    let bytes = read_memory(
        pid,
        string + u64::from(data),
        (chars * u64::from(width)) as usize,
    )?;
    let text = match width {
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
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_memory_reads_nothing() {
        let layout = super::super::layout::layout((3, 11)).unwrap();
        assert_eq!(read_memory(std::process::id(), 0, 8), None);
        assert_eq!(read_function(std::process::id(), 8, 1, layout), None);
    }

    #[test]
    fn reads_own_memory() {
        let value = 0x1122_3344_5566_7788u64;
        let bytes = read_memory(std::process::id(), &value as *const u64 as u64, 8).unwrap();
        assert_eq!(u64_at(&bytes, 0), Some(value));
    }
}
