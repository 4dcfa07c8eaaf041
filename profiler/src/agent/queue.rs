//! Windows waiting to be sent, oldest first: in a spool folder (`--spool`), where they survive
//! a restart of the agent, or in memory. Bounded: past `--spool-max` the oldest go, counted.

use std::{collections::VecDeque, io};

use crate::output::OutputDir;

/// Spooled windows are `window-<sequence>.otlp`, the sequence zero-padded so names sort.
const PREFIX: &str = "window-";
const SUFFIX: &str = ".otlp";

fn file_name(sequence: u64) -> String {
    format!("{PREFIX}{sequence:020}{SUFFIX}")
}

/// Sequences stay below this: a planted name cannot make the next one overflow.
const MAX_SEQUENCE: u64 = 10_000_000_000_000_000_000;

fn sequence_of(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
        .filter(|&sequence| sequence < MAX_SEQUENCE)
}

/// A window waiting.
struct Entry {
    sequence: u64,
    bytes: u64,
    /// The request, when in memory (no spool folder, or writing there failed).
    body: Option<Vec<u8>>,
}

/// The windows waiting to be sent.
pub struct Queue {
    spool: Option<OutputDir>,
    entries: VecDeque<Entry>,
    bytes: u64,
    max_bytes: u64,
    next: u64,
    /// Windows dropped: the oldest past the bound, or spooled ones that could not be read back.
    pub dropped: u64,
}

impl Queue {
    /// A queue in `spool` (what an earlier run left there comes first), or in memory.
    pub fn open(spool: Option<OutputDir>, max_bytes: u64) -> io::Result<Queue> {
        let mut entries = Vec::new();
        if let Some(spool) = &spool {
            for file in spool.files_of_owner(|name| sequence_of(name).is_some())? {
                let (name, bytes) = (file.name, file.bytes);
                let sequence = sequence_of(&name).expect("picked by its sequence");
                // Larger than a window of ours can be: not sent, and left where it is.
                if bytes > max_bytes {
                    log::warn!("{name} in the spool is larger than --spool-max: left alone");
                    continue;
                }
                entries.push(Entry {
                    sequence,
                    bytes,
                    body: None,
                });
            }
        }
        entries.sort_by_key(|entry| entry.sequence);
        let mut queue = Queue {
            spool,
            next: entries.last().map_or(0, |entry| entry.sequence + 1),
            bytes: entries
                .iter()
                .fold(0u64, |sum, entry| sum.saturating_add(entry.bytes)),
            entries: entries.into(),
            max_bytes,
            dropped: 0,
        };
        queue.keep_within_bound();
        Ok(queue)
    }

    /// Windows waiting.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether every window waiting is in the spool folder (and so outlives the agent).
    pub fn is_spooled(&self) -> bool {
        self.spool.is_some() && self.entries.iter().all(|entry| entry.body.is_none())
    }

    /// Bytes waiting.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Adds a window behind the others: to the spool folder, or (without one, or when it
    /// cannot be written) in memory.
    pub fn push(&mut self, body: Vec<u8>) {
        let sequence = self.next;
        self.next = (self.next + 1) % MAX_SEQUENCE;
        let bytes = body.len() as u64;
        let body = match &self.spool {
            Some(spool) => match spool.write(&file_name(sequence), &body) {
                Ok(()) => None,
                Err(err) => {
                    log::warn!(
                        "cannot spool a window in {}: {err}; it waits in memory",
                        spool.path().display()
                    );
                    Some(body)
                }
            },
            None => Some(body),
        };
        self.entries.push_back(Entry {
            sequence,
            bytes,
            body,
        });
        self.bytes = self.bytes.saturating_add(bytes);
        self.keep_within_bound();
    }

    /// The oldest window's request; one whose file cannot be read back is dropped, counted.
    pub fn front(&mut self) -> Option<Vec<u8>> {
        loop {
            let entry = self.entries.front()?;
            if let Some(body) = &entry.body {
                return Some(body.clone());
            }
            let spool = self.spool.as_ref().expect("spooled entries have a spool");
            // A window of this run larger than the bound is kept all the same (the newest).
            match spool.read(&file_name(entry.sequence), self.max_bytes.max(entry.bytes)) {
                Ok(body) => return Some(body),
                Err(err) => {
                    log::warn!(
                        "dropping spooled window {}: {err}",
                        file_name(entry.sequence)
                    );
                    self.dropped += 1;
                    self.pop_front();
                }
            }
        }
    }

    /// Removes the oldest window (sent, refused, or dropped).
    pub fn pop_front(&mut self) {
        let Some(entry) = self.entries.pop_front() else {
            return;
        };
        self.bytes = self.bytes.saturating_sub(entry.bytes);
        if entry.body.is_none()
            && let Some(spool) = &self.spool
            && let Err(err) = spool.remove(&file_name(entry.sequence))
        {
            log::warn!("cannot remove {}: {err}", file_name(entry.sequence));
        }
    }

    /// Drops the oldest windows past the bound; the newest stays, whatever its size.
    fn keep_within_bound(&mut self) {
        while self.bytes > self.max_bytes && self.entries.len() > 1 {
            self.dropped += 1;
            self.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spool(dir: &std::path::Path) -> Option<OutputDir> {
        Some(OutputDir::prepare_private(&dir.join("spool")).unwrap())
    }

    fn drain(queue: &mut Queue) -> Vec<Vec<u8>> {
        let mut bodies = Vec::new();
        while let Some(body) = queue.front() {
            bodies.push(body);
            queue.pop_front();
        }
        bodies
    }

    #[test]
    fn spooled_windows_survive_a_restart_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut queue = Queue::open(spool(dir.path()), 1 << 20).unwrap();
        for body in [b"one".to_vec(), b"two".to_vec(), b"three".to_vec()] {
            queue.push(body);
        }
        assert_eq!(queue.front().as_deref(), Some(&b"one"[..]));
        queue.pop_front();
        drop(queue);
        let mut queue = Queue::open(spool(dir.path()), 1 << 20).unwrap();
        assert_eq!((queue.len(), queue.bytes()), (2, 8));
        queue.push(b"four".to_vec());
        assert_eq!(drain(&mut queue), [&b"two"[..], b"three", b"four"]);
        let left = std::fs::read_dir(dir.path().join("spool")).unwrap().count();
        assert_eq!(left, 0, "sent windows leave no file");
    }

    #[test]
    fn past_the_bound_the_oldest_go_counted() {
        let dir = tempfile::tempdir().unwrap();
        for spool in [spool(dir.path()), None] {
            let mut queue = Queue::open(spool, 10).unwrap();
            for body in [b"aaaa".to_vec(), b"bbbb".to_vec(), b"cccc".to_vec()] {
                queue.push(body);
            }
            assert_eq!(queue.dropped, 1);
            assert_eq!(drain(&mut queue), [&b"bbbb"[..], b"cccc"]);
        }
    }

    #[test]
    fn a_planted_or_unreadable_file_is_dropped_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let mut queue = Queue::open(spool(dir.path()), 1 << 20).unwrap();
        queue.push(b"first".to_vec());
        queue.push(b"second".to_vec());
        // The first window's file swapped for a link to a secret.
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "secret").unwrap();
        let first = dir.path().join("spool").join(file_name(0));
        std::fs::remove_file(&first).unwrap();
        std::os::unix::fs::symlink(&secret, &first).unwrap();
        assert_eq!(drain(&mut queue), [&b"second"[..]]);
        assert_eq!(queue.dropped, 1);
        assert_eq!(std::fs::read_to_string(&secret).unwrap(), "secret");
        // Files not named as windows are not the queue's.
        std::fs::write(dir.path().join("spool/notes.txt"), "x").unwrap();
        assert!(Queue::open(spool(dir.path()), 1 << 20).unwrap().is_empty());
    }

    #[test]
    fn a_hard_link_or_a_shared_folder_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut queue = Queue::open(spool(dir.path()), 1 << 20).unwrap();
        queue.push(b"mine".to_vec());
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "secret").unwrap();
        let first = dir.path().join("spool").join(file_name(0));
        std::fs::remove_file(&first).unwrap();
        std::fs::hard_link(&secret, &first).unwrap();
        assert!(Queue::open(spool(dir.path()), 1 << 20).unwrap().is_empty());
        assert_eq!(queue.front(), None, "read back refused");
        assert_eq!(queue.dropped, 1);
        use std::os::unix::fs::PermissionsExt as _;
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = OutputDir::prepare_private(&shared).unwrap_err();
        assert!(err.to_string().contains("writable by it alone"), "{err}");
    }

    #[test]
    fn window_names_sort_by_sequence() {
        assert_eq!(sequence_of(&file_name(42)), Some(42));
        assert!(file_name(9) < file_name(10));
        for name in [
            "window-1.otlp",
            "window-0000000000000000000x.otlp",
            "window-18446744073709551615.otlp",
            "other",
        ] {
            assert_eq!(sequence_of(name), None, "{name}");
        }
    }
}
