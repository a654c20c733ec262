//! A fetcher (one of several sharing the `fetch` group): asks the cache first (RPC), else
//! "fetches" the item, fills the cache, and sends the result where the job said.

use std::time::Duration;

use crate::events::{CacheEntry, CacheGet, FetchJob, Fetched};
use crate::Context;

pub(crate) async fn start(cx: &Context) -> tidings::Result<()> {
    for builder in cx.intake("fetch")?.subscribe::<FetchJob>(&cx.bus) {
        let bus = cx.bus.clone();
        builder
            .handle(move |job| {
                let bus = bus.clone();
                async move {
                    let cached: CacheEntry = bus
                        .call(
                            "dx.cache.get",
                            &CacheGet {
                                item: job.item.clone(),
                            },
                        )
                        .timeout(Duration::from_secs(5))
                        .await?;
                    let from_cache = cached.content.is_some();
                    let content = match cached.content {
                        Some(content) => content,
                        None => {
                            // The real work: here, a pause and a made-up body.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            let content = format!("<html>{}</html>", job.item);
                            let put = CacheEntry {
                                item: job.item.clone(),
                                content: Some(content.clone()),
                            };
                            bus.emit("dx.cache.put", &put).await?;
                            content
                        }
                    };
                    let fetched = Fetched {
                        item: job.item.clone(),
                        content,
                        fetcher: bus.identity().to_owned(),
                        from_cache,
                    };
                    bus.emit(&job.deliver_to, &fetched).await?;
                    bus.emit("dx.fetched", &fetched).await?;
                    println!("fetched {} → {}", job.item, job.deliver_to);
                    Ok(())
                }
            })
            .await?;
    }
    Ok(())
}
