//! Where an ELF object's loadable segments go in its address space, and the load bias of a
//! process's mapping of one: what relates a process address to the object's own.

/// A loadable segment: where its file bytes go in the object's address space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Segment {
    pub file_offset: u64,
    pub address: u64,
    pub file_size: u64,
    pub executable: bool,
}

/// What the unwinder needs of an object besides its table: its build-id (what the table
/// cache knows it by) and its loadable segments.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Headers {
    pub build_id: Option<Vec<u8>>,
    pub segments: Vec<Segment>,
}

/// Note segments larger than this are not searched for a build-id (a GNU build-id note is 36
/// bytes; a hostile file could claim gigabytes).
const MAX_NOTES_BYTES: u64 = 64 * 1024;

/// The build-id and loadable segments of a 64-bit ELF object (empty if it is not one), from
/// its file header, program headers and note segments only: a few pages of a file that may
/// be hundreds of MB, all that is read when its table comes from the cache.
pub(super) fn headers(file: &std::fs::File) -> Headers {
    use object::{
        elf,
        read::elf::{FileHeader as _, ProgramHeader as _},
    };

    let data = object::ReadCache::new(file);
    let Ok(header) = elf::FileHeader64::<object::Endianness>::parse(&data) else {
        return Headers::default();
    };
    let Ok((endian, program_headers)) = header
        .endian()
        .and_then(|endian| Ok((endian, header.program_headers(endian, &data)?)))
    else {
        return Headers::default();
    };
    let mut headers = Headers::default();
    for program_header in program_headers {
        let (file_offset, file_size) = program_header.file_range(endian);
        match program_header.p_type(endian) {
            elf::PT_LOAD => headers.segments.push(Segment {
                file_offset,
                address: program_header.p_vaddr(endian),
                file_size,
                executable: program_header.p_flags(endian) & elf::PF_X != 0,
            }),
            elf::PT_NOTE if headers.build_id.is_none() && file_size <= MAX_NOTES_BYTES => {
                let Ok(Some(mut notes)) = program_header.notes(endian, &data) else {
                    continue;
                };
                while let Ok(Some(note)) = notes.next() {
                    if note.name() == elf::ELF_NOTE_GNU
                        && note.n_type(endian) == elf::NT_GNU_BUILD_ID
                    {
                        headers.build_id = Some(note.desc().to_vec());
                        break;
                    }
                }
            }
            _ => {}
        }
    }
    headers
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
    use object::{Object as _, ObjectSegment as _};

    use super::*;

    #[test]
    fn headers_say_what_the_whole_file_says() {
        // The test program itself, libc, and the dynamic loader: what the headers alone give
        // is what parsing the whole file gives.
        let mut paths = vec![std::env::current_exe().unwrap()];
        paths.extend(
            std::fs::read_to_string("/proc/self/maps")
                .unwrap()
                .lines()
                .filter_map(|line| line.split_whitespace().nth(5))
                .filter(|path| path.contains("libc.so") || path.contains("ld-linux"))
                .map(std::path::PathBuf::from),
        );
        paths.dedup();
        assert!(paths.len() >= 2, "{paths:?}");
        for path in paths {
            let bytes = std::fs::read(&path).unwrap();
            let whole = object::File::parse(&*bytes).unwrap();
            let segments: Vec<Segment> = whole
                .segments()
                .map(|segment| Segment {
                    file_offset: segment.file_range().0,
                    address: segment.address(),
                    file_size: segment.file_range().1,
                    executable: matches!(
                        segment.flags(),
                        object::SegmentFlags::Elf { p_flags } if p_flags & object::elf::PF_X != 0
                    ),
                })
                .collect();
            let headers = headers(&std::fs::File::open(&path).unwrap());
            assert_eq!(headers.segments, segments, "{}", path.display());
            assert!(headers.segments.iter().any(|segment| segment.executable));
            assert_eq!(
                headers.build_id.as_deref(),
                whole.build_id().unwrap(),
                "{}",
                path.display()
            );
        }
    }

    #[test]
    fn headers_of_what_is_not_an_object_are_empty() {
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, b"\x7fELF but not really").unwrap();
        assert_eq!(headers(&file), Headers::default());
    }

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
