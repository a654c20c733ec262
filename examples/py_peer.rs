//! The Rust side of the Python package's cross-language tests (`python/tests/`): a peer driven
//! by its arguments that speaks JSON and prints one JSON line per thing it sees on stdout.
//!
//! ```text
//! py_peer emit <key> <count>                    emit {"n":0}..{"n":count-1} as event "num"
//! py_peer listen <pattern> <count>              print the first <count> events, then exit
//! py_peer worker <pattern> <group>              group member until SIGTERM; fails attempt 1 of
//!                                               every n % 5 == 0, and every attempt of n < 0
//! py_peer serve <service>                       double an integer; a negative one is an error
//! py_peer call <service> <json> <timeout_ms>    print {"ok":reply} or {"error":..,"message":..}
//! py_peer barrier <name> <timeout_ms> <who>...  wait for the participants, then emit
//!                                               {"n":1} under app.<name>.started
//! py_peer announce <name> <who> <pattern>       subscribe to <pattern>, announce <who> at
//!                                               barrier <name>, print the first event, exit
//! ```
//!
//! The broker URL comes from `TIDINGS_URL`. Every command that subscribes prints
//! `{"ready":true}` once its subscription exists. Identity: `<host>.rust_peer.1`.
//!
//!     TIDINGS_URL=amqp://guest:guest@127.0.0.1:5672/%2f?exchange=t cargo run --features amqp091 --example py_peer -- serve math.double

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tidings::{Codec, Event, Message};

#[derive(Debug, Serialize, Deserialize)]
struct Num {
    n: i64,
}

impl Event for Num {
    const NAME: &'static str = "num";
}

fn line(value: Value) {
    println!("{value}");
}

fn usage() -> ! {
    eprintln!("usage: py_peer emit|listen|worker|serve|call|barrier ... (see the source)");
    std::process::exit(2)
}

fn seen(message: &Message<Value>) -> Value {
    json!({
        "key": message.routing_key(),
        "emitter": message.emitter(),
        "attempt": message.attempt(),
        "event": &*message.envelope().event,
        "body": message.event(),
        "headers": message.envelope().headers,
    })
}

#[tokio::main]
async fn main() -> tidings::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let url = std::env::var(tidings::URL_VAR).unwrap_or_else(|_| usage());
    let bus = tidings::connect(&url)
        .await?
        .as_participant("rust_peer", "1")
        .with_codec(Codec::Json);
    let arg = |i: usize| args.get(i).cloned().unwrap_or_else(|| usage());
    match arg(0).as_str() {
        "emit" => {
            let count: i64 = arg(2).parse().unwrap_or_else(|_| usage());
            for n in 0..count {
                bus.emit(&arg(1), &Num { n })
                    .header("origin", "rust")
                    .await?;
            }
            line(json!({"emitted": count}));
        }
        "listen" => {
            let count: usize = arg(2).parse().unwrap_or_else(|_| usage());
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            bus.subscribe::<Value>(&arg(1))
                .handle_message(move |m| {
                    let _ = tx.send(seen(&m));
                    async { Ok(()) }
                })
                .await?;
            line(json!({"ready": true}));
            for _ in 0..count {
                match rx.recv().await {
                    Some(v) => line(v),
                    None => break,
                }
            }
        }
        "worker" => {
            bus.subscribe::<Value>(&arg(1))
                .group(&arg(2))
                .handle_message(|m| {
                    let n = m.event().get("n").and_then(Value::as_i64).unwrap_or(0);
                    let fail = n < 0 || (n % 5 == 0 && m.attempt() == 1);
                    let mut report = seen(&m);
                    report["failed"] = json!(fail);
                    line(report);
                    async move {
                        if fail {
                            Err(format!("rust worker refused {n}").into())
                        } else {
                            Ok(())
                        }
                    }
                })
                .await?;
            line(json!({"ready": true}));
            bus.run_until_signal().await?;
            return Ok(());
        }
        "serve" => {
            bus.serve(&arg(1), |n: i64| async move {
                if n < 0 {
                    Err(format!("cannot double {n}: negative").into())
                } else {
                    Ok(n * 2)
                }
            })
            .await?;
            line(json!({"ready": true}));
            bus.run_until_signal().await?;
            return Ok(());
        }
        "call" => {
            let request: Value = serde_json::from_str(&arg(2)).unwrap_or_else(|_| usage());
            let timeout = Duration::from_millis(arg(3).parse().unwrap_or_else(|_| usage()));
            let reply: tidings::Result<Value> = bus.call(&arg(1), &request).timeout(timeout).await;
            match reply {
                Ok(v) => line(json!({"ok": v})),
                Err(e) => line(json!({"error": format!("{:?}", e.kind()), "message": e.message()})),
            }
        }
        "barrier" => {
            let name = arg(1);
            let timeout = Duration::from_millis(arg(2).parse().unwrap_or_else(|_| usage()));
            let expected: Vec<&str> = args[3..].iter().map(String::as_str).collect();
            match bus.barrier(&name)?.wait_for(&expected, timeout).await {
                Ok(()) => {
                    bus.emit(&format!("app.{name}.started"), &Num { n: 1 })
                        .await?;
                    line(json!({"barrier": "passed"}));
                }
                Err(e) => line(json!({"error": format!("{:?}", e.kind()), "message": e.message()})),
            }
        }
        "announce" => {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            bus.subscribe::<Value>(&arg(3))
                .handle_message(move |m| {
                    let _ = tx.send(seen(&m));
                    async { Ok(()) }
                })
                .await?;
            let _ready = bus.barrier(&arg(1))?.announce(&arg(2)).await?;
            line(json!({"ready": true}));
            if let Some(v) = rx.recv().await {
                line(v);
            }
        }
        _ => usage(),
    }
    bus.shutdown().await?;
    Ok(())
}
