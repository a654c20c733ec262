//! The stats service the web tier calls (`dx.stats`): distinct items stored, fetches per
//! fetcher, cache hits — counted from `dx.persisted` and `dx.fetched`, which its durable groups
//! keep for it while it is down.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use crate::events::{Fetched, Persisted, Stats, StatsQuery};
use crate::Context;

#[derive(Default)]
struct Counts {
    persisted: BTreeSet<String>,
    fetched_by: BTreeMap<String, usize>,
    from_cache: usize,
}

pub(crate) async fn start(cx: &Context) -> tidings::Result<()> {
    let counts: Arc<Mutex<Counts>> = Arc::default();
    for builder in cx
        .intake("stats-persisted")?
        .subscribe::<Persisted>(&cx.bus)
    {
        let counts = counts.clone();
        builder
            .handle(move |p| {
                counts.lock().unwrap().persisted.insert(p.item);
                async { Ok(()) }
            })
            .await?;
    }
    for builder in cx.intake("stats-fetched")?.subscribe::<Fetched>(&cx.bus) {
        let counts = counts.clone();
        builder
            .handle(move |f| {
                let mut counts = counts.lock().unwrap();
                *counts.fetched_by.entry(f.fetcher).or_default() += 1;
                counts.from_cache += usize::from(f.from_cache);
                async { Ok(()) }
            })
            .await?;
    }
    let service = cx.intake("dx.stats")?;
    let name = service.service_name().unwrap_or("dx.stats").to_owned();
    let server = cx.bus.serve(&name, move |_: StatsQuery| {
        let counts = counts.lock().unwrap();
        let stats = Stats {
            persisted: counts.persisted.len(),
            fetched_by: counts.fetched_by.clone(),
            from_cache: counts.from_cache,
        };
        async move { Ok(stats) }
    });
    service.configure_serve(server).await?;
    Ok(())
}
