//! The control socket (`--control PATH`): how an agent changes a running
//! primary's spares and asks for its state. One JSON command per line in,
//! one JSON reply per line out, on a Unix socket created with mode 0600.
//!
//! The socket thread hands each command to the replicator's thread
//! (`Inbox`), which answers between epochs. A process that is not a
//! primary (a standby before its takeover) never takes the inbox, so its
//! commands time out with "not a primary".

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use crossbeam::channel;
use serde::{Deserialize, Serialize};

use crate::runner::LateDoorbell;

/// Longest command line accepted.
const MAX_LINE: u64 = 4096;
/// How long a command waits for the replicator.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);

/// A command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Protect the VM with one more spare (it joins with a live copy).
    AddSpare {
        /// The standby's `HOST:PORT`.
        addr: String,
        /// Whether it gates output.
        synchronous: bool,
    },
    /// Forget a spare that is not connected (a lost one).
    DropSpare {
        /// Its address.
        addr: String,
    },
    /// The primary's state.
    Status,
}

/// One spare, as a primary sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpareStatus {
    /// Its address.
    pub addr: String,
    /// Whether it gates output.
    pub synchronous: bool,
    /// Whether it is connected.
    pub linked: bool,
}

/// A primary's state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Its term.
    pub term: u64,
    /// The last epoch captured.
    pub seq: u64,
    /// Whether a synchronous spare protects it.
    pub protected: bool,
    /// Its spares.
    pub spares: Vec<SpareStatus>,
}

/// The answer to a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// Whether it was done.
    pub ok: bool,
    /// Why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// For `Status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
}

impl Reply {
    /// Done.
    pub fn done() -> Reply {
        Reply {
            ok: true,
            error: None,
            status: None,
        }
    }

    /// Refused, saying why.
    pub fn refused(why: impl Into<String>) -> Reply {
        Reply {
            ok: false,
            error: Some(why.into()),
            status: None,
        }
    }
}

/// A command waiting for the replicator.
pub struct Request {
    /// The command.
    pub cmd: Command,
    /// Where the answer goes.
    pub reply: channel::Sender<Reply>,
    /// After this nobody waits for the answer: the command is not carried
    /// out (a standby's queue, taken only after its takeover, holds such).
    pub deadline: std::time::Instant,
}

/// The replicator's end: commands to answer between epochs, and the
/// doorbell that wakes it when one arrives.
#[derive(Clone)]
pub struct Inbox {
    rx: channel::Receiver<Request>,
    bell: LateDoorbell,
}

impl Inbox {
    /// The next command waiting, if any.
    pub fn try_recv(&self) -> Result<Request, channel::TryRecvError> {
        self.rx.try_recv()
    }

    /// The next command, waiting up to `timeout` for one.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Request, channel::RecvTimeoutError> {
        self.rx.recv_timeout(timeout)
    }

    /// Has `bell` rung whenever a command arrives (the first bell given
    /// stays).
    pub fn ring_on_arrival(&self, bell: crate::runner::Doorbell) {
        self.bell.connect(bell);
    }
}

/// Serves `path` (replacing a stale socket) on a thread of its own.
pub fn serve(path: &Path) -> std::io::Result<Inbox> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let (tx, rx) = channel::bounded::<Request>(16);
    let bell = LateDoorbell::default();
    let ring = bell.clone();
    std::thread::Builder::new()
        .name("hs-control".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(ANSWER_WITHIN));
                let _ = conn.set_write_timeout(Some(ANSWER_WITHIN));
                answer(conn, &tx, &ring);
            }
        })?;
    Ok(Inbox { rx, bell })
}

/// Reads one command from `conn`, has it answered, writes the reply.
fn answer(conn: UnixStream, tx: &channel::Sender<Request>, bell: &LateDoorbell) {
    let mut line = String::new();
    let read = BufReader::new((&conn).take(MAX_LINE)).read_line(&mut line);
    let reply = match read {
        Err(e) => Reply::refused(format!("reading the command: {e}")),
        Ok(_) if !line.ends_with('\n') => {
            Reply::refused(format!("a command is one line of at most {MAX_LINE} bytes"))
        }
        Ok(_) => match serde_json::from_str::<Command>(&line) {
            Err(e) => Reply::refused(format!("not a command: {e}")),
            Ok(cmd) => {
                let (rtx, rrx) = channel::bounded(1);
                let deadline = std::time::Instant::now() + ANSWER_WITHIN;
                match tx.send_timeout(
                    Request {
                        cmd,
                        reply: rtx,
                        deadline,
                    },
                    ANSWER_WITHIN,
                ) {
                    Err(_) => Reply::refused("not a primary (no replicator takes commands)"),
                    Ok(()) => {
                        bell.ring();
                        rrx.recv_timeout(ANSWER_WITHIN).unwrap_or_else(|_| {
                            Reply::refused("not a primary (no replicator answered)")
                        })
                    }
                }
            }
        },
    };
    let mut text = serde_json::to_string(&reply).unwrap_or_default();
    text.push('\n');
    let _ = (&conn).write_all(text.as_bytes());
}

/// Sends `cmd` to the control socket at `path` and reads the reply.
pub fn call(path: &Path, cmd: &Command) -> std::io::Result<Reply> {
    let conn = UnixStream::connect(path)?;
    conn.set_read_timeout(Some(ANSWER_WITHIN + Duration::from_secs(1)))?;
    conn.set_write_timeout(Some(ANSWER_WITHIN))?;
    let mut text = serde_json::to_string(cmd).map_err(std::io::Error::other)?;
    text.push('\n');
    (&conn).write_all(text.as_bytes())?;
    let mut line = String::new();
    BufReader::new((&conn).take(1 << 20)).read_line(&mut line)?;
    serde_json::from_str(&line)
        .map_err(|e| std::io::Error::other(format!("a reply that is not JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_answered_by_the_inbox_or_refused() {
        let dir = std::env::temp_dir().join(format!("hs-control-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("c.sock");
        let inbox = serve(&sock).unwrap();
        let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let t = std::thread::spawn(move || {
            let r = inbox.recv_timeout(Duration::from_secs(10)).unwrap();
            assert_eq!(
                r.cmd,
                Command::AddSpare {
                    addr: "10.0.0.2:7100".into(),
                    synchronous: true
                }
            );
            r.reply.send(Reply::done()).unwrap();
            inbox
        });
        let add = Command::AddSpare {
            addr: "10.0.0.2:7100".into(),
            synchronous: true,
        };
        assert!(call(&sock, &add).unwrap().ok);
        let inbox = t.join().unwrap();
        // Garbage and an overlong line are refused, naming why.
        let mut c = UnixStream::connect(&sock).unwrap();
        c.write_all(b"{\"cmd\":\"reboot\"}\n").unwrap();
        let mut s = String::new();
        BufReader::new(&c).read_line(&mut s).unwrap();
        assert!(s.contains("not a command"), "{s}");
        let mut c = UnixStream::connect(&sock).unwrap();
        c.write_all(&vec![b'x'; 5000]).unwrap();
        let mut s = String::new();
        BufReader::new(&c).read_line(&mut s).unwrap();
        assert!(s.contains("one line"), "{s}");
        // Nobody takes the inbox: "not a primary".
        drop(inbox);
        let r = call(&sock, &Command::Status).unwrap();
        assert!(!r.ok && r.error.unwrap().contains("not a primary"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
