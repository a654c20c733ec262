//! The 3-node RabbitMQ test cluster that `scripts/cluster.sh` starts beside the shared broker,
//! for the driver tests that kill, stop and restart broker nodes (never the shared broker).
//!
//! | node | AMQP 0.9.1 and 1.0 | STOMP | management |
//! |---|---|---|---|
//! | 1 (`tidings1@localhost`) | 127.0.0.1:5682 | 61682 | 15682 |
//! | 2 (`tidings2@localhost`) | 127.0.0.1:5683 | 61683 | 15683 |
//! | 3 (`tidings3@localhost`) | 127.0.0.1:5684 | 61684 | 15684 |

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::rabbitmq::Management;

/// The cluster's nodes, 1 to 3.
pub const NODES: [Node; 3] = [Node(1), Node(2), Node(3)];

/// One node of the test cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Node(pub u8);

impl Node {
    /// The Erlang node name, e.g. `tidings2@localhost`.
    pub fn name(self) -> String {
        format!("tidings{}@localhost", self.0)
    }

    /// Its AMQP port (0.9.1 and 1.0).
    pub fn amqp_port(self) -> u16 {
        5681 + u16::from(self.0)
    }

    /// Its STOMP port.
    pub fn stomp_port(self) -> u16 {
        61681 + u16::from(self.0)
    }

    /// Its management API, e.g. `http://127.0.0.1:15682`.
    pub fn management(self) -> String {
        format!("http://127.0.0.1:{}", 15681 + u16::from(self.0))
    }

    /// The node whose AMQP or STOMP port is `port`, if any.
    pub fn of_port(port: u16) -> Option<Self> {
        NODES
            .into_iter()
            .find(|n| n.amqp_port() == port || n.stomp_port() == port)
    }

    /// SIGKILLs the node's Erlang VM.
    pub fn kill(self) {
        cluster_sh(&["kill", &self.name()]);
    }

    /// Stops the node cleanly (`rabbitmqctl stop`).
    pub fn stop(self) {
        cluster_sh(&["stop", &self.name()]);
    }

    /// Starts the node again and waits until it is back in the cluster.
    pub fn start(self) {
        cluster_sh(&["start", &self.name()]);
    }
}

/// `host:port` of every node for `port_of` (e.g. [`Node::amqp_port`]), comma-separated: the
/// host list of a cluster URL.
pub fn hosts(port_of: fn(Node) -> u16) -> String {
    hosts_of(&NODES, port_of)
}

/// `host:port` of `nodes` for `port_of`, in that order, comma-separated.
pub fn hosts_of(nodes: &[Node], port_of: fn(Node) -> u16) -> String {
    nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", port_of(*n)))
        .collect::<Vec<_>>()
        .join(",")
}

/// Holds the test cluster for one test: taken by every test that takes a node down, so tests
/// in other test binaries (or other drivers' crates) running at the same time wait instead of
/// finding a node gone. A file lock: it goes with the process, whatever way that ends.
#[derive(Debug)]
pub struct Exclusive {
    _lock: std::fs::File,
}

/// Waits for the cluster to be this test's alone (see [`Exclusive`]), then checks that all
/// three nodes run ([`require`]). Blocking: call it from `spawn_blocking` or before the
/// runtime is busy.
pub fn exclusive() -> Exclusive {
    let path = std::env::temp_dir().join("tidings-test-cluster.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("cannot open the cluster lock {}: {e}", path.display()));
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
        .unwrap_or_else(|e| panic!("cannot lock {}: {e}", path.display()));
    // A test that died with a node down left it so: bring it back first.
    cluster_sh(&["start"]);
    require();
    Exclusive { _lock: file }
}

/// Starts every node that is down when dropped, so a failing test never leaves the cluster
/// short of a node.
#[derive(Debug)]
pub struct RestartOnDrop;

impl Drop for RestartOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(script()).arg("start").output();
    }
}

/// The cluster node a `Connected` status names (by its AMQP or STOMP port); `None` when not
/// connected, or connected elsewhere.
pub fn node_in(status: &tidings_core::Status) -> Option<Node> {
    let tidings_core::Status::Connected { node } = status else {
        return None;
    };
    node.rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .and_then(Node::of_port)
}

/// Deletes a test's namespace (the exchange `exchange` and its queues) through the management
/// API of the first node that answers: whichever node a test killed may still be down.
/// Blocking.
pub fn delete_namespace(exchange: &str) -> Result<(), String> {
    let mut errors = Vec::new();
    for n in NODES {
        let url = format!(
            "amqp://guest:guest@127.0.0.1:{}/%2f?management={}",
            n.amqp_port(),
            n.management()
        );
        match Management::for_broker(&url).and_then(|m| m.delete_namespace(exchange)) {
            Ok(()) => return Ok(()),
            Err(e) => errors.push(format!("node {}: {e}", n.0)),
        }
    }
    Err(errors.join("; "))
}

/// Deletes a test's namespace when dropped ([`delete_namespace`]), so a failing test leaves
/// nothing behind either.
#[derive(Debug)]
pub struct DeleteOnDrop(pub String);

impl Drop for DeleteOnDrop {
    fn drop(&mut self) {
        if let Err(e) = delete_namespace(&self.0) {
            eprintln!("cleanup of {}: {e}", self.0);
        }
    }
}

/// `scripts/cluster.sh` of this workspace.
fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/cluster.sh")
}

/// Runs `scripts/cluster.sh ARGS`; panics with its output if it fails.
pub fn cluster_sh(args: &[&str]) {
    let out = Command::new("bash")
        .arg(script())
        .args(args)
        .output()
        .expect("bash runs scripts/cluster.sh");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(
        out.status.success(),
        "scripts/cluster.sh {args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Fails (never skips) unless all three nodes run and are clustered.
pub fn require() {
    let not_up = |why: String| -> ! {
        panic!(
            "the RabbitMQ test cluster is not up ({why}); start it with `scripts/cluster.sh start` \
             (scripts/brokers.sh and scripts/test.sh do)"
        )
    };
    for node in NODES {
        let address = format!("127.0.0.1:{}", node.amqp_port());
        if let Err(e) = std::net::TcpStream::connect_timeout(
            &address.parse().expect("address"),
            Duration::from_secs(2),
        ) {
            not_up(format!("{} on {address}: {e}", node.name()));
        }
    }
    let out = Command::new("rabbitmqctl")
        .args([
            "-n",
            &NODES[0].name(),
            "-q",
            "cluster_status",
            "--formatter",
            "json",
        ])
        .output()
        .unwrap_or_else(|e| not_up(format!("rabbitmqctl does not run: {e}")));
    if !out.status.success() {
        not_up(format!(
            "rabbitmqctl cluster_status: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let running = status["running_nodes"].as_array().map_or(0, Vec::len);
    if running != 3 {
        not_up(format!(
            "{running} running nodes, not 3: {}",
            String::from_utf8_lossy(&out.stdout).trim()
        ));
    }
}
