//! The cache: answers `dx.cache.get` (RPC) and takes `dx.cache.put` (a worker queue), in
//! memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::events::{CacheEntry, CacheGet};
use crate::Context;

pub(crate) async fn start(cx: &Context) -> tidings::Result<()> {
    let entries: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let get = cx.intake("dx.cache.get")?;
    let name = get.service_name().unwrap_or("dx.cache.get").to_owned();
    let reading = entries.clone();
    let server = cx.bus.serve(&name, move |req: CacheGet| {
        let content = reading.lock().unwrap().get(&req.item).cloned();
        async move {
            Ok(CacheEntry {
                item: req.item,
                content,
            })
        }
    });
    get.configure_serve(server).await?;
    for builder in cx.intake("cache-fill")?.subscribe::<CacheEntry>(&cx.bus) {
        let writing = entries.clone();
        builder
            .handle(move |entry| {
                if let Some(content) = entry.content {
                    writing.lock().unwrap().insert(entry.item, content);
                }
                async { Ok(()) }
            })
            .await?;
    }
    Ok(())
}
