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

/// Most bytes of note segments searched for a build-id, all segments together (a GNU build-id
/// note is 36 bytes; each segment read is kept until the headers are parsed, and a hostile
/// file could have thousands).
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
    let Ok(endian) = header.endian() else {
        return Headers::default();
    };
    // More program headers than the field holds are counted elsewhere (`PN_XNUM`), up to
    // 2^32: no object has so many, and a hostile one would have them all read.
    if header.e_phnum.get(endian) == elf::PN_XNUM {
        return Headers::default();
    }
    let Ok(program_headers) = header.program_headers(endian, &data) else {
        return Headers::default();
    };
    let mut headers = Headers::default();
    let mut notes_budget = MAX_NOTES_BYTES;
    for program_header in program_headers {
        let (file_offset, file_size) = program_header.file_range(endian);
        match program_header.p_type(endian) {
            elf::PT_LOAD => headers.segments.push(Segment {
                file_offset,
                address: program_header.p_vaddr(endian),
                file_size,
                executable: program_header.p_flags(endian) & elf::PF_X != 0,
            }),
            elf::PT_NOTE if headers.build_id.is_none() && file_size <= notes_budget => {
                notes_budget -= file_size;
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

    /// An ELF64 file whose program headers are `notes` PT_NOTE segments of `note_size` zero
    /// bytes each, then one holding a GNU build-id note `\x01\x02\x03\x04`.
    fn elf_with_notes(notes: usize, note_size: usize) -> std::fs::File {
        let phnum = notes + 1;
        let data_at = 64 + 56 * phnum;
        let mut bytes = vec![0u8; 64];
        bytes[..4].copy_from_slice(b"\x7fELF");
        bytes[4] = 2; // 64-bit
        bytes[5] = 1; // little-endian
        bytes[6] = 1; // version
        bytes[16..18].copy_from_slice(&3u16.to_le_bytes()); // ET_DYN
        bytes[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
        bytes[20..24].copy_from_slice(&1u32.to_le_bytes());
        bytes[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        bytes[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
        bytes[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        bytes[56..58].copy_from_slice(&(phnum as u16).to_le_bytes());
        let build_id_note: Vec<u8> = [4u32, 4, object::elf::NT_GNU_BUILD_ID]
            .iter()
            .flat_map(|word| word.to_le_bytes())
            .chain(*b"GNU\0")
            .chain([1, 2, 3, 4])
            .collect();
        let build_id_at = data_at + notes * note_size;
        for index in 0..phnum {
            let (offset, size) = if index < notes {
                (data_at + index * note_size, note_size)
            } else {
                (build_id_at, build_id_note.len())
            };
            let mut header = vec![0u8; 56];
            header[..4].copy_from_slice(&object::elf::PT_NOTE.to_le_bytes());
            header[8..16].copy_from_slice(&(offset as u64).to_le_bytes());
            header[32..40].copy_from_slice(&(size as u64).to_le_bytes());
            header[40..48].copy_from_slice(&(size as u64).to_le_bytes());
            header[48..56].copy_from_slice(&4u64.to_le_bytes());
            bytes.extend(header);
        }
        bytes.resize(build_id_at, 0);
        bytes.extend(build_id_note);
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, &bytes).unwrap();
        file
    }

    #[test]
    fn note_segments_are_read_within_one_budget_for_all() {
        assert_eq!(
            headers(&elf_with_notes(3, 1024)).build_id.as_deref(),
            Some(&[1, 2, 3, 4][..])
        );
        // Four segments of 16 KiB use up the budget: the build-id after them is not read (a
        // hostile file with thousands of them made the collector hold gigabytes).
        assert_eq!(headers(&elf_with_notes(4, 16 * 1024)).build_id, None);
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
