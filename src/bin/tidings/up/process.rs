//! One running replica: started as `sh -c COMMAND` in a process group of its own, its output
//! forwarded line by line, and stopped as a group — SIGTERM, the drain timeout, SIGKILL — so
//! that nothing it started is left running.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use rustix::process::{kill_process_group, test_kill_process_group, Pid, Signal};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use super::output::{Label, Printer};

/// How to start one replica.
#[derive(Debug, Clone)]
pub(super) struct Spec {
    pub(super) label: Label,
    pub(super) command: String,
    pub(super) dir: PathBuf,
    pub(super) env: Vec<(String, String)>,
}

/// A started replica and the tasks forwarding its output.
#[derive(Debug)]
pub(super) struct Running {
    child: Child,
    group: Option<Pid>,
    forwarding: Vec<JoinHandle<()>>,
}

impl Running {
    pub(super) fn start(spec: &Spec, printer: Printer) -> std::io::Result<Self> {
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(&spec.command)
            .current_dir(&spec.dir)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()?;
        let group = child.id().and_then(|id| Pid::from_raw(id as i32));
        let mut forwarding = Vec::new();
        if let Some(out) = child.stdout.take() {
            forwarding.push(forward(out, spec.label.clone(), printer));
        }
        if let Some(err) = child.stderr.take() {
            forwarding.push(forward(err, spec.label.clone(), printer));
        }
        Ok(Self {
            child,
            group,
            forwarding,
        })
    }

    pub(super) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Waits for the process to exit. Call [`clean_up`](Self::clean_up) next.
    pub(super) async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// Stops the whole group: SIGTERM, then SIGKILL once `drain` has passed (or at once when
    /// `hurry` resolves first: a second Ctrl-C). Returns the leader's status, and whether
    /// SIGKILL was needed.
    pub(super) async fn stop(
        &mut self,
        drain: Duration,
        hurry: impl std::future::Future<Output = ()>,
    ) -> (Option<ExitStatus>, bool) {
        self.signal(Signal::TERM);
        let deadline = tokio::time::Instant::now() + drain;
        tokio::pin!(hurry);
        let mut killed = false;
        let status = tokio::select! {
            status = self.child.wait() => status.ok(),
            _ = tokio::time::sleep_until(deadline) => None,
            _ = &mut hurry => None,
        };
        let status = match status {
            Some(status) => Some(status),
            None => {
                killed = true;
                self.signal(Signal::KILL);
                self.child.wait().await.ok()
            }
        };
        // The leader is gone. What else it started gets SIGTERM again (a child forked while the
        // first one was on its way missed it) and the rest of the drain time.
        if !killed {
            self.signal(Signal::TERM);
        }
        if !killed && !self.group_is_empty_by(deadline, &mut hurry).await {
            killed = true;
            self.signal(Signal::KILL);
        }
        for task in self.forwarding.drain(..) {
            let _ = task.await;
        }
        (status, killed)
    }

    /// After the leader exited: stops what it left in its group (which may hold its output
    /// open), then forwards the rest of its output.
    pub(super) async fn clean_up(&mut self, drain: Duration) {
        if self.group.is_some_and(group_alive) {
            let _ = self.stop(drain, std::future::pending()).await;
        }
        for task in self.forwarding.drain(..) {
            let _ = task.await;
        }
    }

    /// Polls until no process of the group is left (true) or `deadline`/`hurry` (false).
    async fn group_is_empty_by(
        &self,
        deadline: tokio::time::Instant,
        hurry: &mut (impl std::future::Future<Output = ()> + Unpin),
    ) -> bool {
        let Some(group) = self.group else {
            return true;
        };
        loop {
            if !group_alive(group) {
                return true;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = tokio::time::sleep_until(deadline) => return false,
                _ = &mut *hurry => return false,
            }
        }
    }

    fn signal(&self, signal: Signal) {
        if let Some(group) = self.group {
            // ESRCH: the group is already gone.
            let _ = kill_process_group(group, signal);
        }
    }
}

/// Whether a process of `group` still runs. Zombies do not count: a grandchild orphaned by
/// its parent's exit is reaped by init, which in containers may take its time. Where there is
/// no `/proc`, any member counts.
fn group_alive(group: Pid) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return test_kill_process_group(group).is_ok();
    };
    let wanted = group.as_raw_nonzero().get().to_string();
    entries.flatten().any(|entry| {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            return false;
        };
        // pid (comm) state ppid pgrp …; comm may hold spaces and parentheses.
        let mut fields = stat
            .rsplit_once(')')
            .map_or("", |(_, rest)| rest)
            .split_whitespace();
        let state = fields.next().unwrap_or("Z");
        let pgrp = fields.nth(1).unwrap_or("");
        pgrp == wanted && !matches!(state, "Z" | "X" | "x")
    })
}

/// Forwards `stream` line by line under `label` (lossy UTF-8: any program's output prints).
fn forward(
    stream: impl AsyncRead + Unpin + Send + 'static,
    label: Label,
    printer: Printer,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut reader = BufReader::new(stream);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line);
                    printer.line(&label, text.trim_end_matches(['\n', '\r']));
                }
            }
        }
    })
}
