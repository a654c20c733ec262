//! The command line, as clap parses it.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "tidings", version, about = "Emit, tail, call and serve tidings events on any broker", long_about = None)]
pub(crate) struct Cli {
    /// Broker URL, e.g. memory://, amqp://guest:guest@127.0.0.1:5672/%2f, stomp://…
    #[arg(long, global = true, env = "TIDINGS_URL", hide_env_values = true)]
    pub(crate) url: Option<String>,

    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Publish a JSON event; prints its message id once the broker confirmed it.
    #[command(
        after_help = "Example:\n  tidings emit log.host1.worker.1.error '{\"text\":\"disk full\"}' --header session=42 --ttl 30s"
    )]
    Emit(EmitArgs),
    /// Show events as they flow, one line each.
    #[command(
        after_help = "Example:\n  tidings tail 'log.#' 'audit.*' --count 10\n  tidings tail 'jobs.#' --group jobs_tap --json"
    )]
    Tail(TailArgs),
    /// Call an RPC service with a JSON request and print the reply.
    #[command(
        after_help = "Example:\n  tidings call file.get '{\"path\":\"/etc/motd\"}' --timeout 5s"
    )]
    Call(CallArgs),
    /// Serve an RPC name by running a program per request (stdin: request JSON, stdout: reply).
    #[command(
        after_help = "Example:\n  tidings serve math.double --exec 'jq \".n * 2\"'\n  A non-zero exit is sent back as a remote error with the program's stderr."
    )]
    Serve(ServeArgs),
    /// List a group's dead letters; replay them to their original key, or purge them.
    #[command(
        after_help = "Example:\n  tidings dead-letters encryptors\n  tidings dead-letters encryptors --replay"
    )]
    DeadLetters(DeadLetterArgs),
    /// Run the conformance suite against the broker at URL and print a table.
    #[command(
        after_help = "Example:\n  tidings conformance amqp://guest:guest@127.0.0.1:5672/%2f --case rpc"
    )]
    Conformance(ConformanceArgs),
    /// Measure throughput and RPC latency against the broker at URL.
    #[command(
        after_help = "Example:\n  tidings bench memory:// --messages 100000 --size 128 --rpc 10000"
    )]
    Bench(BenchArgs),
    /// Declare, check, or write systemd units for, the topology of a system file (tidings.toml).
    #[command(subcommand)]
    Topology(TopologyCommand),
    /// Run a whole system on this machine (development): apply its topology, then start and
    /// supervise every component's replicas.
    #[command(
        after_help = "Example:\n  tidings up tidings.toml --drain-timeout 5s\n  Ctrl-C or SIGTERM stops every process: SIGTERM, the drain timeout, then SIGKILL.\n  For production, run the components under systemd (`tidings topology systemd`) or Kubernetes."
    )]
    Up(UpArgs),
}

#[derive(Debug, Subcommand)]
pub(crate) enum TopologyCommand {
    /// Declare on the broker every durable group the components take from (queues, bindings,
    /// dead-letter queues), so nothing sent before they start is lost. Idempotent.
    #[command(after_help = "Example:\n  tidings topology apply tidings.toml")]
    Apply(FileArgs),
    /// Print what the broker has that differs from the file; exit 1 if anything differs.
    #[command(
        after_help = "Example:\n  tidings topology check tidings.toml --management http://rabbit:15672"
    )]
    Check(CheckArgs),
    /// Write systemd units: one template per component (name@N), a oneshot that applies the
    /// topology, and a target that starts them all.
    #[command(
        after_help = "Example:\n  tidings topology systemd tidings.toml --out deploy/systemd"
    )]
    Systemd(SystemdArgs),
}

#[derive(Debug, Args)]
pub(crate) struct FileArgs {
    /// The system file
    #[arg(default_value = "tidings.toml")]
    pub(crate) file: std::path::PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// The system file
    #[arg(default_value = "tidings.toml")]
    pub(crate) file: std::path::PathBuf,
    /// RabbitMQ's management API (default: the broker url's `?management=`, else
    /// TIDINGS_RABBITMQ_MANAGEMENT, else http://<broker host>:15672)
    #[arg(long, value_name = "URL")]
    pub(crate) management: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct SystemdArgs {
    /// The system file
    #[arg(default_value = "tidings.toml")]
    pub(crate) file: std::path::PathBuf,
    /// Where to write the units
    #[arg(long, default_value = "systemd")]
    pub(crate) out: std::path::PathBuf,
    /// The prefix of every unit's name (default: the file's name without .toml)
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// The tidings binary the topology unit runs (default: this one)
    #[arg(long, value_name = "PATH")]
    pub(crate) tidings: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct UpArgs {
    /// The system file
    #[arg(default_value = "tidings.toml")]
    pub(crate) file: std::path::PathBuf,
    /// How long stopped processes get between SIGTERM and SIGKILL
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub(crate) drain_timeout: Duration,
    /// How many times in a row a crashing process is restarted before up gives up on it
    #[arg(long, default_value_t = 5)]
    pub(crate) max_restarts: usize,
    /// The first restart's delay; each next one doubles, up to 30s
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub(crate) restart_delay: Duration,
    /// Start the processes without declaring the topology first
    #[arg(long)]
    pub(crate) no_apply: bool,
}

#[derive(Debug, Args)]
pub(crate) struct EmitArgs {
    /// Routing key, e.g. orders.created
    pub(crate) key: String,
    /// The event as JSON, or `-` to read it from stdin (default: null)
    pub(crate) json: Option<String>,
    /// A header to add, as name=value (repeatable)
    #[arg(long = "header", value_name = "NAME=VALUE")]
    pub(crate) headers: Vec<String>,
    /// Expire the event if nobody takes it within this time, e.g. 30s
    #[arg(long, value_parser = parse_duration)]
    pub(crate) ttl: Option<Duration>,
    /// Emit as this identity, host.kind.id
    #[arg(long = "as", value_name = "HOST.KIND.ID")]
    pub(crate) identity: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct TailArgs {
    /// Patterns to follow (`*` one word, `#` any number)
    #[arg(required = true)]
    pub(crate) patterns: Vec<String>,
    /// Join this group instead of watching every message (takes work from its members!)
    #[arg(long)]
    pub(crate) group: Option<String>,
    /// Stop after this many events
    #[arg(long)]
    pub(crate) count: Option<usize>,
    /// One JSON object per line, for machines
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct CallArgs {
    /// Service name, e.g. file.get
    pub(crate) name: String,
    /// The request as JSON, or `-` to read it from stdin (default: null)
    pub(crate) json: Option<String>,
    /// How long to wait for the reply
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub(crate) timeout: Duration,
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Service name, e.g. file.get
    pub(crate) name: String,
    /// Shell command run per request
    #[arg(long)]
    pub(crate) exec: String,
    /// Requests handled at once
    #[arg(long, default_value_t = 1)]
    pub(crate) concurrency: usize,
}

#[derive(Debug, Args)]
pub(crate) struct DeadLetterArgs {
    /// The group (or dead-letter queue) name
    pub(crate) group: String,
    /// Publish each dead letter again under its original routing key
    #[arg(long, conflicts_with = "purge")]
    pub(crate) replay: bool,
    /// Delete the dead letters
    #[arg(long)]
    pub(crate) purge: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ConformanceArgs {
    /// Broker URL (default: --url or TIDINGS_URL)
    pub(crate) url: Option<String>,
    /// Run only cases whose name contains this text
    #[arg(long)]
    pub(crate) case: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Broker URL (default: --url or TIDINGS_URL)
    pub(crate) url: Option<String>,
    /// Messages to publish for the throughput run
    #[arg(long, default_value_t = 100_000)]
    pub(crate) messages: u64,
    /// Payload size in bytes
    #[arg(long, default_value_t = 128)]
    pub(crate) size: usize,
    /// Sequential RPC calls for the latency run
    #[arg(long, default_value_t = 10_000)]
    pub(crate) rpc: u64,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (use for example 500ms, 5s, 2m)"))
}
