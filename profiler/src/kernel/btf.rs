//! Offsets of kernel struct fields, read from the kernel's BTF (`/sys/kernel/btf/vmlinux`).
//!
//! The eBPF programs read a few `task_struct` fields whose offsets differ between kernel builds.
//! Rust eBPF has no CO-RE relocations, so the collector looks the offsets up here and hands them
//! to the programs as load-time constants. Only the small part of the BTF format needed to walk
//! struct members is parsed (format: the kernel's `Documentation/bpf/btf.rst`).

use std::collections::HashMap;

/// Path of the running kernel's BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;

/// Errors looking up a field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BtfError {
    /// The data is not BTF or is truncated.
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    /// No struct of that name with that member.
    #[error("no member `{member}` in struct `{name}` in the kernel's BTF")]
    NotFound {
        /// Struct name.
        name: String,
        /// Member name.
        member: String,
    },
}

struct Reader<'a> {
    data: &'a [u8],
}

impl Reader<'_> {
    fn u32_at(&self, at: usize) -> Result<u32, BtfError> {
        let bytes = self
            .data
            .get(at..at + 4)
            .ok_or(BtfError::Malformed("truncated"))?;
        Ok(u32::from_le_bytes(bytes.try_into().expect("4 bytes")))
    }
}

/// A struct or union member.
struct Member {
    name_off: u32,
    type_id: u32,
    bit_offset: u32,
}

/// The structs and unions of a BTF blob, indexed for member lookups.
pub struct KernelTypes<'a> {
    strings: &'a [u8],
    /// Type id → members, for structs and unions.
    composites: HashMap<u32, (u32, Vec<Member>)>,
}

impl<'a> KernelTypes<'a> {
    /// Indexes a little-endian BTF blob.
    pub fn parse(data: &'a [u8]) -> Result<Self, BtfError> {
        let reader = Reader { data };
        let magic = u16::from_le_bytes(
            data.get(0..2)
                .ok_or(BtfError::Malformed("truncated"))?
                .try_into()
                .expect("2 bytes"),
        );
        if magic != BTF_MAGIC {
            return Err(BtfError::Malformed("bad magic (not little-endian BTF)"));
        }
        let header_len = reader.u32_at(4)? as usize;
        let type_off = reader.u32_at(8)? as usize;
        let type_len = reader.u32_at(12)? as usize;
        let str_off = reader.u32_at(16)? as usize;
        let str_len = reader.u32_at(20)? as usize;
        let types_start = header_len + type_off;
        let types_end = types_start + type_len;
        let strings = data
            .get(header_len + str_off..header_len + str_off + str_len)
            .ok_or(BtfError::Malformed("string section out of bounds"))?;
        if types_end > data.len() {
            return Err(BtfError::Malformed("type section out of bounds"));
        }
        let mut composites = HashMap::new();
        let mut at = types_start;
        let mut type_id = 1;
        while at < types_end {
            let name_off = reader.u32_at(at)?;
            let info = reader.u32_at(at + 4)?;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let kind_flag = info >> 31 == 1;
            at += 12;
            let extra = match kind {
                1 | 14 | 17 => 4,             // INT, VAR, DECL_TAG
                3 => 12,                      // ARRAY
                4 | 5 | 15 | 19 => 12 * vlen, // STRUCT, UNION, DATASEC, ENUM64
                6 | 13 => 8 * vlen,           // ENUM, FUNC_PROTO
                2 | 7 | 8 | 9 | 10 | 11 | 12 | 16 | 18 => 0,
                _ => return Err(BtfError::Malformed("unknown type kind")),
            };
            if kind == KIND_STRUCT || kind == KIND_UNION {
                let mut members = Vec::with_capacity(vlen);
                for index in 0..vlen {
                    let base = at + 12 * index;
                    let offset = reader.u32_at(base + 8)?;
                    members.push(Member {
                        name_off: reader.u32_at(base)?,
                        type_id: reader.u32_at(base + 4)?,
                        // With kind_flag the top 8 bits hold a bitfield size.
                        bit_offset: if kind_flag {
                            offset & 0x00ff_ffff
                        } else {
                            offset
                        },
                    });
                }
                composites.insert(type_id, (name_off, members));
            }
            at += extra;
            type_id += 1;
        }
        Ok(KernelTypes {
            strings,
            composites,
        })
    }

    fn name(&self, offset: u32) -> &str {
        let tail = self.strings.get(offset as usize..).unwrap_or_default();
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        std::str::from_utf8(&tail[..end]).unwrap_or("")
    }

    /// Byte offset of `member` in struct `name`, looking through anonymous struct/union members.
    pub fn member_offset(&self, name: &str, member: &str) -> Result<u32, BtfError> {
        self.member_bit_offset(name, member).map(|bits| bits / 8)
    }

    /// Bit offset of `member` in struct `name`: where a bitfield is.
    pub fn member_bit_offset(&self, name: &str, member: &str) -> Result<u32, BtfError> {
        self.composites
            .iter()
            .filter(|(_, (name_off, members))| self.name(*name_off) == name && !members.is_empty())
            .find_map(|(&id, _)| self.find_member(id, member, 0))
            .ok_or_else(|| BtfError::NotFound {
                name: name.to_owned(),
                member: member.to_owned(),
            })
    }

    /// Byte offsets of several members, or all 0 when one is missing (another kernel's
    /// layout): for features the programs skip when their offsets are 0.
    pub fn all_or_none<const N: usize>(&self, members: [(&str, &str); N]) -> [u32; N] {
        let mut offsets = [0; N];
        for (slot, (name, member)) in offsets.iter_mut().zip(members) {
            match self.member_offset(name, member) {
                Ok(offset) => *slot = offset,
                Err(_) => return [0; N],
            }
        }
        offsets
    }

    fn find_member(&self, type_id: u32, member: &str, base_bits: u32) -> Option<u32> {
        let (_, members) = self.composites.get(&type_id)?;
        for field in members {
            let bits = base_bits + field.bit_offset;
            if field.name_off != 0 && self.name(field.name_off) == member {
                return Some(bits);
            }
            if field.name_off == 0
                && let Some(found) = self.find_member(field.type_id, member, bits)
            {
                return Some(found);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// BTF with `struct task { int pid; union { int x; int tgid; }; }` (tgid at byte 4) and
    /// `struct flags { int low: 1; int high: 1; }` (`high` at bit 9).
    fn tiny_btf() -> Vec<u8> {
        let strings = b"\0int\0task\0pid\0x\0tgid\0flags\0low\0high\0";
        let name = |s: &str| {
            let pos = strings
                .windows(s.len() + 1)
                .position(|w| &w[..s.len()] == s.as_bytes() && w[s.len()] == 0)
                .unwrap();
            pos as u32
        };
        let mut types: Vec<u32> = Vec::new();
        // 1: int
        types.extend([name("int"), 1 << 24, 4, 32]);
        // 2: anonymous union { int x; int tgid; }
        types.extend([0, (5 << 24) | 2, 4, name("x"), 1, 0, name("tgid"), 1, 0]);
        // 3: struct task { int pid; <union> @32 bits }
        types.extend([name("task"), (4 << 24) | 2, 8, name("pid"), 1, 0, 0, 2, 32]);
        // 4: struct flags, with kind_flag: each member's bitfield size in its top 8 bits
        let bitfield = |bit: u32| (1 << 24) | bit;
        types.extend([
            name("flags"),
            (1 << 31) | (4 << 24) | 2,
            4,
            name("low"),
            1,
            bitfield(0),
            name("high"),
            1,
            bitfield(9),
        ]);
        let type_bytes: Vec<u8> = types.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut blob = Vec::new();
        blob.extend(BTF_MAGIC.to_le_bytes());
        blob.extend([1, 0]);
        for v in [
            24u32,
            0,
            type_bytes.len() as u32,
            type_bytes.len() as u32,
            strings.len() as u32,
        ] {
            blob.extend(v.to_le_bytes());
        }
        blob.extend(type_bytes);
        blob.extend(strings);
        blob
    }

    #[test]
    fn finds_direct_and_anonymous_members() {
        let blob = tiny_btf();
        let types = KernelTypes::parse(&blob).unwrap();
        assert_eq!(types.member_offset("task", "pid"), Ok(0));
        assert_eq!(types.member_offset("task", "tgid"), Ok(4));
        assert_eq!(types.member_bit_offset("flags", "high"), Ok(9));
        assert_eq!(types.member_offset("flags", "high"), Ok(1));
        assert!(matches!(
            types.member_offset("task", "nope"),
            Err(BtfError::NotFound { .. })
        ));
    }

    #[test]
    fn rejects_garbage() {
        assert!(KernelTypes::parse(b"xx").is_err());
        let mut blob = tiny_btf();
        blob.truncate(30);
        assert!(KernelTypes::parse(&blob).is_err());
    }

    #[test]
    fn reads_running_kernel_task_struct() {
        let Ok(blob) = std::fs::read(VMLINUX_BTF) else {
            eprintln!("skipping: {VMLINUX_BTF} not readable");
            return;
        };
        let types = KernelTypes::parse(&blob).unwrap();
        let pid = types.member_offset("task_struct", "pid").unwrap();
        let tgid = types.member_offset("task_struct", "tgid").unwrap();
        assert_eq!(tgid, pid + 4, "tgid follows pid in task_struct");
    }
}
