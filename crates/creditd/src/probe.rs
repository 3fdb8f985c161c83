//! Opening a plugin runs its initialisers, which no check can vet beforehand: one that
//! crashes ends the process that opened it, and one that never returns holds the dynamic
//! loader's lock (so no later reload, and not even the process's exit, gets through). So
//! `creditd` opens every new library in a child process first (`plugins check
//! --in-process`), and only a file that loaded there is opened in the service.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the child may take to open a library and price its samples.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// `plugins check` exits with this when the file loads but is not ready to deploy.
pub const LOADS_NOT_CLEAN: i32 = 3;

/// How a child that checked a plugin ended.
enum Ended {
    Exited(ExitStatus),
    TimedOut,
}

/// Runs `creditd plugins check --in-process FILE`; waits at most [`PROBE_TIMEOUT`] and kills
/// it past that.
fn check_in_child(file: &Path, stdout: Stdio, stderr: Stdio) -> std::io::Result<(Child, Ended)> {
    let mut child = Command::new(this_executable()?)
        .args(["plugins", "check", "--in-process"])
        .arg(file)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()?;
    let deadline = Instant::now() + PROBE_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok((child, Ended::Exited(status)));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok((child, Ended::TimedOut));
        }
        std::thread::sleep(Duration::from_millis(5));
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

/// Why a child's end refuses the file, if it does.
fn refusal(ended: &Ended) -> Option<String> {
    match ended {
        Ended::TimedOut => Some(format!(
            "opening it did not finish within {} s (an initialiser or a price call that never returns?)",
            PROBE_TIMEOUT.as_secs()
        )),
        Ended::Exited(status) if status.code().is_none() => Some(format!(
            "it ended the process that opened it ({status}): an initialiser or a price call crashed"
        )),
        Ended::Exited(_) => None,
    }
}

/// `creditd plugins check FILE`: the check runs in a child, whose report and exit code are
/// this command's; a crash or a hang there is a refusal naming the file (exit 1).
pub fn check_command(file: &Path) -> i32 {
    match check_in_child(file, Stdio::inherit(), Stdio::inherit()) {
        Ok((_, ended)) => match (refusal(&ended), ended) {
            (Some(why), _) => {
                eprintln!("plugin {} refused: {why}", file.display());
                1
            }
            (None, Ended::Exited(status)) => status.code().unwrap_or(1),
            (None, Ended::TimedOut) => 1,
        },
        Err(e) => {
            eprintln!(
                "plugin {} refused: cannot start the check: {e}",
                file.display()
            );
            1
        }
    }
}

/// The registry's probe: a library copy loads in a child first, or is refused with why.
pub fn registry_probe() -> credits_pricing::Probe {
    Arc::new(|file: &Path| {
        let (mut child, ended) = check_in_child(file, Stdio::null(), Stdio::piped())
            .map_err(|e| format!("cannot start the check: {e}"))?;
        if let Some(why) = refusal(&ended) {
            return Err(why);
        }
        let mut said = String::new();
        if let Some(mut err) = child.stderr.take() {
            // A check that ended has written everything; its report is short.
            let _ = err.read_to_string(&mut said);
        }
        match ended {
            // It loaded (0), loads but is not ready (3), or was refused cleanly (1): opening
            // it here is as safe as it was there, and the service's own load decides, and
            // names the file, as it always does.
            Ended::Exited(status) if matches!(status.code(), Some(0 | 1 | LOADS_NOT_CLEAN)) => {
                Ok(())
            }
            _ => Err(said
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map_or_else(
                    || {
                        format!(
                            "the check ended with {ended_status}",
                            ended_status = status_of(&ended)
                        )
                    },
                    str::to_owned,
                )),
        }
    })
}

fn status_of(ended: &Ended) -> String {
    match ended {
        Ended::Exited(status) => status.to_string(),
        Ended::TimedOut => "a timeout".into(),
    }
}
