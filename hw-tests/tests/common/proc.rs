//! A child process for the tests: its stderr collected line by line, its
//! typed events (`--events`) awaited.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::wait_for;

/// A process whose stderr is collected line by line in the background,
/// and, when spawned with `spawn_with_events`, whose typed events
/// (`--events`) can be awaited.
pub struct Proc {
    pub child: Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    pub(super) events: Option<PathBuf>,
}

static EVENT_FILES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Proc {
    /// Spawns a `hotspare run` or `standby` command with `--events` to a
    /// file of its own.
    pub fn spawn_with_events(mut cmd: Command) -> Proc {
        let n = EVENT_FILES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!("hs-events-{}-{n}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        cmd.arg("--events").arg(&path);
        let mut p = Proc::spawn(cmd);
        p.events = Some(path);
        p
    }

    /// The events written so far (the process must have been spawned with
    /// `spawn_with_events`). A line that is not an event fails the test.
    pub fn events(&self) -> Vec<engine::events::Event> {
        let path = self.events.as_ref().expect("spawned without --events");
        engine::events::read_file(path)
            .into_iter()
            .map(|l| l.unwrap_or_else(|e| panic!("not an event: {e}")).event)
            .collect()
    }

    /// Waits up to `t` for an event `pick` accepts; returns what it made of it.
    pub fn wait_event<T>(
        &mut self,
        t: Duration,
        pick: impl Fn(&engine::events::Event) -> Option<T>,
    ) -> Option<T> {
        let end = Instant::now() + t;
        loop {
            if let Some(x) = self.events().iter().find_map(&pick) {
                return Some(x);
            }
            if Instant::now() > end || self.child.try_wait().expect("try_wait").is_some() {
                std::thread::sleep(Duration::from_millis(20));
                return self.events().iter().find_map(&pick);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    pub fn spawn(mut cmd: Command) -> Proc {
        let mut child = cmd.stderr(Stdio::piped()).spawn().expect("spawn");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let err = child.stderr.take().expect("stderr");
        let l = lines.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                l.lock().unwrap().push(line);
            }
        });
        Proc {
            child,
            lines,
            events: None,
        }
    }

    pub fn stderr(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Waits up to `t` for a stderr line containing `needle`; returns it.
    pub fn wait_line(&mut self, needle: &str, t: Duration) -> Option<String> {
        let end = Instant::now() + t;
        loop {
            if let Some(l) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return Some(l.clone());
            }
            if Instant::now() > end || self.child.try_wait().expect("try_wait").is_some() {
                // One last look: the line may have arrived with the exit.
                std::thread::sleep(Duration::from_millis(20));
                return self
                    .lines
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|l| l.contains(needle))
                    .cloned();
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// How many stderr lines so far contain `needle`.
    pub fn count_lines(&self, needle: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits up to `t` for `n` stderr lines containing `needle`.
    pub fn wait_count(&mut self, needle: &str, n: usize, t: Duration) -> bool {
        let end = Instant::now() + t;
        while self.count_lines(needle) < n {
            if Instant::now() > end || self.child.try_wait().expect("try_wait").is_some() {
                std::thread::sleep(Duration::from_millis(20));
                return self.count_lines(needle) >= n;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }

    /// Waits for exit up to `t` (then kills and panics).
    pub fn wait(&mut self, t: Duration, what: &str) -> std::process::ExitStatus {
        if !wait_for(&mut self.child, t) {
            let _ = self.child.kill();
            panic!(
                "{what} did not finish within {t:?}\nstderr:\n{}",
                self.stderr()
            );
        }
        let st = self.child.wait().expect("wait");
        std::thread::sleep(Duration::from_millis(20));
        st
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(p) = &self.events {
            let _ = std::fs::remove_file(p);
        }
    }
}
