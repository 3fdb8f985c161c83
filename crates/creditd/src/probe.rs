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

/// `plugins check` exits with this when the file loads but is not ready to deploy.
pub const LOADS_NOT_CLEAN: i32 = 3;

/// The last line a check's child prints, once the library was opened (or refused) and its
/// samples priced: proof that the plugin gave control back (an initialiser can also end
/// the process with any exit code of its own).
pub const RETURNED: &str = "credits-plugin-check: returned";

/// Output kept of a child, per stream.
const MAX_OUTPUT: u64 = 64 * 1024;

/// How a child that checked a plugin ended.
struct Finished {
    /// `None`: killed after [`PROBE_TIMEOUT`].
    status: Option<ExitStatus>,
    stdout: String,
    stderr: String,
}

impl Finished {
    fn returned(&self) -> bool {
        self.stdout.lines().any(|l| l == RETURNED)
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
    let mut child = Command::new(this_executable()?)
        .args(["plugins", "check", "--in-process"])
        .arg(file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    Ok(Running {
        child,
        stdout,
        stderr,
    })
}

struct Running {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
}

/// Reads a child's stream to its end on a thread of its own (a full pipe would stall the
/// child), keeping the first [`MAX_OUTPUT`] bytes.
fn drain(stream: Option<impl Read + Send + 'static>) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    if let Some(stream) = stream {
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            let mut stream = stream;
            let _ = stream.by_ref().take(MAX_OUTPUT).read_to_end(&mut kept);
            let _ = std::io::copy(&mut stream, &mut std::io::sink());
            let _ = tx.send(String::from_utf8_lossy(&kept).into_owned());
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
    for line in finished.stdout.lines().filter(|l| *l != RETURNED) {
        println!("{line}");
    }
    eprint!("{}", finished.stderr);
    match (finished.refusal(), finished.status.and_then(|s| s.code())) {
        (None, Some(code)) => code,
        (Some(why), _) => {
            eprintln!("plugin {} refused: {why}", file.display());
            1
        }
        (None, None) => 1,
    }
}

/// The registry's probe: each library copy is opened in a child first, [`PROBES_AT_ONCE`]
/// at a time. A copy the child opened and came back from is for the service's own load to
/// judge (and name) as always; one that crashed, hung or ended the child is refused.
pub fn registry_probe() -> credits_pricing::Probe {
    Arc::new(|files: &[&Path]| {
        let mut outcomes = Vec::with_capacity(files.len());
        for chunk in files.chunks(PROBES_AT_ONCE) {
            let deadline = Instant::now() + PROBE_TIMEOUT;
            let running: Vec<_> = chunk.iter().map(|f| start(f)).collect();
            for started in running {
                outcomes.push(match started {
                    Ok(running) => {
                        let finished = running.finish(deadline);
                        finished.refusal().map_or(Ok(()), Err)
                    }
                    Err(e) => Err(format!("cannot start the check: {e}")),
                });
            }
        }
        outcomes
    })
}
