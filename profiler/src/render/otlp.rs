//! OTLP profiles (the signal's development version, `v1development`): a profile as an
//! `ExportProfilesServiceRequest`, built with the types generated from the official protos.
//! One resource per process, named as the semantic conventions name them; one profile per
//! event kind, with its sample type and unit; one dictionary for the whole request.

use std::collections::{BTreeMap, HashMap};

use opentelemetry_proto::tonic::{
    collector::profiles::v1development::ExportProfilesServiceRequest,
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value},
    profiles::v1development::{
        self as otlp, KeyValueAndUnit, ProfilesDictionary, ResourceProfiles, ScopeProfiles,
        ValueType,
    },
    resource::v1::Resource,
};

use crate::model::{EventKind, Frame, FrameKind, Process, Profile, Sample};

/// What every resource of a request is labelled with besides its process.
pub struct Sender<'a> {
    /// `host.name`.
    pub host: &'a str,
    /// `--label K=V`, in order; a `service.name` among them names every process's service
    /// (by default, its executable's name).
    pub labels: &'a [(String, String)],
}

/// The sample type and unit of a kind's profile, the factor from a sample's weight to its
/// value, and for CPU samples the period's type.
fn sample_type(kind: EventKind) -> (&'static str, &'static str, i64) {
    match kind {
        EventKind::Cpu => ("samples", "count", 1),
        // Weights in microseconds.
        EventKind::OffCpu => ("off_cpu", "nanoseconds", 1000),
        EventKind::Io => ("io", "nanoseconds", 1000),
        EventKind::Alloc => ("alloc_space", "bytes", 1),
        EventKind::InUse => ("inuse_space", "bytes", 1),
    }
}

/// The kind of code a frame is, as `profile.frame.type` names it; `None` for placeholders
/// and compiled code whose runtime the frame does not say.
fn frame_type(kind: FrameKind) -> Option<&'static str> {
    match kind {
        FrameKind::User | FrameKind::Inlined | FrameKind::Unsymbolized { kernel: false, .. } => {
            Some("native")
        }
        FrameKind::Kernel | FrameKind::Unsymbolized { kernel: true, .. } => Some("kernel"),
        // The only interpreter whose frames are read.
        FrameKind::Interpreted => Some("cpython"),
        FrameKind::Jit | FrameKind::Missing(_) => None,
    }
}

/// An attribute value in the dictionary.
#[derive(Clone, PartialEq, Eq, Hash)]
enum Value {
    Text(String),
    Number(i64),
}

impl Value {
    fn any(&self) -> AnyValue {
        AnyValue {
            value: Some(match self {
                Value::Text(text) => any_value::Value::StringValue(text.clone()),
                Value::Number(number) => any_value::Value::IntValue(*number),
            }),
        }
    }
}

/// The request's dictionary, each table deduplicated, each with its zero value first.
struct Dictionary {
    table: ProfilesDictionary,
    strings: HashMap<String, i32>,
    functions: HashMap<(i32, i32), i32>,
    mappings: HashMap<i32, i32>,
    /// Location of each of the profile's frames, once used.
    locations: HashMap<usize, i32>,
    /// Stack of each of the profile's stacks, once used.
    stacks: HashMap<usize, i32>,
    attributes: HashMap<(i32, Value), i32>,
}

impl Dictionary {
    fn new() -> Self {
        let mut dictionary = Dictionary {
            table: ProfilesDictionary {
                mapping_table: vec![Default::default()],
                location_table: vec![Default::default()],
                function_table: vec![Default::default()],
                link_table: vec![Default::default()],
                string_table: Vec::new(),
                attribute_table: vec![Default::default()],
                stack_table: vec![Default::default()],
            },
            strings: HashMap::new(),
            functions: HashMap::new(),
            mappings: HashMap::new(),
            locations: HashMap::new(),
            stacks: HashMap::new(),
            attributes: HashMap::new(),
        };
        dictionary.string("");
        dictionary
    }

    fn string(&mut self, text: &str) -> i32 {
        if let Some(&index) = self.strings.get(text) {
            return index;
        }
        let index = self.table.string_table.len() as i32;
        self.table.string_table.push(text.to_owned());
        self.strings.insert(text.to_owned(), index);
        index
    }

    fn attribute(&mut self, key: &str, value: Value) -> i32 {
        let key = self.string(key);
        let table = &mut self.table.attribute_table;
        *self
            .attributes
            .entry((key, value))
            .or_insert_with_key(|(_, value)| {
                table.push(KeyValueAndUnit {
                    key_strindex: key,
                    value: Some(value.any()),
                    unit_strindex: 0,
                });
                table.len() as i32 - 1
            })
    }

    fn location(&mut self, index: usize, frame: &Frame) -> i32 {
        if let Some(&location) = self.locations.get(&index) {
            return location;
        }
        let module = frame
            .module
            .as_deref()
            .unwrap_or(match frame.kind.is_kernel() {
                true => "[kernel]",
                false => "[unknown]",
            });
        let filename = self.string(module);
        let mappings = &mut self.table.mapping_table;
        let mapping_index = *self.mappings.entry(filename).or_insert_with(|| {
            mappings.push(otlp::Mapping {
                filename_strindex: filename,
                ..Default::default()
            });
            mappings.len() as i32 - 1
        });
        let name = self.string(&frame.function);
        let file = self.string(frame.file.as_deref().unwrap_or(""));
        let functions = &mut self.table.function_table;
        let function_index = *self.functions.entry((name, file)).or_insert_with(|| {
            functions.push(otlp::Function {
                name_strindex: name,
                system_name_strindex: name,
                filename_strindex: file,
                start_line: 0,
            });
            functions.len() as i32 - 1
        });
        let attribute_indices = frame_type(frame.kind)
            .map(|kind| self.attribute("profile.frame.type", Value::Text(kind.to_owned())))
            .into_iter()
            .collect();
        let address = match frame.kind {
            FrameKind::Unsymbolized {
                file_offset: Some(offset),
                ..
            } => offset,
            _ => 0,
        };
        self.table.location_table.push(otlp::Location {
            mapping_index,
            address,
            lines: vec![otlp::Line {
                function_index,
                line: i64::from(frame.line.unwrap_or(0)),
                column: 0,
            }],
            attribute_indices,
        });
        let location = self.table.location_table.len() as i32 - 1;
        self.locations.insert(index, location);
        location
    }

    fn stack(&mut self, profile: &Profile, index: usize) -> i32 {
        if let Some(&stack) = self.stacks.get(&index) {
            return stack;
        }
        // Leaf first.
        let location_indices = profile.stacks[index]
            .iter()
            .rev()
            .map(|&frame| self.location(frame, &profile.frames[frame]))
            .collect();
        self.table
            .stack_table
            .push(otlp::Stack { location_indices });
        let stack = self.table.stack_table.len() as i32 - 1;
        self.stacks.insert(index, stack);
        stack
    }

    fn sample(&mut self, profile: &Profile, sample: &Sample, factor: i64) -> otlp::Sample {
        let mut attribute_indices = vec![
            self.attribute("thread.name", Value::Text(sample.thread.clone())),
            self.attribute("thread.id", Value::Number(i64::from(sample.tid))),
        ];
        if let Some(reason) = sample.reason {
            attribute_indices.push(self.attribute(
                "profiler.off_cpu.reason",
                Value::Text(reason.label().to_owned()),
            ));
        }
        otlp::Sample {
            stack_index: self.stack(profile, sample.stack),
            attribute_indices,
            link_index: 0,
            values: vec![(sample.weight as i64).saturating_mul(factor)],
            timestamps_unix_nano: Vec::new(),
        }
    }

    fn value_type(&mut self, kind: &str, unit: &str) -> ValueType {
        ValueType {
            type_strindex: self.string(kind),
            unit_strindex: self.string(unit),
        }
    }
}

fn key_value(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(value.any()),
        key_strindex: 0,
    }
}

/// The label that names the service.
pub const SERVICE_NAME: &str = "service.name";

/// A process's service: the `service.name` label when given, else its executable's name.
pub fn service_name(process: &Process, labels: &[(String, String)]) -> String {
    labels
        .iter()
        .find(|(key, _)| key == SERVICE_NAME)
        .map_or_else(
            || process.executable_name().to_owned(),
            |(_, value)| value.clone(),
        )
}

fn resource(process: &Process, sender: &Sender) -> Resource {
    let mut attributes = vec![
        key_value(
            SERVICE_NAME,
            Value::Text(service_name(process, sender.labels)),
        ),
        key_value("host.name", Value::Text(sender.host.to_owned())),
        key_value("process.pid", Value::Number(i64::from(process.pid))),
        key_value(
            "process.executable.name",
            Value::Text(process.executable_name().to_owned()),
        ),
    ];
    if let Some(container) = &process.container {
        attributes.push(key_value("container.id", Value::Text(container.clone())));
    }
    for (key, value) in sender.labels {
        if key != SERVICE_NAME {
            attributes.push(key_value(key, Value::Text(value.clone())));
        }
    }
    Resource {
        attributes,
        dropped_attributes_count: 0,
        entity_refs: Vec::new(),
    }
}

/// The profile's samples as an OTLP export request: a resource per process with samples, a
/// profile per event kind it has samples of.
pub fn export_request(profile: &Profile, sender: &Sender) -> ExportProfilesServiceRequest {
    let mut dictionary = Dictionary::new();
    type ByKind<'a> = BTreeMap<EventKind, Vec<&'a Sample>>;
    let mut by_process: BTreeMap<u32, ByKind> = BTreeMap::new();
    for (&kind, samples) in &profile.samples {
        for sample in samples {
            by_process
                .entry(sample.pid)
                .or_default()
                .entry(kind)
                .or_default()
                .push(sample);
        }
    }
    let time_unix_nano = profile.run.start_unix_ms.saturating_mul(1_000_000);
    let duration_nano = (profile.run.duration_secs * 1e9) as u64;
    let scope = InstrumentationScope {
        name: "profiler".to_owned(),
        version: profile.run.profiler_version.clone(),
        ..Default::default()
    };
    let mut resource_profiles = Vec::new();
    for (pid, samples) in by_process {
        let process = profile
            .processes
            .iter()
            .find(|process| process.pid == pid)
            .cloned()
            .unwrap_or_else(|| Process {
                pid,
                name: pid.to_string(),
                command: Vec::new(),
                container: None,
            });
        let mut profiles = Vec::new();
        for (kind, samples) in samples {
            let (name, unit, factor) = sample_type(kind);
            let samples = samples
                .iter()
                .map(|sample| dictionary.sample(profile, sample, factor))
                .collect();
            let cpu = kind == EventKind::Cpu;
            profiles.push(otlp::Profile {
                sample_type: Some(dictionary.value_type(name, unit)),
                samples,
                time_unix_nano,
                duration_nano,
                period_type: cpu.then(|| dictionary.value_type("cpu", "nanoseconds")),
                period: match cpu {
                    true => 1_000_000_000 / profile.run.frequency_hz.max(1) as i64,
                    false => 0,
                },
                profile_id: profile_id(),
                ..Default::default()
            });
        }
        resource_profiles.push(ResourceProfiles {
            resource: Some(resource(&process, sender)),
            scope_profiles: vec![ScopeProfiles {
                scope: Some(scope.clone()),
                profiles,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        });
    }
    ExportProfilesServiceRequest {
        resource_profiles,
        dictionary: Some(dictionary.table),
    }
}

/// A random profile id: 16 bytes, not all zero.
fn profile_id() -> Vec<u8> {
    let mut id = fastrand::u128(1..).to_le_bytes().to_vec();
    id.truncate(16);
    id
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;
    use crate::model::fixtures;

    fn text(dictionary: &ProfilesDictionary, index: i32) -> &str {
        &dictionary.string_table[index as usize]
    }

    #[test]
    fn a_profile_becomes_one_resource_per_process_and_one_profile_per_kind() {
        let mut profile = fixtures::sample_profile();
        profile.processes[0].container = Some("c0ffee".into());
        let labels = [
            ("service.name".to_owned(), "checkout".to_owned()),
            ("env".to_owned(), "test".to_owned()),
        ];
        let request = export_request(
            &profile,
            &Sender {
                host: "db-1",
                labels: &labels,
            },
        );
        // Through the wire format and back.
        let request = ExportProfilesServiceRequest::decode(&*request.encode_to_vec()).unwrap();
        let dictionary = request.dictionary.as_ref().unwrap();
        assert_eq!(dictionary.string_table[0], "");
        assert_eq!(dictionary.stack_table[0], otlp::Stack::default());
        assert_eq!(dictionary.location_table[0], otlp::Location::default());
        assert_eq!(request.resource_profiles.len(), 1);
        let resource = &request.resource_profiles[0];
        let attributes: HashMap<&str, &AnyValue> = resource
            .resource
            .as_ref()
            .unwrap()
            .attributes
            .iter()
            .map(|kv| (kv.key.as_str(), kv.value.as_ref().unwrap()))
            .collect();
        let text_of = |key: &str| match &attributes[key].value {
            Some(any_value::Value::StringValue(text)) => text.clone(),
            other => panic!("{key}: {other:?}"),
        };
        assert_eq!(text_of("service.name"), "checkout");
        assert_eq!(text_of("host.name"), "db-1");
        assert_eq!(text_of("process.executable.name"), "demo");
        assert_eq!(text_of("container.id"), "c0ffee");
        assert_eq!(text_of("env"), "test");
        assert_eq!(
            attributes["process.pid"].value,
            Some(any_value::Value::IntValue(42))
        );
        let profiles = &resource.scope_profiles[0].profiles;
        assert_eq!(profiles.len(), 1);
        let cpu = &profiles[0];
        let sample_type = cpu.sample_type.as_ref().unwrap();
        assert_eq!(text(dictionary, sample_type.type_strindex), "samples");
        assert_eq!(cpu.period, 1_000_000_000 / 99);
        assert_eq!(cpu.time_unix_nano, 1_700_000_000_000 * 1_000_000);
        assert_eq!(cpu.duration_nano, 2_000_000_000);
        // Leaf first: hot x7, cold x3.
        let leaves: Vec<(&str, i64)> = cpu
            .samples
            .iter()
            .map(|sample| {
                let stack = &dictionary.stack_table[sample.stack_index as usize];
                let leaf = &dictionary.location_table[stack.location_indices[0] as usize];
                let function = &dictionary.function_table[leaf.lines[0].function_index as usize];
                (text(dictionary, function.name_strindex), sample.values[0])
            })
            .collect();
        assert_eq!(leaves, [("hot", 7), ("cold", 3)]);
        // Shared frames are one location each; every sample names its thread.
        assert_eq!(dictionary.location_table.len(), 1 + 4);
        for sample in &cpu.samples {
            let keys: Vec<&str> = sample
                .attribute_indices
                .iter()
                .map(|&index| {
                    text(
                        dictionary,
                        dictionary.attribute_table[index as usize].key_strindex,
                    )
                })
                .collect();
            assert_eq!(keys, ["thread.name", "thread.id"]);
        }
    }

    #[test]
    fn a_profile_without_samples_sends_no_resource() {
        let mut profile = fixtures::sample_profile();
        profile.samples.clear();
        let request = export_request(
            &profile,
            &Sender {
                host: "h",
                labels: &[],
            },
        );
        assert!(request.resource_profiles.is_empty());
    }
}
