//! A notifier: every replica hears every stored item (a fanout: replica N has its own durable
//! group `notifier.N`, so it also hears what was announced while it was down) and records it in
//! `notified.N`.

use std::io::Write;

use crate::events::Persisted;
use crate::Context;

pub(crate) async fn start(cx: &Context) -> tidings::Result<()> {
    let log = cx.data.join(format!("notified.{}", cx.replica));
    for builder in cx.intake("notifier")?.subscribe::<Persisted>(&cx.bus) {
        let log = log.clone();
        builder
            .handle(move |persisted| {
                let written = std::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(&log)
                    .and_then(|mut log| writeln!(log, "{}", persisted.item));
                println!("notified: {} is stored", persisted.item);
                async move { Ok(written?) }
            })
            .await?;
    }
    Ok(())
}
