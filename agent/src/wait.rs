//! Triggering a build and waiting for it, with progress the way the reader can see
//! it: a live status line on a terminal, the build's own log with `--verbose` (or
//! for `submit`), and plain lines on state changes otherwise (journal, CI logs).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use kmodforge_api::wire::{BuildRequest, BuildResponse, BuildState};

use crate::client::{Client, ClientError};
use crate::exitcode::Exit;

/// How often a running build is polled.
const POLL: Duration = Duration::from_secs(1);
/// On a non-terminal, how often a "still building" line is printed.
const STILL_EVERY: Duration = Duration::from_secs(60);

/// How to show a build's progress.
pub enum Follow {
    /// The build's live log, copied to this writer.
    Log(Box<dyn Write>),
    /// A status line on a terminal (stderr), or plain lines when stderr is not one.
    Progress,
}

impl Follow {
    /// `--verbose` follows the log on stderr, else progress.
    pub fn for_sync(verbose: bool) -> Follow {
        if verbose {
            Follow::Log(Box::new(std::io::stderr()))
        } else {
            Follow::Progress
        }
    }
}

/// Why no final build record came back.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("gave up waiting for build {id} after {waited} (still {state}; build_wait_secs)")]
    TimedOut {
        id: String,
        waited: String,
        state: &'static str,
    },
}

impl WaitError {
    pub fn exit(&self) -> Exit {
        match self {
            WaitError::Client(e) => e.exit(),
            WaitError::TimedOut { .. } => Exit::BuildFailed,
        }
    }
}

/// `POST /v1/builds`, then waits until the build is final (a cache hit is final at once).
pub fn build_and_wait(
    client: &Client,
    req: &BuildRequest,
    label: &str,
    follow: Follow,
) -> Result<BuildResponse, WaitError> {
    let first = client.submit_build(req)?;
    if first.build.state.is_final() {
        return Ok(first);
    }
    let id = first.build.id.clone();
    eprintln!(
        "{label}: building on the server (build {id}, {})",
        first.build.state.as_str()
    );
    let started = Instant::now();
    let deadline = started + client.settings().build_wait;
    match follow {
        Follow::Log(mut out) => {
            if let Err(e) = copy_log(client, &id, &mut out) {
                eprintln!("{label}: cannot follow the build log ({e}); polling instead");
            }
            poll(client, &id, deadline, |_| {})
        }
        Follow::Progress => {
            let mut p = Progress::new(label, started, first.build.state);
            let r = poll(client, &id, deadline, |s| p.show(s));
            p.finish(r.as_ref().ok().map(|r| r.build.state));
            r
        }
    }
}

fn copy_log(client: &Client, id: &str, out: &mut dyn Write) -> Result<(), String> {
    let mut resp = client.log(id).map_err(|e| e.to_string())?;
    std::io::copy(&mut resp, out).map_err(|e| e.to_string())?;
    out.flush().map_err(|e| e.to_string())
}

/// Polls the build until it is final or `deadline` passes.
fn poll(
    client: &Client,
    id: &str,
    deadline: Instant,
    mut tick: impl FnMut(BuildState),
) -> Result<BuildResponse, WaitError> {
    let started = Instant::now();
    loop {
        let resp = client.build(id)?;
        if resp.build.state.is_final() {
            return Ok(resp);
        }
        tick(resp.build.state);
        if Instant::now() >= deadline {
            return Err(WaitError::TimedOut {
                id: id.to_string(),
                waited: elapsed(started.elapsed()),
                state: resp.build.state.as_str(),
            });
        }
        std::thread::sleep(POLL);
    }
}

/// "1m 5s": whole seconds.
pub fn elapsed(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

/// The progress display of one build on stderr.
struct Progress<'a> {
    label: &'a str,
    started: Instant,
    tty: bool,
    last_state: BuildState,
    last_line: Instant,
}

impl<'a> Progress<'a> {
    fn new(label: &'a str, started: Instant, state: BuildState) -> Self {
        Progress {
            label,
            started,
            tty: std::io::stderr().is_terminal(),
            last_state: state,
            last_line: started,
        }
    }

    fn show(&mut self, state: BuildState) {
        let took = elapsed(self.started.elapsed());
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{}: {} {took}", self.label, state.as_str());
            let _ = err.flush();
        } else if state != self.last_state || self.last_line.elapsed() >= STILL_EVERY {
            let _ = writeln!(err, "{}: build {} after {took}", self.label, state.as_str());
            self.last_line = Instant::now();
        }
        self.last_state = state;
    }

    /// Ends the status line on a terminal; says how the build ended otherwise.
    fn finish(&self, state: Option<BuildState>) {
        if self.tty {
            eprintln!();
        } else if let Some(state) = state {
            let took = elapsed(self.started.elapsed());
            eprintln!("{}: build {} after {took}", self.label, state.as_str());
        }
    }
}
