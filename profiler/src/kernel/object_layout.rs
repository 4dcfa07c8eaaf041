//! Where an ELF object's loadable segments go in its address space, and the load bias of a
//! process's mapping of one: what relates a process address to the object's own.

use object::{Object as _, ObjectSegment as _};

/// A loadable segment: where its file bytes go in the object's address space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Segment {
    pub file_offset: u64,
    pub address: u64,
    pub file_size: u64,
    pub executable: bool,
}

/// The loadable segments of an ELF object (empty if it is not one).
pub(super) fn segments(bytes: &[u8]) -> Vec<Segment> {
    let Ok(file) = object::File::parse(bytes) else {
        return Vec::new();
    };
    file.segments()
        .map(|segment| {
            let (file_offset, file_size) = segment.file_range();
            Segment {
                file_offset,
                address: segment.address(),
                file_size,
                executable: matches!(
                    segment.flags(),
                    object::SegmentFlags::Elf { p_flags } if p_flags & object::elf::PF_X != 0
                ),
            }
        })
        .collect()
}

/// The bias of a mapping of file offset `file_offset` at `start`: object address = process
/// address - bias. Mappings start on a page, segments need not: compare page-aligned.
pub(super) fn load_bias(segments: &[Segment], start: u64, file_offset: u64) -> Option<u64> {
    const PAGE: u64 = 4096;
    let aligned = |segment: &&Segment| segment.file_offset & !(PAGE - 1);
    // The segment the mapping starts: segments sharing a page with the one before overlap it
    // in file offsets, so an exact start wins over containment.
    let segment = segments
        .iter()
        .find(|segment| aligned(segment) == file_offset)
        .or_else(|| {
            segments.iter().find(|segment| {
                aligned(segment) <= file_offset
                    && file_offset < segment.file_offset + segment.file_size.max(1)
            })
        })?;
    let aligned_offset = segment.file_offset & !(PAGE - 1);
    let aligned_address = segment.address - (segment.file_offset - aligned_offset);
    Some(start.wrapping_sub(aligned_address + (file_offset - aligned_offset)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bias_of_a_pie_text_mapping() {
        // A PIE whose text segment sits at file offset 0x1000, address 0x1000, mapped at
        // 0x5555_5555_5000 with offset 0x1000: bias is the load address 0x5555_5555_4000.
        let segments = [
            Segment {
                file_offset: 0,
                address: 0,
                file_size: 0x800,
                executable: false,
            },
            Segment {
                file_offset: 0x1000,
                address: 0x1000,
                file_size: 0x2345,
                executable: false,
            },
        ];
        assert_eq!(
            load_bias(&segments, 0x5555_5555_5000, 0x1000),
            Some(0x5555_5555_4000)
        );
    }

    #[test]
    fn bias_of_an_unaligned_segment() {
        // libc-style: text at file offset 0x28000 but address 0x28000 + 0x1000 would be a
        // shifted layout; here the segment's offset is not page-aligned.
        let segments = [Segment {
            file_offset: 0x28040,
            address: 0x29040,
            file_size: 0x10000,
            executable: false,
        }];
        // Mapped from offset 0x28000 at 0x7f00_0002_9000: address 0x29000 is there.
        assert_eq!(
            load_bias(&segments, 0x7f00_0002_9000, 0x28000),
            Some(0x7f00_0000_0000)
        );
        assert_eq!(load_bias(&segments, 0x7f00_0002_9000, 0x50000), None);
    }

    #[test]
    fn bias_when_segments_share_a_page() {
        // rustc-linked PIE: the read-only segment's file range runs into the page where the
        // text segment starts (offset 0x16f70, address 0x17f70), mapped from offset 0x16000.
        let segments = [
            Segment {
                file_offset: 0,
                address: 0,
                file_size: 0x16f6c,
                executable: false,
            },
            Segment {
                file_offset: 0x16f70,
                address: 0x17f70,
                file_size: 0x3fb70,
                executable: false,
            },
        ];
        assert_eq!(
            load_bias(&segments, 0x55e6_c67a_7000, 0x16000),
            Some(0x55e6_c679_0000)
        );
    }
}
