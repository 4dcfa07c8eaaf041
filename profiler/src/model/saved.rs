//! The saved profile (`profile.json.gz`): written once per run, read back by `report` and
//! `diff` as untrusted input, within bounds of size, memory and totals.

use std::{
    fs::File,
    io::{BufReader, BufWriter, Write},
    path::Path,
};

use flate2::{Compression, read::GzDecoder, write::GzEncoder};

use super::{AllocSiteStats, EventKind, Profile};

/// File name of the saved profile inside an output folder.
pub const PROFILE_FILE: &str = "profile.json.gz";

/// Format version of the saved profile; bumped on incompatible changes.
pub const FORMAT_VERSION: u32 = 1;

/// Largest saved profile `read` accepts once decompressed (bounds the time a read takes: about
/// two seconds for this much whitespace).
pub const MAX_PROFILE_JSON_BYTES: u64 = 512 << 20;

/// Memory a read profile may keep, as [`crate::model::bounded_de`] charges it; what it really holds
/// stays under twice this.
pub const MAX_PROFILE_MEMORY: u64 = 384 << 20;

/// Largest folded text one kind may render to (the names of every sample's stack, end to end):
/// a few kilobytes of saved profile must not render gigabytes.
pub const MAX_RENDERED_TEXT: u64 = 256 << 20;

/// Largest total weight or count of one kind a saved profile may have: sums of a few such
/// totals (wall-clock time adds on- and off-CPU time) cannot wrap.
pub const MAX_TOTAL: u64 = 1 << 60;

/// Errors reading a saved profile.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a saved profile, or is damaged.
    #[error("{path} is not a valid saved profile: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl Profile {
    /// Checks that no kind's folded text passes [`MAX_RENDERED_TEXT`]; frame indices must be
    /// valid.
    fn check_rendered_size(&self) -> Result<(), String> {
        let stack_text: Vec<u64> = self
            .stacks
            .iter()
            .map(|stack| {
                stack.iter().fold(0_u64, |sum, &frame| {
                    // Each frame: its name, a separator and at most a `_[k]` suffix.
                    sum.saturating_add(self.frames[frame].function.len() as u64 + 5)
                })
            })
            .collect();
        let process_prefix = self
            .processes
            .iter()
            .map(|process| process.name.len() as u64 + 16)
            .max()
            .unwrap_or(16);
        for (kind, samples) in &self.samples {
            let text = samples.iter().fold(0_u64, |sum, sample| {
                sum.saturating_add(
                    stack_text[sample.stack] + sample.thread.len() as u64 + process_prefix,
                )
            });
            if text > MAX_RENDERED_TEXT {
                return Err(format!(
                    "{} stacks would render to more than {} MiB of text",
                    kind.name(),
                    MAX_RENDERED_TEXT >> 20
                ));
            }
        }
        Ok(())
    }

    /// Writes the profile, gzipped JSON, to `writer`.
    pub fn save(&self, writer: impl Write) -> std::io::Result<()> {
        let mut encoder = GzEncoder::new(BufWriter::new(writer), Compression::fast());
        serde_json::to_writer(&mut encoder, self)?;
        encoder.finish()?.flush()
    }

    /// Reads a profile saved by [`Profile::save`], checking it is consistent.
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        let display = path.display().to_string();
        let file = File::open(path).map_err(|source| LoadError::Io {
            path: display.clone(),
            source,
        })?;
        Self::read(BufReader::new(file), &display)
    }

    /// Reads a saved profile from gzip-compressed bytes (what [`Profile::save`] writes), named
    /// `display` in errors. Truncated, damaged or crafted input is an error, never a panic,
    /// and neither the compressed input nor its decompression is read past
    /// `MAX_PROFILE_JSON_BYTES`.
    pub fn read(compressed: impl std::io::Read, display: &str) -> Result<Self, LoadError> {
        let invalid = |reason: String| LoadError::Invalid {
            path: display.to_owned(),
            reason,
        };
        let json = BufReader::with_capacity(
            1 << 16,
            LimitedReader {
                // The compressed input bounded too: empty deflate blocks decompress to
                // nothing, so a huge crafted file would otherwise cost time in proportion.
                inner: GzDecoder::new(compressed.take(MAX_PROFILE_JSON_BYTES)),
                left: MAX_PROFILE_JSON_BYTES,
            },
        );
        let budget = crate::model::bounded_de::Budget::new(MAX_PROFILE_MEMORY);
        let mut deserializer = serde_json::Deserializer::from_reader(json);
        let profile: Profile = crate::model::bounded_de::deserialize(&mut deserializer, &budget)
            .and_then(|profile| deserializer.end().map(|()| profile))
            .map_err(|err| invalid(err.to_string()))?;
        profile.validate().map_err(invalid)?;
        Ok(profile)
    }

    /// Checks internal references so renderers can index without panicking.
    pub fn validate(&self) -> Result<(), String> {
        if self.format_version != FORMAT_VERSION {
            return Err(format!(
                "format version {} (this profiler reads {FORMAT_VERSION})",
                self.format_version
            ));
        }
        for (index, stack) in self.stacks.iter().enumerate() {
            if let Some(&frame) = stack.iter().find(|&&frame| frame >= self.frames.len()) {
                return Err(format!("stack {index} refers to missing frame {frame}"));
            }
        }
        if let Some(memory) = &self.memory
            && let Some(site) = memory.sites.iter().find(|s| s.stack >= self.stacks.len())
        {
            return Err(format!(
                "allocation site refers to missing stack {}",
                site.stack
            ));
        }
        for (kind, samples) in &self.samples {
            if let Some(sample) = samples.iter().find(|s| s.stack >= self.stacks.len()) {
                return Err(format!(
                    "{} sample refers to missing stack {}",
                    kind.name(),
                    sample.stack
                ));
            }
            bounded_total(samples.iter().map(|s| s.weight), kind.name())?;
            bounded_total(samples.iter().map(|s| s.count.unwrap_or(1)), kind.name())?;
        }
        self.check_rendered_size()?;
        if !(1..=1_000_000).contains(&self.run.frequency_hz) {
            return Err(format!("frequency {} Hz", self.run.frequency_hz));
        }
        // On-CPU samples become microseconds in the wall-clock view.
        let cpu_us = self
            .total(EventKind::Cpu)
            .checked_mul(1_000_000 / self.run.frequency_hz);
        if cpu_us.is_none_or(|us| us > MAX_TOTAL) {
            return Err("on-CPU time too large".into());
        }
        if !(self.run.duration_secs.is_finite() && self.run.duration_secs >= 0.0) {
            return Err(format!("duration {}", self.run.duration_secs));
        }
        if let Some(memory) = &self.memory {
            let sites = &memory.sites;
            let fields: [(&str, SiteField); 8] = [
                ("allocated bytes", |s| s.alloc_bytes),
                ("freed bytes", |s| s.free_bytes),
                ("live bytes", |s| s.live_bytes),
                ("old live bytes", |s| s.old_live_bytes),
                ("allocations", |s| s.alloc_count),
                ("frees", |s| s.free_count),
                ("live allocations", |s| s.live_count),
                ("old live allocations", |s| s.old_live_count),
            ];
            for (what, field) in fields {
                bounded_total(sites.iter().map(field), what)?;
            }
        }
        Ok(())
    }
}

/// One count of an allocation site.
type SiteField = fn(&AllocSiteStats) -> u64;

/// Checks that `values` add up to at most [`MAX_TOTAL`].
fn bounded_total(values: impl Iterator<Item = u64>, what: &str) -> Result<(), String> {
    let mut total: u64 = 0;
    for value in values {
        total = total
            .checked_add(value)
            .filter(|&total| total <= MAX_TOTAL)
            .ok_or_else(|| format!("{what}: total past {MAX_TOTAL}"))?;
    }
    Ok(())
}

/// A reader that fails, rather than ends, past `left` bytes: a cut-off profile would only be
/// reported as damaged, this says why.
struct LimitedReader<R> {
    inner: R,
    left: u64,
}

impl<R: std::io::Read> std::io::Read for LimitedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            // One byte more tells a file of exactly the limit from a larger one.
            return match self.inner.read(&mut [0])? {
                0 => Ok(0),
                _ => Err(std::io::Error::other(format!(
                    "larger than {} MiB once decompressed",
                    MAX_PROFILE_JSON_BYTES >> 20
                ))),
            };
        }
        let len = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let read = self.inner.read(&mut buf[..len])?;
        self.left -= read as u64;
        Ok(read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures::sample_profile;

    /// Every input the fuzzer kept (`fuzz/corpus/load_profile`) still reads as an error or a
    /// profile the renderers can use, and no prefix of a valid file is accepted.
    #[test]
    fn saved_profile_corpus_never_panics() {
        let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/load_profile");
        let mut valid = 0;
        for entry in std::fs::read_dir(&corpus).expect("the fuzz corpus is in the repository") {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            let read = Profile::read(&bytes[..], "corpus");
            // Small versions of the bombs of docs/safety.md: these are refused at any size
            // (the others are valid profiles when small).
            let name = path.file_name().unwrap().to_string_lossy();
            let refused = ["nesting", "long-number", "long-string", "huge-weights"];
            if refused.iter().any(|bomb| name == format!("bomb-{bomb}")) {
                assert!(read.is_err(), "{name} accepted");
            }
            if let Ok(profile) = read {
                valid += 1;
                let _ = crate::analysis::summarize(&profile);
                for view in crate::render::views(&profile) {
                    let _ = crate::render::view_lines(&profile, view);
                }
                for len in (0..bytes.len()).step_by(bytes.len() / 50 + 1) {
                    assert!(
                        Profile::read(&bytes[..len], "prefix").is_err(),
                        "{} accepted cut at {len}",
                        path.display()
                    );
                }
            }
        }
        assert!(valid >= 2, "the corpus keeps real profiles as seeds");
    }

    #[test]
    fn save_and_load_round_trip() {
        let profile = sample_profile();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PROFILE_FILE);
        profile.save(File::create(&path).unwrap()).unwrap();
        assert_eq!(Profile::load(&path).unwrap(), profile);
    }

    #[test]
    fn load_rejects_garbage_and_dangling_references() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PROFILE_FILE);
        std::fs::write(&path, b"not gzip").unwrap();
        assert!(matches!(
            Profile::load(&path),
            Err(LoadError::Invalid { .. })
        ));

        let mut profile = sample_profile();
        profile.stacks[0].push(99);
        profile.save(File::create(&path).unwrap()).unwrap();
        let err = Profile::load(&path).unwrap_err().to_string();
        assert!(err.contains("missing frame 99"), "{err}");
    }
}
