//! Exports for other tools: pprof (`profile.pb.gz`, read by `go tool pprof`, Pyroscope and
//! Parca) and speedscope (`speedscope.json`).

use std::{collections::HashMap, io::Write as _};

use flate2::{Compression, write::GzEncoder};
use serde::Serialize;

use crate::model::{EventKind, Frame, FrameKind, Profile, Sample};

/// The pprof messages, as `profile.proto` (github.com/google/pprof) defines them.
pub mod pprof {
    /// A profile.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Profile {
        /// What each value of a sample measures.
        #[prost(message, repeated, tag = "1")]
        pub sample_type: Vec<ValueType>,
        /// The samples.
        #[prost(message, repeated, tag = "2")]
        pub sample: Vec<Sample>,
        /// Mapped objects.
        #[prost(message, repeated, tag = "3")]
        pub mapping: Vec<Mapping>,
        /// Code locations.
        #[prost(message, repeated, tag = "4")]
        pub location: Vec<Location>,
        /// Functions.
        #[prost(message, repeated, tag = "5")]
        pub function: Vec<Function>,
        /// Every string; index 0 is "".
        #[prost(string, repeated, tag = "6")]
        pub string_table: Vec<String>,
        /// When the profile was taken, ns since the epoch.
        #[prost(int64, tag = "9")]
        pub time_nanos: i64,
        /// How long it covers, ns.
        #[prost(int64, tag = "10")]
        pub duration_nanos: i64,
        /// What one sampling period measures.
        #[prost(message, optional, tag = "11")]
        pub period_type: Option<ValueType>,
        /// The sampling period.
        #[prost(int64, tag = "12")]
        pub period: i64,
        /// Free-form notes (string indices).
        #[prost(int64, repeated, tag = "13")]
        pub comment: Vec<i64>,
        /// The sample type shown by default (string index).
        #[prost(int64, tag = "14")]
        pub default_sample_type: i64,
    }

    /// A type and unit, as string indices.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ValueType {
        /// Type.
        #[prost(int64, tag = "1")]
        pub r#type: i64,
        /// Unit.
        #[prost(int64, tag = "2")]
        pub unit: i64,
    }

    /// Values on a stack.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        /// Locations, leaf first.
        #[prost(uint64, repeated, tag = "1")]
        pub location_id: Vec<u64>,
        /// One value per sample type.
        #[prost(int64, repeated, tag = "2")]
        pub value: Vec<i64>,
        /// Labels.
        #[prost(message, repeated, tag = "3")]
        pub label: Vec<Label>,
    }

    /// A label.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Label {
        /// Key (string index).
        #[prost(int64, tag = "1")]
        pub key: i64,
        /// String value (string index).
        #[prost(int64, tag = "2")]
        pub str: i64,
        /// Numeric value.
        #[prost(int64, tag = "3")]
        pub num: i64,
    }

    /// A mapped object.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Mapping {
        /// Id, from 1.
        #[prost(uint64, tag = "1")]
        pub id: u64,
        /// File name (string index).
        #[prost(int64, tag = "5")]
        pub filename: i64,
        /// Build-id, hexadecimal (string index).
        #[prost(int64, tag = "6")]
        pub build_id: i64,
        /// Whether functions are known.
        #[prost(bool, tag = "7")]
        pub has_functions: bool,
        /// Whether file names are known.
        #[prost(bool, tag = "8")]
        pub has_filenames: bool,
        /// Whether line numbers are known.
        #[prost(bool, tag = "9")]
        pub has_line_numbers: bool,
        /// Whether inlined functions are known.
        #[prost(bool, tag = "10")]
        pub has_inline_frames: bool,
    }

    /// A code location.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Location {
        /// Id, from 1.
        #[prost(uint64, tag = "1")]
        pub id: u64,
        /// Its mapping, 0 if none.
        #[prost(uint64, tag = "2")]
        pub mapping_id: u64,
        /// The address in the mapping (here its file offset), for unsymbolized code.
        #[prost(uint64, tag = "3")]
        pub address: u64,
        /// Functions at it, the inlined ones first.
        #[prost(message, repeated, tag = "4")]
        pub line: Vec<Line>,
    }

    /// A function and line.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Line {
        /// Function id.
        #[prost(uint64, tag = "1")]
        pub function_id: u64,
        /// Line number, 0 if unknown.
        #[prost(int64, tag = "2")]
        pub line: i64,
    }

    /// A function.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Function {
        /// Id, from 1.
        #[prost(uint64, tag = "1")]
        pub id: u64,
        /// Name (string index).
        #[prost(int64, tag = "2")]
        pub name: i64,
        /// Name as the linker knows it (string index).
        #[prost(int64, tag = "3")]
        pub system_name: i64,
        /// Source file (string index).
        #[prost(int64, tag = "4")]
        pub filename: i64,
    }
}

/// The event kinds of a profile, in file order, with `InUse` after `Alloc`.
fn kinds(profile: &Profile) -> Vec<EventKind> {
    let mut kinds = Vec::new();
    for &kind in &profile.run.events {
        kinds.push(kind);
        if kind == EventKind::Alloc {
            kinds.push(EventKind::InUse);
        }
    }
    kinds
}

/// pprof sample types of a kind, and the values of one of its samples in them.
fn pprof_values(
    kind: EventKind,
    sample: &Sample,
    frequency: u64,
) -> Vec<(&'static str, &'static str, i64)> {
    let weight = sample.weight as i64;
    let count = sample.count.unwrap_or(sample.weight) as i64;
    match kind {
        EventKind::Cpu => vec![
            ("samples", "count", weight),
            (
                "cpu",
                "nanoseconds",
                weight * (1_000_000_000 / frequency.max(1) as i64),
            ),
        ],
        EventKind::OffCpu => vec![("off-cpu", "nanoseconds", weight * 1000)],
        EventKind::Io => vec![("io", "nanoseconds", weight * 1000)],
        EventKind::Alloc => vec![
            ("alloc_objects", "count", count),
            ("alloc_space", "bytes", weight),
        ],
        EventKind::InUse => vec![
            ("inuse_objects", "count", count),
            ("inuse_space", "bytes", weight),
        ],
    }
}

/// Builds a string table.
#[derive(Default)]
struct Strings {
    table: Vec<String>,
    index: HashMap<String, i64>,
}

impl Strings {
    fn new() -> Self {
        let mut strings = Strings::default();
        strings.get("");
        strings
    }

    fn get(&mut self, text: &str) -> i64 {
        if let Some(&index) = self.index.get(text) {
            return index;
        }
        let index = self.table.len() as i64;
        self.table.push(text.to_owned());
        self.index.insert(text.to_owned(), index);
        index
    }
}

/// The profile in pprof's format, not yet encoded.
pub fn pprof_profile(profile: &Profile) -> pprof::Profile {
    let mut strings = Strings::new();
    let kinds = kinds(profile);
    let frequency = profile.run.frequency_hz;
    // One column per (kind, type): samples of other kinds have zeros there.
    let mut columns: Vec<(EventKind, &'static str, &'static str)> = Vec::new();
    for &kind in &kinds {
        let probe = Sample {
            pid: 0,
            tid: 0,
            thread: String::new(),
            stack: 0,
            weight: 0,
            reason: None,
            count: None,
        };
        for (name, unit, _) in pprof_values(kind, &probe, frequency) {
            columns.push((kind, name, unit));
        }
    }
    let sample_type = columns
        .iter()
        .map(|&(_, name, unit)| pprof::ValueType {
            r#type: strings.get(name),
            unit: strings.get(unit),
        })
        .collect();

    let mut mappings: HashMap<(String, bool), u64> = HashMap::new();
    let mut mapping = Vec::new();
    let mut functions: HashMap<(String, String), u64> = HashMap::new();
    let mut function = Vec::new();
    let mut location = Vec::new();
    // One location per interned frame.
    for (index, frame) in profile.frames.iter().enumerate() {
        let module = frame.module.clone().unwrap_or_else(|| {
            match frame.kind.is_kernel() {
                true => "[kernel]",
                false => "[unknown]",
            }
            .to_owned()
        });
        // Code no symbol named gets a mapping of its own, saying so: pprof symbolizes its
        // locations later by build-id and address (memory start, limit and file offset 0:
        // the address is the object's own, `p_vaddr`-based), and leaves the named ones of the
        // same file alone.
        let object = profile.objects.get(&module);
        let address = match frame.kind {
            FrameKind::Unsymbolized {
                file_offset: Some(offset),
                ..
            } => Some(
                object
                    .and_then(|object| object.address_of(offset))
                    .unwrap_or(offset),
            ),
            _ => None,
        };
        let named = address.is_none();
        let mapping_id = *mappings.entry((module.clone(), named)).or_insert_with(|| {
            let build_id = object
                .and_then(|object| object.build_id.as_deref())
                .unwrap_or("");
            // The full path where known: where pprof looks for the file to symbolize.
            let file = object
                .map(|object| object.path.as_str())
                .filter(|path| !named && !path.is_empty())
                .unwrap_or(&module);
            mapping.push(pprof::Mapping {
                id: mapping.len() as u64 + 1,
                filename: strings.get(file),
                build_id: strings.get(build_id),
                has_functions: named,
                has_filenames: named,
                has_line_numbers: named,
                has_inline_frames: named,
            });
            mapping.len() as u64
        });
        let address = address.unwrap_or(0);
        let file = frame.file.clone().unwrap_or_default();
        let function_id = *functions
            .entry((frame.function.clone(), file.clone()))
            .or_insert_with(|| {
                let name = strings.get(&frame.function);
                function.push(pprof::Function {
                    id: function.len() as u64 + 1,
                    name,
                    system_name: name,
                    filename: strings.get(&file),
                });
                function.len() as u64
            });
        location.push(pprof::Location {
            id: index as u64 + 1,
            mapping_id,
            address,
            line: vec![pprof::Line {
                function_id,
                line: i64::from(frame.line.unwrap_or(0)),
            }],
        });
    }

    let thread_key = strings.get("thread");
    let pid_key = strings.get("pid");
    let tid_key = strings.get("tid");
    let reason_key = strings.get("reason");
    let mut sample = Vec::new();
    for (&kind, samples) in &profile.samples {
        for s in samples {
            let mut value = vec![0; columns.len()];
            for (name, _, v) in pprof_values(kind, s, frequency) {
                if let Some(column) = columns.iter().position(|c| c.0 == kind && c.1 == name) {
                    value[column] = v;
                }
            }
            let mut label = vec![
                pprof::Label {
                    key: thread_key,
                    str: strings.get(&s.thread),
                    num: 0,
                },
                pprof::Label {
                    key: pid_key,
                    str: 0,
                    num: i64::from(s.pid),
                },
                pprof::Label {
                    key: tid_key,
                    str: 0,
                    num: i64::from(s.tid),
                },
            ];
            if let Some(reason) = s.reason {
                label.push(pprof::Label {
                    key: reason_key,
                    str: strings.get(reason.label()),
                    num: 0,
                });
            }
            sample.push(pprof::Sample {
                // Leaf first.
                location_id: profile.stacks[s.stack]
                    .iter()
                    .rev()
                    .map(|&frame| frame as u64 + 1)
                    .collect(),
                value,
                label,
            });
        }
    }
    let has_cpu = kinds.contains(&EventKind::Cpu);
    let comment = vec![strings.get(&format!(
        "profiler {}: {}",
        profile.run.profiler_version,
        profile.run.command.join(" ")
    ))];
    let default_sample_type = columns
        .iter()
        .find(|c| matches!(c.1, "cpu" | "off-cpu" | "io" | "alloc_space"))
        .map_or(0, |c| strings.get(c.1));
    let period_type = has_cpu.then(|| pprof::ValueType {
        r#type: strings.get("cpu"),
        unit: strings.get("nanoseconds"),
    });
    pprof::Profile {
        sample_type,
        sample,
        mapping,
        location,
        function,
        time_nanos: profile.run.start_unix_ms as i64 * 1_000_000,
        duration_nanos: (profile.run.duration_secs * 1e9) as i64,
        period_type,
        period: if has_cpu {
            1_000_000_000 / frequency.max(1) as i64
        } else {
            0
        },
        comment,
        default_sample_type,
        string_table: strings.table,
    }
}

/// `profile.pb.gz`: the pprof profile, gzipped.
pub fn pprof_gz(profile: &Profile) -> std::io::Result<Vec<u8>> {
    use prost::Message as _;

    let encoded = pprof_profile(profile).encode_to_vec();
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(&encoded)?;
    encoder.finish()
}

/// The speedscope file format (https://www.speedscope.app/file-format-schema.json).
#[derive(Serialize)]
struct Speedscope<'a> {
    #[serde(rename = "$schema")]
    schema: &'static str,
    shared: Shared,
    profiles: Vec<SpeedscopeProfile<'a>>,
    name: String,
    #[serde(rename = "activeProfileIndex")]
    active_profile_index: usize,
    exporter: &'a str,
}

#[derive(Serialize)]
struct Shared {
    frames: Vec<SpeedscopeFrame>,
}

#[derive(Serialize)]
struct SpeedscopeFrame {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    line: Option<u32>,
}

#[derive(Serialize)]
struct SpeedscopeProfile<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    name: String,
    unit: &'static str,
    #[serde(rename = "startValue")]
    start_value: u64,
    #[serde(rename = "endValue")]
    end_value: u64,
    samples: SampleStacks<'a>,
    weights: Vec<u64>,
}

/// Each sample's frames, its roots (process, thread) first, written as they are read from the
/// profile's stacks: a copy of every stack was, for a long capture, hundreds of megabytes.
struct SampleStacks<'a> {
    stacks: &'a [Vec<usize>],
    /// Per sample: the process's root frame (when several), the thread's, and its stack.
    samples: Vec<(Option<usize>, usize, usize)>,
}

impl Serialize for SampleStacks<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct Frames<'b>(&'b [Vec<usize>], (Option<usize>, usize, usize));
        impl Serialize for Frames<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let (process, thread, stack) = self.1;
                serializer.collect_seq(process.iter().chain([&thread]).chain(self.0[stack].iter()))
            }
        }
        serializer.collect_seq(
            self.samples
                .iter()
                .map(|&sample| Frames(self.stacks, sample)),
        )
    }
}

fn frame_name(frame: &Frame) -> String {
    frame.label()
}

/// `speedscope.json`: one sampled profile per event kind over shared frames; each stack starts
/// with its thread (and process, when there are several) like the folded files.
/// Writes the profile in speedscope's format (<https://www.speedscope.app>).
pub fn write_speedscope(profile: &Profile, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    let mut frames: Vec<SpeedscopeFrame> = profile
        .frames
        .iter()
        .map(|frame| SpeedscopeFrame {
            name: frame_name(frame),
            file: frame.file.clone(),
            line: frame.line,
        })
        .collect();
    let mut roots: HashMap<String, usize> = HashMap::new();
    let mut root = |name: String, frames: &mut Vec<SpeedscopeFrame>| {
        *roots.entry(name.clone()).or_insert_with(|| {
            frames.push(SpeedscopeFrame {
                name,
                file: None,
                line: None,
            });
            frames.len() - 1
        })
    };
    let multi_process = profile.is_multi_process();
    let names = profile.process_names();
    let mut profiles = Vec::new();
    for kind in kinds(profile) {
        let mut samples = Vec::new();
        let mut weights = Vec::new();
        for sample in profile.samples.get(&kind).into_iter().flatten() {
            let process = multi_process.then(|| root(names.label(sample.pid), &mut frames));
            let thread = root(sample.thread.clone(), &mut frames);
            samples.push((process, thread, sample.stack));
            weights.push(sample.weight);
        }
        let unit = match kind.unit() {
            "microseconds" => "microseconds",
            "bytes" => "bytes",
            _ => "none",
        };
        profiles.push(SpeedscopeProfile {
            kind: "sampled",
            name: format!("{} ({})", kind.name(), kind.unit()),
            unit,
            start_value: 0,
            end_value: weights.iter().sum(),
            samples: SampleStacks {
                stacks: &profile.stacks,
                samples,
            },
            weights,
        });
    }
    let speedscope = Speedscope {
        schema: "https://www.speedscope.app/file-format-schema.json",
        shared: Shared { frames },
        profiles,
        name: profile.run.command.join(" "),
        active_profile_index: 0,
        exporter: concat!("profiler ", env!("CARGO_PKG_VERSION")),
    };
    serde_json::to_writer(&mut *out, &speedscope)?;
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures::sample_profile;
    use prost::Message as _;

    #[test]
    fn pprof_round_trips_with_one_column_per_type() {
        let mut profile = sample_profile();
        profile.run.events = vec![EventKind::Cpu, EventKind::OffCpu];
        let mut blocked = profile.samples[&EventKind::Cpu][0].clone();
        blocked.weight = 250;
        blocked.reason = Some(crate::model::BlockReason::Sleep);
        profile.samples.insert(EventKind::OffCpu, vec![blocked]);
        let gz = pprof_gz(&profile).unwrap();
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut raw).unwrap();
        let decoded = pprof::Profile::decode(&raw[..]).unwrap();
        let names: Vec<&str> = decoded
            .sample_type
            .iter()
            .map(|t| decoded.string_table[t.r#type as usize].as_str())
            .collect();
        assert_eq!(names, ["samples", "cpu", "off-cpu"]);
        let column_total =
            |column: usize| -> i64 { decoded.sample.iter().map(|s| s.value[column]).sum() };
        assert_eq!(column_total(0), 10);
        assert_eq!(column_total(1), 10 * (1_000_000_000 / 99));
        assert_eq!(column_total(2), 250_000);
        // Leaf first: the hot sample's first location is `hot`.
        let hot = &decoded.sample[0];
        let leaf = &decoded.location[hot.location_id[0] as usize - 1];
        let function = &decoded.function[leaf.line[0].function_id as usize - 1];
        assert_eq!(decoded.string_table[function.name as usize], "hot");
        assert_eq!(decoded.string_table[0], "");
    }

    #[test]
    fn speedscope_shares_frames_and_has_a_profile_per_kind() {
        let profile = sample_profile();
        let mut written = Vec::new();
        write_speedscope(&profile, &mut written).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&written).unwrap();
        assert_eq!(
            json["$schema"],
            "https://www.speedscope.app/file-format-schema.json"
        );
        let profiles = json["profiles"].as_array().unwrap();
        assert_eq!(profiles.len(), 1);
        assert_eq!(profiles[0]["type"], "sampled");
        assert_eq!(profiles[0]["endValue"], 10);
        let frames = json["shared"]["frames"].as_array().unwrap();
        let first = profiles[0]["samples"][0].as_array().unwrap();
        let names: Vec<&str> = first
            .iter()
            .map(|i| {
                frames[i.as_u64().unwrap() as usize]["name"]
                    .as_str()
                    .unwrap()
            })
            .collect();
        assert_eq!(names, ["demo", "main", "work", "hot"]);
    }
}
