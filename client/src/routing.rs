//! Key routing across replicas: which server a call goes to.
//!
//! Each replica of a shared tier caches what it read, on its own. The tier only pays off
//! when every read of a key lands on the same replica, so a [`Client`](crate::Client) made
//! from several endpoints sends each key to one replica by *rendezvous hashing*: every
//! replica gets a score for the key, and the highest score owns it. When a replica goes
//! away, only the keys it owned move (each to its next-highest replica); when one joins, it
//! takes only the keys it now scores highest for. No coordination, no shared table.
//!
//! The score is defined so that every client computes the same owner, in any language
//! (the Python client implements the same function, checked against the same vectors in
//! `client/routing-vectors.json`):
//!
//! ```text
//! score(replica, key) = first 8 bytes, big-endian, of SHA-256( replica_id + "\n" + key )
//! replica_id          = "host:port" as the endpoint names it, lowercase ("[v6]:port" for IPv6)
//! order               = replicas by score, highest first (ties: smaller id first)
//! ```
//!
//! What the key of a call is: a result's storage key (a Put's `key`, else its `cache_key`;
//! a reference's or location's key; a Prefect document's `storage_key`). The block is not
//! part of it, so the same key in two blocks goes to the same replica (harmless). A Put
//! that names neither key nor cache key names its key itself (`new_key`, a uuid4 hex as
//! the server would make, which unlike `key` does not ask for persistence) and goes to
//! that key's owner: a result that is not persisted lives only in the memory of the
//! replica that took it, which is then the one its reads go to. List and ListBlocks go to
//! the owner of the prefix (any replica could answer).
//!
//! **Failover.** A unary call that ends `UNAVAILABLE` is tried on the next replica in the
//! key's order, until one answers or every one was tried. A replica that failed at the
//! transport, or that said it is draining, is *set aside* for
//! [`ConnectOptions::replica_backoff`]: calls try it after the live ones until the time
//! passes or it answers again. A replica whose *storage* was unavailable (trailer
//! `resultstore-unavailable: storage`) is tried elsewhere but not set aside: it is healthy,
//! and setting it aside would move all its keys off their cache. A write that fails over
//! may have been applied by the replica that failed (the connection broke after the
//! request left): an overwrite or delete repeated is the same result, a `create_only` Put
//! may then answer `ALREADY_EXISTS`. PutStream goes to the first live replica and does not
//! fail over (its chunks are consumed as they are sent); GetStream fails over until its
//! header arrived.
//!
//! **Discovery.** [`Endpoints::List`] is fixed. [`Endpoints::Dns`] is every address a name
//! resolves to (a Kubernetes headless Service), looked up again every
//! [`ConnectOptions::dns_refresh`], in the background of a call that finds the list stale:
//! replicas that stay keep their connection, new ones get a lazy one, gone ones are
//! dropped. A lookup that fails or finds nothing keeps the list it had.

use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use resultstore_proto::{UNAVAILABLE_REASON, UNAVAILABLE_STORAGE};

use crate::{ClientError, ConnectOptions, RawClient, Result};

/// How often a DNS name of replicas is looked up again, unless set.
pub const DEFAULT_DNS_REFRESH: Duration = Duration::from_secs(30);
/// How long a replica that failed is set aside, unless set.
pub const DEFAULT_REPLICA_BACKOFF: Duration = Duration::from_secs(5);

/// Where the replicas are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoints {
    /// Fixed URLs: `http://host:port` or `https://host:port`.
    List(Vec<String>),
    /// Every address `host` resolves to, at `port` (a headless Service's name).
    Dns { tls: bool, host: String, port: u16 },
}

impl Endpoints {
    /// Parses what a user writes where one server's URL goes:
    /// - `http://host:port` (one server), or several separated by commas;
    /// - `dns://host:port` (plaintext) or `dns+https://host:port` (TLS, the certificate
    ///   checked against `host` unless [`TlsOptions::domain`](crate::TlsOptions) says
    ///   otherwise): every address the name resolves to.
    pub fn parse(spec: &str) -> Result<Self> {
        let spec = spec.trim();
        let bad = |why: &str| ClientError::Discovery(format!("`{spec}`: {why}"));
        for (scheme, tls) in [("dns://", false), ("dns+http://", false), ("dns+https://", true)] {
            if let Some(rest) = spec.strip_prefix(scheme) {
                let rest = rest.trim_end_matches('/');
                let (host, port) = rest.rsplit_once(':').ok_or_else(|| bad("a DNS name needs a port (name:port)"))?;
                let port: u16 = port.parse().map_err(|_| bad("the port is not a number"))?;
                if host.is_empty() || host.contains(['/', ',']) {
                    return Err(bad("expected dns://name:port"));
                }
                return Ok(Endpoints::Dns { tls, host: host.to_owned(), port });
            }
        }
        let urls: Vec<String> = spec
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| u.trim_end_matches('/').to_owned())
            .collect();
        if urls.is_empty() {
            return Err(bad("no server named"));
        }
        for url in &urls {
            replica_id(url)?;
        }
        Ok(Endpoints::List(urls))
    }
}

/// The id a URL's replica is scored by: its `host:port`, lowercase (the scheme's default
/// port when it names none).
pub fn replica_id(url: &str) -> Result<String> {
    let bad = |why: &str| ClientError::Discovery(format!("`{url}`: {why}"));
    let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("expected http://host:port or https://host:port"))?;
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => 80,
        "https" => 443,
        _ => return Err(bad("expected http:// or https://")),
    };
    let authority = rest.split('/').next().unwrap_or_default().to_ascii_lowercase();
    if authority.is_empty() {
        return Err(bad("no host"));
    }
    // A port is what follows the last colon, unless that colon is inside an IPv6 literal.
    let has_port = authority.rsplit_once(':').is_some_and(|(_, p)| !p.contains(']'));
    Ok(if has_port { authority } else { format!("{authority}:{default_port}") })
}

/// A replica's score for a key (see the module docs).
pub fn rendezvous_score(replica_id: &str, key: &str) -> u64 {
    let digest =
        Sha256::new().chain_update(replica_id.as_bytes()).chain_update(b"\n").chain_update(key.as_bytes()).finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// Replica ids in the order a key tries them: its owner first.
pub fn rendezvous_order<'a>(replica_ids: &[&'a str], key: &str) -> Vec<&'a str> {
    let mut ids = replica_ids.to_vec();
    sort_for_key(&mut ids, |id| id, key);
    ids
}

/// The key a call for a Prefect result document routes by: its `storage_key`, or the
/// document itself when it names none (or is not JSON).
pub fn document_key(document: &str) -> String {
    serde_json::from_str::<serde_json::Value>(document)
        .ok()
        .and_then(|d| d.get("storage_key").and_then(serde_json::Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| document.to_owned())
}

/// Sorts `items` by their ids' scores for `key`, highest first, ties by id: the one
/// definition of the order, for [`rendezvous_order`] and the calls' own.
fn sort_for_key<T>(items: &mut [T], id: impl Fn(&T) -> &str, key: &str) {
    items.sort_by_cached_key(|item| (std::cmp::Reverse(rendezvous_score(id(item), key)), id(item).to_owned()));
}

/// One server of the set.
pub struct Replica {
    /// Its id (`host:port`), as scored.
    pub id: String,
    /// Its connection.
    pub client: RawClient,
    /// Until when calls try it after the others.
    set_aside_until: Mutex<Option<Instant>>,
}

impl Replica {
    fn set_aside(&self) -> bool {
        self.set_aside_until.lock().unwrap_or_else(PoisonError::into_inner).is_some_and(|t| Instant::now() < t)
    }
}

/// The replicas of one [`Client`](crate::Client) and how calls choose among them. Public
/// so that a server that forwards calls to its peers (the service's tier) routes by this
/// very code: clients that route and replicas that forward agree on every key's owner.
pub struct Router {
    endpoints: Endpoints,
    options: ConnectOptions,
    replicas: RwLock<Arc<Vec<Arc<Replica>>>>,
    /// When the DNS name is due for another lookup, and whether one is running.
    refresh: Mutex<(Instant, bool)>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").field("endpoints", &self.endpoints).field("replicas", &self.replica_ids()).finish()
    }
}

impl Router {
    /// Connects to `endpoints`. One URL is connected at once (an error now if it does not
    /// answer, as with a plain client); several, or a DNS name, connect lazily, so a
    /// replica that is down does not stop the client from using the others.
    pub async fn connect(endpoints: Endpoints, options: ConnectOptions) -> Result<Arc<Self>> {
        Self::connect_as(endpoints, options, false).await
    }

    /// As [`Router::connect`], but every URL of a list connects lazily, one URL too: a
    /// server that starts before its peers (or its upstream) must not fail for it.
    pub async fn connect_lazily(endpoints: Endpoints, options: ConnectOptions) -> Result<Arc<Self>> {
        Self::connect_as(endpoints, options, true).await
    }

    async fn connect_as(endpoints: Endpoints, options: ConnectOptions, lazily: bool) -> Result<Arc<Self>> {
        let replicas = match &endpoints {
            Endpoints::List(urls) if urls.len() == 1 && !lazily => {
                let channel = crate::endpoint(&urls[0], &options)?.connect().await?;
                vec![new_replica(replica_id(&urls[0])?, crate::raw_client(channel, &options)?)]
            }
            Endpoints::List(urls) => urls
                .iter()
                .map(|url| Ok(new_replica(replica_id(url)?, lazy_client(url, &options)?)))
                .collect::<Result<Vec<_>>>()?,
            Endpoints::Dns { .. } => {
                // A server's peers may not be in DNS yet (a headless Service lists ready
                // pods only, and none is ready while the first starts): it starts knowing
                // none and looks again at its first call.
                let ids = match resolve(&endpoints).await {
                    Err(_) if lazily => Vec::new(),
                    ids => ids?,
                };
                if ids.is_empty() && !lazily {
                    return Err(ClientError::Discovery(format!("{endpoints:?}: the name resolves to no address")));
                }
                build_replicas(&endpoints, &options, ids, &[])?
            }
        };
        let refresh_at = if replicas.is_empty() { Instant::now() } else { Instant::now() + options.dns_refresh };
        Ok(Arc::new(Router {
            endpoints,
            options,
            replicas: RwLock::new(Arc::new(replicas)),
            refresh: Mutex::new((refresh_at, false)),
        }))
    }

    fn current(&self) -> Arc<Vec<Arc<Replica>>> {
        self.replicas.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The replicas' ids, as known now.
    pub fn replica_ids(&self) -> Vec<String> {
        self.current().iter().map(|r| r.id.clone()).collect()
    }

    /// The first replica of the list.
    pub fn first(&self) -> Arc<Replica> {
        // Never empty for a client: built with at least one replica (only a server's lazy
        // router may start with none), and a refresh that finds none keeps the list it had.
        self.current()[0].clone()
    }

    /// The replicas a call for `key` (a storage key, or a List's prefix) tries, in
    /// order: by score for the key, those set aside last.
    pub fn order(self: &Arc<Self>, key: &str) -> Vec<Arc<Replica>> {
        self.refresh_if_due();
        let mut replicas = self.current().to_vec();
        if replicas.len() > 1 {
            sort_for_key(&mut replicas, |r| &r.id, key);
            // Stable: the set-aside ones keep their order among themselves.
            replicas.sort_by_key(|r| r.set_aside());
        }
        replicas
    }

    /// The key's owner by score alone, set aside or not: the replica the rule says holds
    /// the key (a server compares it with itself to know whether to forward). `None` only
    /// for a router made by [`Router::connect_lazily`] whose DNS name has no address yet.
    pub fn owner(self: &Arc<Self>, key: &str) -> Option<Arc<Replica>> {
        self.refresh_if_due();
        let replicas = self.current();
        replicas.iter().max_by_key(|r| (rendezvous_score(&r.id, key), std::cmp::Reverse(r.id.as_str()))).cloned()
    }

    /// Notes how a call to `replica` ended, for the calls after it. Returns whether the
    /// call should go on to the next replica.
    pub fn outcome(&self, replica: &Replica, status: Option<&tonic::Status>) -> bool {
        let mut aside = replica.set_aside_until.lock().unwrap_or_else(PoisonError::into_inner);
        match status {
            Some(s) if s.code() == tonic::Code::Unavailable => {
                let reason = s.metadata().get(UNAVAILABLE_REASON).and_then(|v| v.to_str().ok());
                if reason != Some(UNAVAILABLE_STORAGE) {
                    *aside = Some(Instant::now() + self.options.replica_backoff);
                }
                true
            }
            // Any answer from the server means it is there.
            _ => {
                *aside = None;
                false
            }
        }
    }

    fn refresh_if_due(self: &Arc<Self>) {
        if !matches!(self.endpoints, Endpoints::Dns { .. }) {
            return;
        }
        {
            let mut due = self.refresh.lock().unwrap_or_else(PoisonError::into_inner);
            if due.1 || Instant::now() < due.0 {
                return;
            }
            due.1 = true;
        }
        let router = Arc::downgrade(self);
        tokio::spawn(async move {
            let Some(router) = router.upgrade() else { return };
            if let Ok(ids) = resolve(&router.endpoints).await
                && !ids.is_empty()
            {
                let current = router.current();
                if let Ok(replicas) = build_replicas(&router.endpoints, &router.options, ids, &current) {
                    *router.replicas.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(replicas);
                }
            }
            *router.refresh.lock().unwrap_or_else(PoisonError::into_inner) =
                (Instant::now() + router.options.dns_refresh, false);
        });
    }
}

fn new_replica(id: String, client: RawClient) -> Arc<Replica> {
    Arc::new(Replica { id, client, set_aside_until: Mutex::new(None) })
}

fn lazy_client(url: &str, options: &ConnectOptions) -> Result<RawClient> {
    let channel = crate::endpoint(url, options)?.connect_lazy();
    crate::raw_client(channel, options)
}

/// The `ip:port` ids a DNS name resolves to, sorted, without duplicates.
async fn resolve(endpoints: &Endpoints) -> Result<Vec<String>> {
    let Endpoints::Dns { host, port, .. } = endpoints else { return Ok(Vec::new()) };
    let addrs = tokio::net::lookup_host((host.as_str(), *port))
        .await
        .map_err(|e| ClientError::Discovery(format!("cannot resolve `{host}`: {e}")))?;
    let mut ids: Vec<String> = addrs.map(|a| a.to_string()).collect();
    ids.sort();
    ids.dedup();
    Ok(ids)
}

/// Replicas for `ids`, keeping those of `current` that are still there (their connection
/// and state).
fn build_replicas(
    endpoints: &Endpoints,
    options: &ConnectOptions,
    ids: Vec<String>,
    current: &[Arc<Replica>],
) -> Result<Vec<Arc<Replica>>> {
    let Endpoints::Dns { tls, host, .. } = endpoints else { return Ok(current.to_vec()) };
    let mut options = options.clone();
    if let Some(t) = options.tls.as_mut() {
        t.domain.get_or_insert_with(|| host.clone());
    }
    ids.into_iter()
        .map(|id| match current.iter().find(|r| r.id == id) {
            Some(r) => Ok(r.clone()),
            None => {
                let url = format!("{}://{id}", if *tls { "https" } else { "http" });
                Ok(new_replica(id, lazy_client(&url, &options)?))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectors the Python client checks too: both must route every key alike.
    #[test]
    fn scores_match_the_shared_vectors() {
        let text = include_str!("../routing-vectors.json");
        let vectors: serde_json::Value = serde_json::from_str(text).unwrap();
        for case in vectors["cases"].as_array().unwrap() {
            let ids: Vec<&str> = case["replicas"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
            let key = case["key"].as_str().unwrap();
            let want: Vec<&str> = case["order"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
            assert_eq!(rendezvous_order(&ids, key), want, "key {key}");
            for score in case["scores"].as_array().unwrap() {
                let id = score["replica"].as_str().unwrap();
                let want: u64 = score["score"].as_str().unwrap().parse().unwrap();
                assert_eq!(rendezvous_score(id, key), want, "{id} {key}");
            }
        }
    }

    /// The owner a server compares itself with is the first of the clients' order.
    #[tokio::test]
    async fn the_owner_is_first_in_every_keys_order() {
        let urls: Vec<String> = (1..=4).map(|i| format!("http://10.0.0.{i}:50051")).collect();
        let router = Router::connect_lazily(Endpoints::List(urls), ConnectOptions::default()).await.unwrap();
        let ids = router.replica_ids();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        for i in 0..500 {
            let key = format!("key-{i}");
            assert_eq!(router.owner(&key).unwrap().id, rendezvous_order(&ids, &key)[0], "{key}");
        }
    }

    #[test]
    fn removing_a_replica_moves_only_its_keys() {
        let all = ["10.0.0.1:50051", "10.0.0.2:50051", "10.0.0.3:50051", "10.0.0.4:50051"];
        let without = ["10.0.0.1:50051", "10.0.0.3:50051", "10.0.0.4:50051"];
        let mut owned = [0usize; 4];
        for i in 0..4000 {
            let key = format!("key-{i}");
            let before = rendezvous_order(&all, &key);
            let after = rendezvous_order(&without, &key);
            owned[all.iter().position(|id| *id == before[0]).unwrap()] += 1;
            if before[0] == "10.0.0.2:50051" {
                assert_eq!(after[0], before[1], "a moved key goes to its second choice");
            } else {
                assert_eq!(after[0], before[0], "a key of a replica that stayed does not move");
            }
        }
        // Spread evenly: 1000 each, give or take.
        assert!(owned.iter().all(|&n| (850..1150).contains(&n)), "{owned:?}");
    }

    #[test]
    fn endpoints_parse_lists_and_names() {
        assert_eq!(Endpoints::parse("http://a:1").unwrap(), Endpoints::List(vec!["http://a:1".into()]));
        assert_eq!(
            Endpoints::parse(" http://a:1/, https://B:2 ").unwrap(),
            Endpoints::List(vec!["http://a:1".into(), "https://B:2".into()])
        );
        assert_eq!(
            Endpoints::parse("dns+https://rs-headless.ns.svc:50051").unwrap(),
            Endpoints::Dns { tls: true, host: "rs-headless.ns.svc".into(), port: 50051 }
        );
        assert_eq!(Endpoints::parse("dns://rs:7").unwrap(), Endpoints::Dns { tls: false, host: "rs".into(), port: 7 });
        for bad in ["", "dns://rs", "dns://:1", "ftp://a:1", "a:1", "dns://rs:x"] {
            assert!(Endpoints::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(replica_id("HTTP://Host.Example").unwrap(), "host.example:80");
        assert_eq!(replica_id("https://[::1]").unwrap(), "[::1]:443");
        assert_eq!(replica_id("http://[::1]:7/").unwrap(), "[::1]:7");
    }
}
