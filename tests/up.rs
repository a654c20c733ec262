//! `tidings up`, run as a user runs it, on systems whose components are shell scripts:
//! prefixed output, restarts after a crash, giving up (exit 1), and SIGTERM stopping every
//! process it started, grandchildren and processes that ignore SIGTERM included.
#![cfg(feature = "cli")]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A directory of this test's own with `tidings.toml` holding `system`.
fn system_dir(test: &str, system: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tidings-up-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tidings.toml"), system).unwrap();
    dir
}

fn up(dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tidings"));
    command
        .arg("up")
        .arg(dir.join("tidings.toml"))
        .args(args)
        .env_remove("TIDINGS_URL")
        .env("NO_COLOR", "1");
    command
}

#[test]
fn output_is_prefixed_and_a_crashing_component_is_restarted_then_given_up_on() {
    let dir = system_dir(
        "crash",
        r#"
url = "memory://up-test"

[[component]]
name = "hello"
command = "echo \"I am $TIDINGS_COMPONENT.$TIDINGS_REPLICA on $TIDINGS_URL\"; echo to stderr >&2; sleep 100"
replicas = 2

[[component]]
name = "crash"
command = "echo boom; exit 3"
"#,
    );
    let started = Instant::now();
    let out = up(&dir, &["--restart-delay", "50ms", "--max-restarts", "2"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(started.elapsed() < Duration::from_secs(20), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    for wanted in [
        "hello.1 | I am hello.1 on memory://up-test",
        "hello.2 | I am hello.2 on memory://up-test",
        "hello.1 | to stderr",
        "up | crash.1 exited with status 3; restart 1 of 2 in 50ms",
        "up | crash.1 exited with status 3; restart 2 of 2 in 100ms",
        "up | crash.1 exited with status 3; it crashed 3 times in a row: giving up",
        "up | a component failed for good; stopping the others",
        "up | hello.1 stopped: was killed by signal 15",
        "up | hello.2 stopped: was killed by signal 15",
    ] {
        assert!(lines.contains(&wanted), "{wanted:?} not in:\n{stdout}");
    }
    assert_eq!(
        lines.iter().filter(|l| **l == "crash.1 | boom").count(),
        3,
        "{stdout}"
    );
    assert!(
        stderr.contains("tidings: failed for good: crash.1"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `up` in the background, its stdout read line by line.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn start(mut command: Command) -> Self {
        let mut child = command.stdout(Stdio::piped()).spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a line starting with `prefix` and returns it.
    fn wait_for(&mut self, prefix: &str) -> String {
        if let Some(line) = self.seen.iter().find(|l| l.starts_with(prefix)) {
            return line.clone();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Ok(line) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push(line.clone());
            if line.starts_with(prefix) {
                return line;
            }
        }
        panic!("no line {prefix:?} in:\n{}", self.seen.join("\n"));
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether process `pid` still runs (a zombie waiting for its parent does not).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => {
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z') && !state.starts_with('X')
        }
    }
}

fn number_after(line: &str, word: &str) -> u32 {
    line.split(word).nth(1).unwrap().trim().parse().unwrap()
}

#[test]
fn sigterm_stops_every_process_and_a_crashed_one_comes_back() {
    let dir = system_dir(
        "sigterm",
        r#"
url = "memory://up-test"

[[component]]
name = "polite"
command = "trap 'echo draining; exit 0' TERM; echo pid $$; while true; do sleep 0.1; done"
replicas = 2

[[component]]
name = "stubborn"
command = "trap '' TERM; sleep 1000 & echo pid $$ child $!; wait"

[[component]]
name = "flaky"
command = "if [ -e crashed-once ]; then sleep 1000 & echo back again pid $$ child $!; wait; else touch crashed-once; exit 7; fi"
"#,
    );
    let mut up = Running::start(up(
        &dir,
        &["--restart-delay", "50ms", "--drain-timeout", "1s"],
    ));
    let mut pids = Vec::new();
    for prefix in ["polite.1 | pid", "polite.2 | pid"] {
        pids.push(number_after(&up.wait_for(prefix), "pid"));
    }
    let stubborn = up.wait_for("stubborn.1 | pid");
    pids.push(number_after(stubborn.split("child").next().unwrap(), "pid"));
    pids.push(number_after(&stubborn, "child"));
    up.wait_for("up | flaky.1 exited with status 7; restart 1 of 5 in 50ms");
    let flaky = up.wait_for("flaky.1 | back again pid");
    pids.push(number_after(flaky.split("child").next().unwrap(), "pid"));
    pids.push(number_after(&flaky, "child"));
    assert!(pids.iter().all(|p| alive(*p)), "{pids:?}");

    let stopping = Instant::now();
    let pid = rustix::process::Pid::from_raw(up.child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = up.child.wait().unwrap();
    let took = stopping.elapsed();
    assert_eq!(status.code(), Some(0), "{}", up.seen.join("\n"));
    // The drain timeout (1 s) for the process that ignores SIGTERM, then SIGKILL.
    assert!(took >= Duration::from_millis(900), "{took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    for wanted in [
        "polite.1 | draining",
        "polite.2 | draining",
        "up | polite.1 stopped: exited with status 0",
        "up | stubborn.1 killed (SIGKILL) after the drain timeout",
        "up | flaky.1 stopped: was killed by signal 15",
        "up | every process has ended",
    ] {
        up.wait_for(wanted);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while pids.iter().any(|p| alive(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left: Vec<u32> = pids.iter().copied().filter(|p| alive(*p)).collect();
    assert!(left.is_empty(), "still running: {left:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
