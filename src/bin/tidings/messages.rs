//! emit, tail, call and serve: JSON in, JSON out.

use std::collections::{HashSet, VecDeque};
use std::io::Read;
use std::process::Stdio;

use serde_json::Value;
use tidings::codec::JSON;
use tidings::driver::PublishOptions;
use tidings::{Bus, Codec, Envelope, HandlerError};
use tokio::io::AsyncWriteExt;

use crate::args::{CallArgs, EmitArgs, ServeArgs, TailArgs};
use crate::failure::Failure;
use crate::show;

/// Reads the JSON argument (`-` = stdin, none = null) and checks it parses.
fn read_json(arg: Option<&str>) -> Result<Value, Failure> {
    let text = match arg {
        None => return Ok(Value::Null),
        Some("-") => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| Failure::runtime(format!("cannot read stdin: {e}")))?;
            text
        }
        Some(text) => text.to_owned(),
    };
    serde_json::from_str(&text).map_err(|e| Failure::usage(format!("invalid JSON: {e}")))
}

pub(crate) async fn emit(bus: &Bus, args: EmitArgs) -> Result<(), Failure> {
    let bus = match &args.identity {
        Some(identity) => bus.with_identity(identity)?,
        None => bus.with_identity(&format!("{}.cli.{}", short_host(bus), std::process::id()))?,
    };
    let value = read_json(args.json.as_deref())?;
    let body = Codec::Json.encode(&value)?;
    let mut envelope = Envelope::new(&args.key, JSON, body);
    envelope.emitter = bus.identity().to_owned();
    envelope.ttl = args.ttl;
    for header in &args.headers {
        let (name, value) = header
            .split_once('=')
            .ok_or_else(|| Failure::usage(format!("header {header:?} is not NAME=VALUE")))?;
        tidings::envelope::headers::check_user_name(name)?;
        envelope.headers.insert(name.to_owned(), value.to_owned());
    }
    let id = envelope.id.clone();
    bus.publish_envelope(envelope, &PublishOptions::default())
        .await?;
    println!("{id}");
    bus.shutdown().await?;
    Ok(())
}

/// The host word of the default identity (`host.process.pid`).
fn short_host(bus: &Bus) -> String {
    bus.identity()
        .split('.')
        .next()
        .unwrap_or("localhost")
        .to_owned()
}

pub(crate) async fn tail(bus: &Bus, args: TailArgs) -> Result<(), Failure> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Envelope>();
    for pattern in &args.patterns {
        let tx = tx.clone();
        let mut subscription = bus.subscribe::<Envelope>(pattern).prefetch(256);
        if let Some(group) = &args.group {
            subscription = subscription.group(group);
        }
        subscription
            .handle(move |envelope| {
                let _ = tx.send(envelope);
                async { Ok(()) }
            })
            .await?;
    }
    drop(tx);
    // On stderr, so stdout stays pure events; scripts can wait for this line.
    eprintln!(
        "tidings: following {}; Ctrl-C to stop",
        args.patterns.join(" ")
    );
    let style = show::Style::detect(args.json);
    // A message matching two of the patterns arrives twice: print it once.
    let mut recent: (HashSet<String>, VecDeque<String>) = Default::default();
    let mut shown = 0usize;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            next = rx.recv() => {
                let Some(envelope) = next else { break };
                if !recent.0.insert(envelope.id.clone()) {
                    continue;
                }
                recent.1.push_back(envelope.id.clone());
                if recent.1.len() > 10_000 {
                    if let Some(old) = recent.1.pop_front() {
                        recent.0.remove(&old);
                    }
                }
                println!("{}", show::event_line(&envelope, style));
                shown += 1;
                if args.count.is_some_and(|count| shown >= count) {
                    break;
                }
            }
        }
    }
    bus.shutdown().await?;
    Ok(())
}

pub(crate) async fn call(bus: &Bus, args: CallArgs) -> Result<(), Failure> {
    let request = read_json(args.json.as_deref())?;
    let bus = bus.with_codec(Codec::Json);
    let reply: Result<Value, _> = bus.call(&args.name, &request).timeout(args.timeout).await;
    let outcome = match reply {
        Ok(value) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&value).unwrap_or_else(|_| value.to_string())
            );
            Ok(())
        }
        Err(e) => Err(e.into()),
    };
    let _ = bus.shutdown().await;
    outcome
}

pub(crate) async fn serve(bus: &Bus, args: ServeArgs) -> Result<(), Failure> {
    let command = args.exec.clone();
    bus.with_codec(Codec::Json)
        .serve(&args.name, move |request: Value| {
            run_program(command.clone(), request)
        })
        .concurrency(args.concurrency)
        .max_attempts(1)
        .await?;
    eprintln!(
        "tidings: serving {:?} with `{}`; Ctrl-C to stop",
        args.name, args.exec
    );
    bus.run_until_signal().await?;
    Ok(())
}

/// Runs the program with the request on stdin; its stdout (JSON, or else text) is the reply.
async fn run_program(command: String, request: Value) -> Result<Value, HandlerError> {
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run `{command}`: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let mut input = serde_json::to_vec(&request)?;
        input.push(b'\n');
        // A program that does not read its stdin is fine.
        let _ = stdin.write_all(&input).await;
    }
    let output = child.wait_with_output().await?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let detail = stderr.trim();
        return Err(if detail.is_empty() {
            format!("`{command}` failed with {}", output.status)
        } else {
            format!("`{command}` failed with {}: {detail}", output.status)
        }
        .into());
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let text = stdout.trim();
    Ok(serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned())))
}
