//! A persister (one of several sharing the `persist` group): stores each fetched item once —
//! a file per item, created only if it does not exist, so a redelivered item is not stored
//! twice — then announces it on `dx.persisted`.

use std::io::Write;

use crate::events::{Fetched, Persisted};
use crate::Context;

pub(crate) async fn start(cx: &Context) -> tidings::Result<()> {
    let items = cx.data.join("items");
    std::fs::create_dir_all(&items).map_err(|e| {
        tidings::Error::new(
            tidings::ErrorKind::InvalidConfig,
            format!("cannot create {}: {e}", items.display()),
        )
    })?;
    let log = cx.data.join("persisted.log");
    for builder in cx.intake("persist")?.subscribe::<Fetched>(&cx.bus) {
        let (bus, items, log) = (cx.bus.clone(), items.clone(), log.clone());
        builder
            .handle(move |fetched| {
                let (bus, items, log) = (bus.clone(), items.clone(), log.clone());
                async move {
                    let file = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(items.join(&fetched.item));
                    match file {
                        Ok(mut file) => {
                            file.write_all(fetched.content.as_bytes())?;
                            // One line per item stored: the test counts them.
                            let mut log = std::fs::OpenOptions::new()
                                .append(true)
                                .create(true)
                                .open(&log)?;
                            writeln!(log, "{} {}", fetched.item, fetched.fetcher)?;
                            println!("stored {} (fetched by {})", fetched.item, fetched.fetcher);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                            println!("{} is already stored; not again", fetched.item);
                        }
                        Err(e) => return Err(e.into()),
                    }
                    // Announced even when already stored: an announcement lost to a crash
                    // after the file was written is sent on the redelivery.
                    bus.emit("dx.persisted", &Persisted { item: fetched.item })
                        .await?;
                    Ok(())
                }
            })
            .await?;
    }
    Ok(())
}
