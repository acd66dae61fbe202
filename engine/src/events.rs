//! Typed events: what a VMM process tells the agent, the bench, the demo
//! and the tests, one JSON object per line in the file given by
//! `--events`. They replace scraping stderr text: a field is named and
//! typed, and a new field never breaks a reader (unknown fields are
//! ignored when read). The stderr messages stay, for people.
//!
//! The sink is process-wide, like a logger: set once by the binary,
//! written from wherever the event happens. Without a sink `emit` does
//! nothing. A failed write is counted and never stops the VMM: events
//! are reports, not part of the protocol.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Which side of a VM a process is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Runs the guest.
    Primary,
    /// Shadows it.
    Standby,
}

/// How a spare joins a primary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JoinKind {
    /// A live copy, then the epochs after it.
    Copy,
    /// Increments from the epoch a new primary resumed from.
    Continue,
}

/// One event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The process runs in this role.
    Started {
        /// Its role.
        role: Role,
        /// The VM's id (the arbiter's key); a standby learns it from its
        /// primary.
        vm: Option<String>,
    },
    /// A standby accepts primaries on this address.
    Listening {
        /// `IP:PORT`.
        addr: String,
    },
    /// The guest runs (a primary's first instruction, or a takeover's).
    Running {
        /// The primary's term.
        term: u64,
    },
    /// A spare connected and is joining.
    SpareJoining {
        /// Its address.
        spare: String,
        /// How.
        join: JoinKind,
        /// Whether it gates output.
        synchronous: bool,
    },
    /// The live copy to a joining spare is complete (the epochs after it
    /// follow).
    LiveCopied {
        /// The spare.
        spare: String,
        /// Guest pages and disk blocks copied (4 KiB each).
        units: u64,
        /// Bytes on the wire.
        wire_bytes: u64,
        /// How long the copy took, s.
        seconds: f64,
        /// Of `units`, those sent plain (the rest zstd-coded): the copy
        /// codes each chunk the way that keeps pace best
        /// (`replication/copycoding.rs`).
        plain_units: u64,
        /// Of `units`, those read again in the catch-up round: what the
        /// guest wrote while the copy was read.
        catch_up_units: u64,
    },
    /// A spare protects the VM (it gates output; the arbiter names it).
    Protected {
        /// The spare.
        spare: String,
        /// The epoch at which it became a member.
        epoch: u64,
    },
    /// An asynchronous spare follows the VM.
    AsyncFollowing {
        /// The spare.
        spare: String,
    },
    /// A spare was lost.
    SpareLost {
        /// The spare.
        spare: String,
        /// Why.
        why: String,
    },
    /// No synchronous spare protects the VM.
    Unprotected {
        /// Why.
        why: String,
    },
    /// A standby is in sync with a primary.
    InSync {
        /// The primary's term.
        term: u64,
        /// The epoch it committed.
        epoch: u64,
    },
    /// A standby took over: it runs the guest as primary.
    TookOver {
        /// The new term.
        term: u64,
        /// The committed epoch it resumed from.
        epoch: u64,
        /// The console byte the guest's output resumes at.
        console_at: u64,
        /// Whether it was an asynchronous spare (it may lose the last moments).
        from_async: bool,
        /// Silence detected to claim, ms.
        detection_ms: f64,
        /// The arbiter's decision, ms.
        arbiter_ms: f64,
        /// Decision to running guest, ms.
        activation_ms: f64,
    },
    /// Another copy owns the VM; this one stopped.
    Superseded {
        /// Why.
        why: String,
    },
    /// One epoch's figures (a primary, once the epoch is encoded).
    Epoch {
        /// Its number.
        seq: u64,
        /// Whether it was a full epoch.
        full: bool,
        /// The guest's pause, µs.
        pause_us: u64,
        /// Dirty pages captured.
        pages: u64,
        /// Bytes before encoding.
        raw_bytes: u64,
        /// Bytes on the wire.
        wire_bytes: u64,
        /// Acknowledgement latencies of synchronous spares collected since
        /// the last epoch event, µs.
        acks_us: Vec<u64>,
        /// How many epochs the furthest asynchronous spare lags.
        async_lag: Option<u64>,
    },
    /// A standby's CPU time by thread, taken right after it committed
    /// epoch `through` (every [`crate::cpu::MARK_EVERY`]th epoch): the
    /// bench's steady-state CPU per page comes from two of them.
    CpuMark(crate::cpu::CpuMark),
    /// A standby ends without taking over (its primary's guest ended).
    StandbyEnded {
        /// Epochs it committed.
        epochs: u64,
        /// The process's CPU time, s.
        cpu_s: f64,
        /// CPU time by thread name, s (the engine's accounted threads, and
        /// the thread that ended the standby as `hs-main`).
        #[serde(default)]
        threads_cpu_s: std::collections::BTreeMap<String, f64>,
    },
    /// The process is about to exit.
    Exiting {
        /// Its exit status.
        code: i32,
        /// Why.
        why: String,
    },
}

/// An event as written: when, by whom, what.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Line {
    /// Wall clock, ms since the Unix epoch.
    pub at_ms: u64,
    /// The writing process.
    pub pid: u32,
    /// The event.
    #[serde(flatten)]
    pub event: Event,
}

struct Sink {
    file: Mutex<File>,
}

static SINK: OnceLock<Sink> = OnceLock::new();
static FAILED: AtomicU64 = AtomicU64::new(0);

/// Sends events to `path` from now on (appending; created with mode 0640).
/// Only the first call in a process takes effect.
pub fn open(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)?;
    let _ = SINK.set(Sink {
        file: Mutex::new(file),
    });
    Ok(())
}

/// Whether a sink is set.
pub fn enabled() -> bool {
    SINK.get().is_some()
}

/// Writes one event (nothing without a sink). One `write` per line, so
/// lines from several threads never interleave.
pub fn emit(event: Event) {
    let Some(sink) = SINK.get() else {
        return;
    };
    let line = Line {
        at_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        pid: std::process::id(),
        event,
    };
    let Ok(mut text) = serde_json::to_vec(&line) else {
        FAILED.fetch_add(1, Ordering::Relaxed);
        return;
    };
    text.push(b'\n');
    let mut f = sink.file.lock().unwrap_or_else(|e| e.into_inner());
    if f.write_all(&text).is_err() {
        FAILED.fetch_add(1, Ordering::Relaxed);
    }
}

/// Events that could not be written.
pub fn failed() -> u64 {
    FAILED.load(Ordering::Relaxed)
}

/// Reads an events file as it grows: each call returns the whole lines
/// written since the last one. A line that is not an event (a newer
/// writer's kind, a torn write) is returned as an error with its text,
/// and reading goes on after it.
pub struct Tail {
    file: File,
    pos: u64,
    partial: Vec<u8>,
}

impl Tail {
    /// Tails `path` from its start.
    pub fn open(path: &Path) -> std::io::Result<Tail> {
        Ok(Tail {
            file: File::open(path)?,
            pos: 0,
            partial: Vec::new(),
        })
    }

    /// The complete lines added since the last call.
    pub fn read(&mut self) -> std::io::Result<Vec<Result<Line, String>>> {
        self.file.seek(SeekFrom::Start(self.pos))?;
        let mut buf = Vec::new();
        let n = (&mut self.file).take(16 << 20).read_to_end(&mut buf)?;
        self.pos += n as u64;
        self.partial.extend_from_slice(&buf);
        let Some(end) = self.partial.iter().rposition(|&b| b == b'\n') else {
            return Ok(Vec::new());
        };
        let whole: Vec<u8> = self.partial.drain(..=end).collect();
        Ok(parse_lines(&whole))
    }
}

/// The events of whole lines in `bytes` (a line that is not an event is
/// an error carrying its text).
fn parse_lines(bytes: &[u8]) -> Vec<Result<Line, String>> {
    BufReader::new(bytes)
        .lines()
        .map_while(|l| l.ok())
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<Line>(&l).map_err(|e| format!("{e}: {l}")))
        .collect()
}

/// The events of an events file so far: its whole lines (the last may
/// still be being written). A missing file has none.
pub fn read_file(path: &Path) -> Vec<Result<Line, String>> {
    let bytes = std::fs::read(path).unwrap_or_default();
    let end = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    parse_lines(&bytes[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_as_tagged_json_lines() {
        let e = Event::TookOver {
            term: 3,
            epoch: 41,
            console_at: 12,
            from_async: false,
            detection_ms: 1.5,
            arbiter_ms: 0.8,
            activation_ms: 2.0,
        };
        let line = Line {
            at_ms: 7,
            pid: 9,
            event: e.clone(),
        };
        let text = serde_json::to_string(&line).unwrap();
        assert!(text.contains(r#""event":"took_over""#), "{text}");
        assert_eq!(serde_json::from_str::<Line>(&text).unwrap().event, e);
        // A CPU mark's fields sit beside the tag, like every event's.
        let mark = Event::CpuMark(crate::cpu::CpuMark {
            through: 50,
            process_cpu_s: 1.25,
            threads_cpu_s: [("hs-stream".to_owned(), 0.5)].into(),
        });
        let text = serde_json::to_string(&mark).unwrap();
        assert!(
            text.contains(r#""event":"cpu_mark","through":50"#),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<Event>(&text).unwrap(), mark);
        // A reader ignores fields it does not know.
        let newer = r#"{"at_ms":1,"pid":2,"event":"listening","addr":"a:1","extra":true}"#;
        assert_eq!(
            serde_json::from_str::<Line>(newer).unwrap().event,
            Event::Listening { addr: "a:1".into() }
        );
    }

    #[test]
    fn a_tail_returns_whole_lines_and_names_bad_ones() {
        let dir = std::env::temp_dir().join(format!("hs-events-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ev");
        std::fs::write(&path, b"").unwrap();
        let mut t = Tail::open(&path).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(br#"{"at_ms":1,"pid":2,"event":"started","role":"primary","vm":"v"}"#)
            .unwrap();
        assert!(t.read().unwrap().is_empty(), "half a line is not returned");
        f.write_all(b"\n{\"at_ms\":1,\"pid\":2,\"event\":\"nope\"}\n{\"at_ms\":1,\"pid\":2,\"event\":\"running\",\"term\":4}\n")
            .unwrap();
        let got = t.read().unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(
            got[0].as_ref().unwrap().event,
            Event::Started {
                role: Role::Primary,
                vm: Some("v".into())
            }
        );
        assert!(got[1].as_ref().unwrap_err().contains("nope"));
        assert_eq!(got[2].as_ref().unwrap().event, Event::Running { term: 4 });
        assert!(t.read().unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
