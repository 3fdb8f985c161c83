//! Opening a plugin runs its initialisers, which no check can vet beforehand: one that
//! crashes ends the process that opened it, and one that never returns holds the dynamic
//! loader's lock (so no later reload, and not even the process's exit, gets through). So
//! `creditd` opens every new library in a child process first (`plugins check
//! --in-process`), and only a file the child opened and came back from is opened in the
//! service.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

/// How long a child may take to open a library and price its samples.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Children probing at once.
const PROBES_AT_ONCE: usize = 8;

/// How long one start or reload may spend probing, all files together: well inside its
/// 30 s limit (`RELOAD_TIMEOUT`). Files not probed by then are refused this time only.
const PROBE_BUDGET: Duration = Duration::from_secs(20);

/// `plugins check` exits with this when the file loads but is not ready to deploy.
pub const LOADS_NOT_CLEAN: i32 = 3;

/// The last line a check's child prints, once the library was opened (or refused) and its
/// samples priced: proof that the plugin gave control back (an initialiser can also end
/// the process with any exit code of its own).
pub const RETURNED: &str = "credits-plugin-check: returned";

/// The line a check's child prints just before it opens the library: a child that ended
/// without it never reached the plugin (its runtime could not start, say), so its end says
/// nothing about the file.
pub const OPENING: &str = "credits-plugin-check: opening";

/// Output kept of a child, per stream.
const MAX_OUTPUT: u64 = 64 * 1024;

/// How a child that checked a plugin ended.
struct Finished {
    /// `None`: killed after [`PROBE_TIMEOUT`].
    status: Option<ExitStatus>,
    stdout: Output,
    stderr: Output,
}

/// What a child wrote on one stream.
#[derive(Default)]
struct Output {
    /// The first [`MAX_OUTPUT`] bytes.
    kept: String,
    /// Its last line (whatever came before it): the marker, if it came.
    last_line: String,
    /// Read to its end.
    complete: bool,
}

impl Finished {
    fn returned(&self) -> bool {
        self.stdout.complete && self.stdout.last_line == RETURNED
    }

    fn opened(&self) -> bool {
        self.stdout.kept.lines().any(|l| l == OPENING)
    }

    /// Ended by a signal a fault in the plugin does not raise: SIGKILL (the OOM killer),
    /// SIGHUP from an operator's `pkill -HUP -f creditd` meant for the service (found by
    /// review), and the like.
    fn killed(&self) -> bool {
        use std::os::unix::process::ExitStatusExt;
        const FAULTS: [i32; 7] = [
            libc::SIGSEGV,
            libc::SIGBUS,
            libc::SIGABRT,
            libc::SIGILL,
            libc::SIGFPE,
            libc::SIGSYS,
            libc::SIGTRAP,
        ];
        self.status
            .and_then(|s| s.signal())
            .is_some_and(|signal| !FAULTS.contains(&signal))
    }

    /// Why this end refuses the file, if it does.
    fn refusal(&self) -> Option<String> {
        match self.status {
            None => Some(format!(
                "opening it did not finish within {} s (an initialiser or a price call that never returns?)",
                PROBE_TIMEOUT.as_secs()
            )),
            Some(status) if status.code().is_none() => Some(format!(
                "it ended the process that opened it ({status}): an initialiser or a price call crashed"
            )),
            Some(status) if !self.returned() => Some(format!(
                "it ended the process that opened it ({status}) before the check was done"
            )),
            Some(_) => None,
        }
    }

    /// What the registry makes of this end: a child killed at the deadline, or whose
    /// output never ended (a process it started holds the stream), may only have met a
    /// slow machine; one that ended before it opened the library, or was killed by a
    /// signal no fault raises, met something else than the plugin (found by review: refused for good by
    /// its content, a good file stayed refused until a restart). Each is probed again on
    /// the next reload.
    fn verdict(&self) -> credits_pricing::Probed {
        use credits_pricing::Probed;
        match self.refusal() {
            None => Probed::Passed,
            Some(why)
                if self.status.is_none()
                    || !self.stdout.complete
                    || !self.opened()
                    || self.killed() =>
            {
                Probed::Unsure(why)
            }
            Some(why) => Probed::Refused(why),
        }
    }
}

/// This binary. On Linux through `/proc/self/exe`, which still runs it after a deploy has
/// replaced the file on disk (a reload before the restart).
fn this_executable() -> std::io::Result<std::path::PathBuf> {
    let proc_self = Path::new("/proc/self/exe");
    if cfg!(target_os = "linux") && proc_self.exists() {
        Ok(proc_self.to_owned())
    } else {
        std::env::current_exe()
    }
}

/// Starts `creditd plugins check --in-process FILE`.
fn start(file: &Path) -> std::io::Result<Running> {
    let mut command = Command::new(this_executable()?);
    command
        .args(["plugins", "check", "--in-process"])
        .arg(file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    dies_with_its_parent(&mut command);
    let mut child = command.spawn()?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    Ok(Running {
        child,
        stdout,
        stderr,
    })
}

/// A child stuck in an initialiser outlives a parent that exits (or is killed) while it
/// probes, holding its memory and the plugin file forever. On Linux the kernel kills it when
/// the thread that started it ends; that thread waits for the child or kills it at its
/// deadline, so only the parent's own end comes first.
#[cfg(target_os = "linux")]
fn dies_with_its_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec the closure calls only async-signal-safe functions
    // (`prctl`, `getppid`, `open`, `write`, `close`) and allocates nothing.
    let parent = std::process::id() as libc::pid_t;
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have ended before the request took effect.
            if libc::getppid() != parent {
                return Err(std::io::ErrorKind::BrokenPipe.into());
            }
            // A plugin that uses up memory gets its probe killed, not the service or a
            // database beside it (a child killed so is probed again on the next reload).
            // Best effort: raising its own score needs no privilege.
            let adj = libc::open(c"/proc/self/oom_score_adj".as_ptr(), libc::O_WRONLY);
            if adj >= 0 {
                libc::write(adj, b"1000".as_ptr().cast(), 4);
                libc::close(adj);
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn dies_with_its_parent(_: &mut Command) {}

struct Running {
    child: Child,
    stdout: mpsc::Receiver<Output>,
    stderr: mpsc::Receiver<Output>,
}

/// Reads a child's stream to its end on a thread of its own (a full pipe would stall the
/// child), keeping the first [`MAX_OUTPUT`] bytes and the last line.
fn drain(stream: Option<impl Read + Send + 'static>) -> mpsc::Receiver<Output> {
    let (tx, rx) = mpsc::channel();
    if let Some(mut stream) = stream {
        std::thread::spawn(move || {
            let (mut kept, mut current, mut last) = (Vec::new(), Vec::new(), Vec::new());
            let mut chunk = [0u8; 8192];
            let complete = loop {
                match stream.read(&mut chunk) {
                    Ok(0) => break true,
                    Ok(n) => {
                        let room = (MAX_OUTPUT as usize).saturating_sub(kept.len());
                        kept.extend_from_slice(&chunk[..n.min(room)]);
                        for &b in &chunk[..n] {
                            if b == b'\n' {
                                if !current.is_empty() {
                                    last = std::mem::take(&mut current);
                                }
                            } else if current.len() < 256 {
                                current.push(b);
                            }
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break false,
                }
            };
            if !current.is_empty() {
                last = current;
            }
            let last_line = String::from_utf8_lossy(&last).trim_end().to_owned();
            let kept = String::from_utf8_lossy(&kept).into_owned();
            let _ = tx.send(Output {
                kept,
                last_line,
                complete,
            });
        });
    }
    rx
}

impl Running {
    /// Waits until `deadline` at most; kills the child past it.
    fn finish(mut self, deadline: Instant) -> Finished {
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                // Past the deadline, or it cannot be asked: it goes.
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break None;
                }
            }
        };
        // A process the plugin started may hold the streams open: their ends are not
        // waited for long (that reader thread then stays blocked, and only it).
        let grace = Duration::from_millis(200);
        Finished {
            status,
            stdout: self.stdout.recv_timeout(grace).unwrap_or_default(),
            stderr: self.stderr.recv_timeout(grace).unwrap_or_default(),
        }
    }
}

/// `creditd plugins check FILE`: the check runs in a child, whose report and exit code are
/// this command's; a crash or a hang there is a refusal naming the file (exit 1).
pub fn check_command(file: &Path) -> i32 {
    let finished = match start(file) {
        Ok(running) => running.finish(Instant::now() + PROBE_TIMEOUT),
        Err(e) => {
            eprintln!(
                "plugin {} refused: cannot start the check: {e}",
                file.display()
            );
            return 1;
        }
    };
    for line in finished
        .stdout
        .kept
        .lines()
        .filter(|l| *l != RETURNED && *l != OPENING)
    {
        println!("{line}");
    }
    eprint!("{}", finished.stderr.kept);
    match finished.refusal() {
        // No refusal: the child exited with a code of its own.
        None => finished.status.and_then(|s| s.code()).unwrap_or(1),
        Some(why) => {
            eprintln!("plugin {} refused: {why}", file.display());
            1
        }
    }
}

/// The registry's probe: each library copy is opened in a child first, [`PROBES_AT_ONCE`]
/// at a time. A copy the child opened and came back from is for the service's own load to
/// judge (and name) as always; one that crashed or ended the child is refused for good; one
/// whose child did not finish in time, or could not run, is refused this time only.
pub fn registry_probe() -> credits_pricing::Probe {
    use credits_pricing::Probed;
    Arc::new(|files: &[&Path]| {
        let mut outcomes = Vec::with_capacity(files.len());
        let budget = Instant::now() + PROBE_BUDGET;
        for chunk in files.chunks(PROBES_AT_ONCE) {
            if Instant::now() >= budget {
                let why = "not probed: the others took the time a reload may spend probing";
                outcomes.extend(chunk.iter().map(|_| Probed::Unsure(why.into())));
                continue;
            }
            let deadline = (Instant::now() + PROBE_TIMEOUT).min(budget);
            let running: Vec<_> = chunk.iter().map(|f| start(f)).collect();
            for started in running {
                outcomes.push(match started {
                    Ok(running) => running.finish(deadline).verdict(),
                    Err(e) => Probed::Unsure(format!("cannot start the check: {e}")),
                });
            }
        }
        outcomes
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn ended(status: ExitStatus, stdout: &str) -> Finished {
        Finished {
            status: Some(status),
            stdout: Output {
                kept: stdout.to_owned(),
                last_line: stdout.lines().last().unwrap_or_default().to_owned(),
                complete: true,
            },
            stderr: Output::default(),
        }
    }

    /// Found by review: a child killed by the out-of-memory killer (or, found by a later
    /// review, by a SIGHUP meant for the service), or one whose runtime could not start
    /// (exit 1 before it opened anything), refused the file for good by its content. Only a child that opened the library and then crashed or exited
    /// without coming back refuses it.
    #[test]
    fn only_an_end_inside_the_plugin_refuses_it_for_good() {
        use credits_pricing::Probed;
        let opening = format!("{OPENING}\n");
        let verdict = |status, stdout: &str| ended(status, stdout).verdict();
        for signal in [libc::SIGKILL, libc::SIGHUP, libc::SIGTERM, libc::SIGINT] {
            assert!(matches!(
                verdict(ExitStatus::from_raw(signal), &opening),
                Probed::Unsure(_)
            ));
        }
        assert!(matches!(
            verdict(ExitStatus::from_raw(1 << 8), ""),
            Probed::Unsure(_)
        ));
        for signal in [libc::SIGSEGV, libc::SIGBUS, libc::SIGABRT, libc::SIGILL] {
            assert!(matches!(
                verdict(ExitStatus::from_raw(signal), &opening),
                Probed::Refused(_)
            ));
        }
        assert!(matches!(
            verdict(ExitStatus::from_raw(1 << 8), &opening),
            Probed::Refused(_)
        ));
        let returned = format!("{OPENING}\nreport\n{RETURNED}\n");
        assert!(matches!(
            verdict(ExitStatus::from_raw(0), &returned),
            Probed::Passed
        ));
    }
}
