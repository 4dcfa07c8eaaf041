//! Names for code no symbol covers (stripped programs, a library's internal functions): the
//! object and the file offset of the function the address is in, `prog+0x1139`. Each function
//! keeps a frame of its own, and the profile can be symbolized later against debug files (the
//! pprof export carries the object's build-id). Function bounds come from the call-frame
//! information (`.eh_frame` FDEs), which `strip` keeps; without it, the address's own offset.

use gimli::{BaseAddresses, CieOrFde, EhFrame, LittleEndian, UnwindSection as _};
use object::{Object as _, ObjectSection as _, ObjectSegment as _};

use crate::model::Segment;

/// Most functions kept for one object.
const MAX_FUNCTIONS: usize = 4 << 20;

/// The functions of one object, as file-offset ranges, sorted.
#[derive(Debug, Default)]
pub struct FunctionBounds {
    ranges: Vec<(u64, u64)>,
    /// The object's loadable segments.
    pub segments: Vec<Segment>,
    /// The file offset of the object's entry point (`e_entry`), for an executable.
    entry: Option<u64>,
}

impl FunctionBounds {
    /// The bounds described by `elf`'s `.eh_frame`; empty when it has none.
    pub fn read(elf: &[u8]) -> FunctionBounds {
        let Ok(file) = object::File::parse(elf) else {
            return FunctionBounds::default();
        };
        let Some(section) = file.section_by_name(".eh_frame") else {
            return FunctionBounds::default();
        };
        let Ok(data) = section.data() else {
            return FunctionBounds::default();
        };
        let mut bases = BaseAddresses::default().set_eh_frame(section.address());
        if let Some(text) = file.section_by_name(".text") {
            bases = bases.set_text(text.address());
        }
        // Addresses to file offsets through the loadable segments.
        let segments: Vec<Segment> = file
            .segments()
            .filter_map(|segment| {
                let (file_offset, size) = segment.file_range();
                (size > 0).then(|| Segment {
                    file_offset,
                    address: segment.address(),
                    size,
                })
            })
            .collect();
        let to_offset = |address: u64| {
            segments.iter().find_map(|segment| {
                let within = address.checked_sub(segment.address)?;
                (within < segment.size).then(|| segment.file_offset.saturating_add(within))
            })
        };
        let eh_frame = EhFrame::new(data, LittleEndian);
        let mut ranges = Vec::new();
        let mut entries = eh_frame.entries(&bases);
        while let Ok(Some(entry)) = entries.next() {
            let CieOrFde::Fde(partial) = entry else {
                continue;
            };
            let Ok(fde) = partial.parse(EhFrame::cie_from_offset) else {
                continue;
            };
            if let Some(start) = to_offset(fde.initial_address())
                && fde.len() > 0
            {
                ranges.push((start, start.saturating_add(fde.len())));
            }
            if ranges.len() >= MAX_FUNCTIONS {
                break;
            }
        }
        ranges.sort_unstable();
        let entry = (file.kind() == object::ObjectKind::Executable || file.entry() != 0)
            .then(|| to_offset(file.entry()))
            .flatten();
        FunctionBounds {
            ranges,
            segments,
            entry,
        }
    }

    /// The file offset of the object's entry point, when it has one.
    pub fn entry_point(&self) -> Option<u64> {
        self.entry
    }

    /// The file offset of the entry of the function containing `file_offset`.
    pub fn entry_of(&self, file_offset: u64) -> Option<u64> {
        let index = self
            .ranges
            .partition_point(|&(start, _)| start <= file_offset);
        let (start, end) = *self.ranges.get(index.checked_sub(1)?)?;
        (file_offset < end).then_some(start)
    }
}

/// The name of unsymbolized code at `file_offset` of `module`: `module+0xOFFSET`.
pub fn name(module: &str, file_offset: u64) -> String {
    format!("{module}+{file_offset:#x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn a_function_to_find() -> u64 {
        std::hint::black_box(11)
    }

    #[test]
    fn finds_the_entry_of_a_function_of_this_program() {
        assert_eq!(a_function_to_find(), 11);
        let pid = std::process::id();
        let mut spaces = crate::stacks::address_space::AddressSpaces::default();
        spaces.refresh(pid).unwrap();
        let entry = a_function_to_find as *const () as u64;
        let crate::stacks::address_space::Location::File {
            object,
            file_offset,
        } = spaces.locate(pid, entry)
        else {
            panic!("own code not in a file");
        };
        let bytes = std::fs::read(spaces.objects()[object].held_path().unwrap()).unwrap();
        let bounds = FunctionBounds::read(&bytes);
        assert_eq!(bounds.entry_of(file_offset), Some(file_offset));
        assert_eq!(bounds.entry_of(file_offset + 1), Some(file_offset));
        assert_eq!(name("prog", file_offset), format!("prog+{file_offset:#x}"));
        // The test binary starts at `_start`, described by the call-frame information too.
        let start = bounds
            .entry_point()
            .expect("an executable has an entry point");
        assert_eq!(bounds.entry_of(start), Some(start));
    }

    #[test]
    fn nothing_is_found_without_call_frame_information() {
        assert_eq!(
            FunctionBounds::read(b"not an object").entry_of(0x1000),
            None
        );
        let bounds = FunctionBounds {
            ranges: vec![(0x1000, 0x1010), (0x1020, 0x1030)],
            segments: Vec::new(),
            entry: None,
        };
        assert_eq!(bounds.entry_of(0x1015), None);
        assert_eq!(bounds.entry_of(0x1025), Some(0x1020));
        assert_eq!(bounds.entry_of(0x0fff), None);
    }
}
