//! What the components send each other. The controller and the stats service are driven from
//! outside (the command line, a web tier) in JSON; the bus decodes by each message's content
//! type, so postcard between components and JSON from outside both work.

use serde::{Deserialize, Serialize};
use tidings::Event;

/// `dx.crawl`: fetch these items (from the command line or a scheduler).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Crawl {
    pub(crate) items: Vec<String>,
    /// Where fetchers send the results (default: the persisters, `dx.store`).
    #[serde(default)]
    pub(crate) deliver_to: Option<String>,
}

impl Event for Crawl {
    const NAME: &'static str = "dx_crawl";
}

/// `dx.fetch`: the controller to one fetcher — get `item`, send the result to `deliver_to`,
/// another component's address.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct FetchJob {
    pub(crate) item: String,
    pub(crate) deliver_to: String,
}

impl Event for FetchJob {
    const NAME: &'static str = "dx_fetch_job";
}

/// A fetched item, sent where the job said (and a copy to `dx.fetched` for the stats).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Fetched {
    pub(crate) item: String,
    pub(crate) content: String,
    pub(crate) fetcher: String,
    pub(crate) from_cache: bool,
}

impl Event for Fetched {
    const NAME: &'static str = "dx_fetched";
}

/// `dx.cache.get` request.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct CacheGet {
    pub(crate) item: String,
}

impl Event for CacheGet {
    const NAME: &'static str = "dx_cache_get";
}

/// `dx.cache.get` reply, and `dx.cache.put`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct CacheEntry {
    pub(crate) item: String,
    pub(crate) content: Option<String>,
}

impl Event for CacheEntry {
    const NAME: &'static str = "dx_cache_entry";
}

/// `dx.persisted`: an item is stored.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Persisted {
    pub(crate) item: String,
}

impl Event for Persisted {
    const NAME: &'static str = "dx_persisted";
}

/// `dx.stats` request (JSON `null`: `tidings call dx.stats`).
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct StatsQuery;

impl Event for StatsQuery {
    const NAME: &'static str = "dx_stats_query";
}

/// `dx.stats` reply.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Stats {
    /// Distinct items stored.
    pub(crate) persisted: usize,
    /// Items fetched per fetcher identity.
    pub(crate) fetched_by: std::collections::BTreeMap<String, usize>,
    /// Fetches answered from the cache.
    pub(crate) from_cache: usize,
}

impl Event for Stats {
    const NAME: &'static str = "dx_stats";
}
