//! Little-endian integers in byte slices read from files and memory the profiler does not
//! trust (a runtime's jitdump, an interpreter's structures): none when the slice is too short.

/// The `u32` at byte `at`.
pub fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        bytes.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

/// The `u64` at byte `at`.
pub fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        bytes.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_within_the_slice_only() {
        let bytes = [1, 0, 0, 0, 2, 0, 0, 0, 3];
        assert_eq!(u32_at(&bytes, 4), Some(2));
        assert_eq!(u64_at(&bytes, 0), Some(0x2_0000_0001));
        assert_eq!(u32_at(&bytes, 6), None);
        assert_eq!(u64_at(&bytes, usize::MAX), None);
    }
}
