//! The controller: takes crawl requests and tells a fetcher, per item, "get X and send the
//! result to Y" — Y is another component's address (the persisters' `dx.store` by default).
//! It never sees the results: the fetchers deliver them to Y themselves.

use crate::events::{Crawl, FetchJob};
use crate::Context;

pub(crate) async fn start(cx: &Context) -> tidings::Result<()> {
    // The fetch jobs' TTL is what the fetchers' part of the file says.
    let ttl = cx.system.ttl_for("dx.fetch");
    for builder in cx.intake("controller")?.subscribe::<Crawl>(&cx.bus) {
        let bus = cx.bus.clone();
        builder
            .handle(move |crawl| {
                let bus = bus.clone();
                async move {
                    let deliver_to = crawl.deliver_to.unwrap_or_else(|| "dx.store".into());
                    for item in crawl.items {
                        let job = FetchJob {
                            item,
                            deliver_to: deliver_to.clone(),
                        };
                        let mut emit = bus.emit("dx.fetch", &job);
                        if let Some(ttl) = ttl {
                            emit = emit.ttl(ttl);
                        }
                        emit.await?;
                        println!("asked a fetcher for {} → {}", job.item, job.deliver_to);
                    }
                    Ok(())
                }
            })
            .await?;
    }
    Ok(())
}
