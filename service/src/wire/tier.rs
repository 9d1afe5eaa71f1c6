//! One cache for every client: replicas that serve each key through its owner, and
//! sidecars that fill from such a tier (`[tier]` in the config).
//!
//! **Replicas (`peers`).** Every replica knows the others (a list, or every address a
//! DNS name resolves to, looked up again) and this one's own id (`advertise`). Each key
//! has one *owner*: the replica that scores highest for it by the clients' own rendezvous
//! function ([`resultstore_client::routing`], the same code and the same shared vectors),
//! so clients that route and replicas that forward agree on every key. A call for a key
//! this replica does not own goes to the owner, with the caller's `authorization` and a
//! `resultstore-forwarded-by` header; the owner serves it (its cache and singleflight are
//! the one place the key is filled from storage) and never forwards it again, so a call
//! makes at most one hop even while two replicas disagree on the membership. Writes
//! (Put, PutStream, Delete) go through the owner too, so the owner's cache is never older
//! than the last write through the tier. Clients that route reach the owner directly and
//! pay no hop.
//!
//! **Sidecars (`upstream`).** A sidecar sends every call for a key to the key's owner in
//! its upstream tier (routing as a client does, failing over as a client does), writes
//! and deletes included, and keeps the replies of what its workers read as its first level
//! ([`crate::wire::copies`], copied from the first read). Any client, in any language,
//! talks to `127.0.0.1` and gets both levels.
//!
//! **When a node cannot be reached.** A call goes to the key's replicas in order (owner
//! first; those that failed lately last, for `tier.backoff`); one that cannot be reached
//! (transport failure, draining: UNAVAILABLE without `resultstore-unavailable: storage`)
//! is passed over, and when the turn comes to this node, or every node failed, this node
//! serves the call from its own cache and storage: correct, only slower, and counted in
//! `resultstore_tier_fallbacks_total`. So a replica that stops moves only its keys, each
//! to its next replica, and a call waits for at most `tier.connect_timeout` per node that
//! does not answer. A stream goes on only until it sent its first message: a PutStream
//! whose chunks a node began to take, or a GetStream whose header came, ends with that
//! node's status.
//!
//! **Which calls go where.** Put, PutStream, Get, GetStream, Resolve, Exists, Delete: to
//! the key's owner (a Put's key, else its cache key; a Put naming neither is given a key
//! here, as the clients do, so it lands where its reads will go). DeletePrefix: run here,
//! then on every other replica (each drops what its cache holds under the prefix, results
//! held only in memory included); a sidecar passes it upstream. List, ListBlocks, Sweep:
//! here (storage answers them the same anywhere). Background expiry sweeps of a block run
//! on one replica, the owner of the key `sweep:<block>`, and not on sidecars.
//!
//! **Consistency.** A read by reference is always the referenced bytes: the owner checks
//! the digest, and a copy serves only the digest it was asked for. A read by location sees
//! a write made through any node at once, except through a copy: hot-key copies and a
//! sidecar's first level lag by at most `tier.copy_time_to_live`. A node drops its copies
//! of a key when a write of it goes through that node.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use prost::Message;
use resultstore_client::routing::{Replica, Router, document_key};
use resultstore_client::{ConnectOptions, Endpoints, RawClient, TlsOptions};
use resultstore_proto::v1 as pb;
use tonic::metadata::{Ascii, MetadataMap, MetadataValue};
use tonic::{Code, Request, Response, Status, Streaming};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::runtime::metrics::{Method, TierCounters};
use crate::wire::copies::{Copies, Reply};

/// The header a replica sets on a call it forwards to the key's owner.
pub const FORWARDED_BY: &str = "resultstore-forwarded-by";

/// What a call carries to another node: its caller's credentials, and whether another
/// replica already forwarded it here.
#[derive(Debug, Clone, Default)]
pub struct Hop {
    authorization: Option<MetadataValue<Ascii>>,
    forwarded: bool,
}

impl Hop {
    pub fn of(metadata: &MetadataMap) -> Hop {
        Hop { authorization: metadata.get("authorization").cloned(), forwarded: metadata.contains_key(FORWARDED_BY) }
    }
}

enum Mode {
    /// A replica of the tier, known to its peers as `me`.
    Peers { me: String },
    /// A sidecar; calls go upstream with this token, or the caller's.
    Upstream { authorization: Option<MetadataValue<Ascii>> },
}

/// The other nodes and how calls reach them (see the module docs).
pub struct Tier {
    router: Arc<Router>,
    mode: Mode,
    copies: Option<Copies>,
    counters: Arc<TierCounters>,
}

/// Where a call for a key goes: the nodes in the order to try them, and the key's owner
/// by score (first unless set aside).
struct Route {
    order: Vec<Arc<Replica>>,
    owner: String,
}

/// The PutStream messages after the header, shared with a forward so that a forward that
/// took none of them gives them back for this node to serve.
pub type Inbound = Arc<tokio::sync::Mutex<Option<Streaming<pb::PutStreamRequest>>>>;

impl Tier {
    /// The tier `config.tier` describes, or `None` without one. Connections are lazy: a
    /// node starts whether or not the others are up.
    pub async fn start(config: &Config, counters: Arc<TierCounters>) -> Result<Option<Arc<Tier>>> {
        let Some(tc) = &config.tier else { return Ok(None) };
        let spec = tc.peers.as_deref().or(tc.upstream.as_deref()).unwrap_or_default();
        let endpoints = Endpoints::parse(spec).map_err(|e| Error::Config(format!("tier: {e}")))?;
        let tls_wanted = spec.contains("https://");
        let tls = if tls_wanted {
            let ca = tc.ca.as_ref().or(config.tls.as_ref().and_then(|t| t.client_ca.as_ref())).ok_or_else(|| {
                Error::Config("tier: https peers need `tier.ca` (or [tls] client_ca) to check them by".into())
            })?;
            let read = |p: &std::path::Path| {
                std::fs::read(p).map_err(|e| Error::Config(format!("tier: cannot read {}: {e}", p.display())))
            };
            // Mutual TLS on the tier: present this node's own certificate to its peers.
            let identity = match &config.tls {
                Some(t) if t.client_ca.is_some() => Some((read(&t.cert)?, read(&t.key)?)),
                _ => None,
            };
            Some(TlsOptions { ca_pem: read(ca)?, identity, domain: None })
        } else {
            None
        };
        let options = ConnectOptions {
            max_message_size: usize::try_from(config.limits.max_message_size.0).unwrap_or(usize::MAX),
            token: None,
            tls,
            dns_refresh: tc.dns_refresh,
            replica_backoff: tc.backoff,
            connect_timeout: tc.connect_timeout,
        };
        let router =
            Router::connect_lazily(endpoints, options).await.map_err(|e| Error::Config(format!("tier: {e}")))?;
        let mode = match (&tc.advertise, &tc.upstream) {
            (_, Some(_)) => Mode::Upstream {
                authorization: match &tc.upstream_token_file {
                    Some(path) => {
                        let token = std::fs::read_to_string(path)
                            .map_err(|e| Error::Config(format!("tier: cannot read {}: {e}", path.display())))?;
                        let value = format!("Bearer {}", token.trim()).parse().map_err(|_| {
                            Error::Config(format!("tier: {} holds characters a header cannot carry", path.display()))
                        })?;
                        Some(value)
                    }
                    None => None,
                },
            },
            (Some(me), None) => {
                let me = me.to_ascii_lowercase();
                let ids = router.replica_ids();
                // Only a fixed list can be wrong at start: a DNS name lists ready pods, and
                // this one is not ready yet.
                if matches!(Endpoints::parse(spec), Ok(Endpoints::List(_))) && !ids.contains(&me) {
                    tracing::warn!(
                        advertise = me,
                        peers = ids.join(","),
                        "tier.advertise is not among the peers: this replica will own no key"
                    );
                }
                Mode::Peers { me }
            }
            (None, None) => {
                return Err(Error::Config(
                    "tier: `peers` needs `advertise` (this replica's host:port as the peers name it; or --advertise)"
                        .into(),
                ));
            }
        };
        let copies = Copies::new(tc.copies.0, tc.copy_time_to_live, tc.copy_after(), counters.clone());
        let tier = Arc::new(Tier { router, mode, copies, counters: counters.clone() });
        if tier.copies.is_some() {
            let weak = Arc::downgrade(&tier);
            let _ = counters.copy_bytes.set(Box::new(move || {
                weak.upgrade().and_then(|t| t.copies.as_ref().map(Copies::weighted_size)).unwrap_or(0)
            }));
        }
        Ok(Some(tier))
    }

    fn is_me(&self, replica: &Replica) -> bool {
        matches!(&self.mode, Mode::Peers { me } if *me == replica.id)
    }

    /// The nodes to try for `key`, owner first, or `None` when this node serves the call
    /// at once (it owns the key, or another replica forwarded the call here).
    fn route(&self, key: &str, hop: &Hop) -> Option<Route> {
        if hop.forwarded {
            return None;
        }
        // No node known yet (a DNS name with no address): this one serves.
        let owner = self.router.owner(key)?;
        if self.is_me(&owner) {
            return None;
        }
        Some(Route { order: self.router.order(key), owner: owner.id.clone() })
    }

    /// `message` as a call to another node: with the caller's token (or the sidecar's
    /// own), and marked forwarded between replicas.
    fn request<T>(&self, message: T, hop: &Hop) -> Request<T> {
        let mut request = Request::new(message);
        let metadata = request.metadata_mut();
        match &self.mode {
            Mode::Peers { me } => {
                if let Some(a) = &hop.authorization {
                    metadata.insert("authorization", a.clone());
                }
                if let Ok(v) = me.parse() {
                    metadata.insert(FORWARDED_BY, v);
                }
            }
            Mode::Upstream { authorization } => {
                if let Some(a) = authorization.as_ref().or(hop.authorization.as_ref()) {
                    metadata.insert("authorization", a.clone());
                }
            }
        }
        request
    }

    /// Tries `order` until a node answers: `Some` with its answer (an error status too),
    /// or `None` when this node's turn came or no node could be reached, and this node
    /// serves the call.
    async fn forward<Q, R, F, Fut>(
        &self,
        method: Method,
        route: Route,
        hop: &Hop,
        message: &Q,
        call: F,
    ) -> Result<Option<R>, Status>
    where
        Q: Clone,
        F: Fn(RawClient, Request<Q>) -> Fut,
        Fut: Future<Output = Result<Response<R>, Status>>,
    {
        for replica in route.order {
            if self.is_me(&replica) {
                break;
            }
            match call(replica.client.clone(), self.request(message.clone(), hop)).await {
                Ok(reply) => {
                    self.router.outcome(&replica, None);
                    TierCounters::count(&self.counters.forwarded, method);
                    if replica.id != route.owner {
                        TierCounters::count(&self.counters.fell_back, method);
                    }
                    return Ok(Some(reply.into_inner()));
                }
                Err(status) => match self.failed(&replica, status, idempotent(method)) {
                    None => continue,
                    Some(status) => {
                        TierCounters::count(&self.counters.forwarded, method);
                        return Err(status);
                    }
                },
            }
        }
        TierCounters::count(&self.counters.fell_back, method);
        Ok(None)
    }

    /// What a call to `replica` that ended with `status` means: `None` when the node could
    /// not be reached and the call goes on to the next (the node is set aside), else the
    /// status to answer. A node that breaks off a call it already took (killed mid-call:
    /// a transport error, not a status it sent) is passed over by reads; a write it may
    /// have applied answers UNAVAILABLE saying so, which a client retries as any
    /// UNAVAILABLE (an overwrite or delete repeated is the same result).
    fn failed(&self, replica: &Replica, status: Status, idempotent: bool) -> Option<Status> {
        use std::error::Error as _;
        let broke_off = status.code() != Code::Unavailable && status.source().is_some();
        if broke_off {
            self.router.outcome(replica, Some(&Status::unavailable("the node broke off the call")));
            if idempotent {
                return None;
            }
            return Some(Status::unavailable(format!(
                "the key's owner {} broke off the call ({}); the write may have been applied",
                replica.id,
                status.message()
            )));
        }
        if self.router.outcome(replica, Some(&status)) && !from_storage(&status) {
            return None;
        }
        Some(status)
    }

    /// Resolve through the key's owner, or a copy of its reply; `None`: serve it here.
    pub async fn resolve(&self, hop: &Hop, req: &pb::ResolveRequest) -> Result<Option<pb::ResolveResponse>, Status> {
        use pb::resolve_request::Target as T;
        let key = match &req.target {
            Some(T::Reference(r)) => r.key.clone(),
            Some(T::Location(l)) => l.key.clone(),
            Some(T::Prefect(p)) => document_key(&p.document),
            None => return Ok(None),
        };
        let Some(route) = self.route(&key, hop) else { return Ok(None) };
        let copy = self.copies.as_ref().filter(|_| !req.bypass_cache).map(|c| (c, tagged(b'R', req)));
        if let Some((copies, request)) = &copy
            && let Some(Reply::Resolve(mut reply)) = copies.find(&key, request, req.allow_expired).await
        {
            reply.cache_hit = true;
            return Ok(Some(reply));
        }
        let reply =
            self.forward(Method::Resolve, route, hop, req, |mut c, r| async move { c.resolve(r).await }).await?;
        if let (Some((copies, request)), Some(reply)) = (copy, &reply) {
            copies.record(&key, request, &Reply::Resolve(reply.clone())).await;
        }
        Ok(reply)
    }

    /// Get through the key's owner, or a copy of its reply; `None`: serve it here.
    pub async fn get(&self, hop: &Hop, req: &pb::GetRequest) -> Result<Option<pb::GetResponse>, Status> {
        let Some(key) = get_key(req) else { return Ok(None) };
        let Some(route) = self.route(&key, hop) else { return Ok(None) };
        let copy = self.copies.as_ref().filter(|_| !req.bypass_cache).map(|c| (c, tagged(b'G', req)));
        if let Some((copies, request)) = &copy
            && let Some(Reply::Get(reply)) = copies.find(&key, request, req.allow_expired).await
        {
            return Ok(Some(reply));
        }
        let reply = self.forward(Method::Get, route, hop, req, |mut c, r| async move { c.get(r).await }).await?;
        if let (Some((copies, request)), Some(reply)) = (copy, &reply) {
            copies.record(&key, request, &Reply::Get(reply.clone())).await;
        }
        Ok(reply)
    }

    /// GetStream through the key's owner (no copies: streams are the large results).
    pub async fn get_stream(
        &self,
        hop: &Hop,
        req: &pb::GetRequest,
    ) -> Result<Option<Streaming<pb::GetStreamResponse>>, Status> {
        let Some(key) = get_key(req) else { return Ok(None) };
        let Some(route) = self.route(&key, hop) else { return Ok(None) };
        self.forward(Method::GetStream, route, hop, req, |mut c, r| async move { c.get_stream(r).await }).await
    }

    /// Put through the key's owner. A Put that names no key is given one here (as the
    /// clients do), so it lands where its reads will go.
    pub async fn put(&self, hop: &Hop, req: &mut pb::PutRequest) -> Result<Option<pb::PutResponse>, Status> {
        if !hop.forwarded {
            resultstore_client::name_new_key(&mut req.new_key, &req.key, req.task.as_ref());
        }
        let key = resultstore_client::put_key(&req.key, req.task.as_ref(), &req.new_key).to_owned();
        self.forget(&key).await;
        let Some(route) = self.route(&key, hop) else { return Ok(None) };
        self.forward(Method::Put, route, hop, &*req, |mut c, r| async move { c.put(r).await }).await
    }

    /// PutStream through the key's owner. `header` is named a key first as [`Tier::put`]
    /// does. The chunks after it are taken from `inbound` as the owner reads them; a node
    /// that failed before taking any leaves them for the next, or for this node.
    pub async fn put_stream(
        &self,
        hop: &Hop,
        header: &mut pb::PutStreamHeader,
        inbound: &Inbound,
    ) -> Result<Option<pb::PutResponse>, Status> {
        if !hop.forwarded {
            resultstore_client::name_new_key(&mut header.new_key, &header.key, header.task.as_ref());
        }
        let key = resultstore_client::put_key(&header.key, header.task.as_ref(), &header.new_key).to_owned();
        self.forget(&key).await;
        let Some(route) = self.route(&key, hop) else { return Ok(None) };
        let taken = Arc::new(AtomicBool::new(false));
        let first = pb::PutStreamRequest { part: Some(pb::put_stream_request::Part::Header(header.clone())) };
        for replica in route.order {
            if self.is_me(&replica) {
                break;
            }
            let outbound = futures::stream::once(futures::future::ready(first.clone()))
                .chain(rest(inbound.clone(), taken.clone()));
            match replica.client.clone().put_stream(self.request(outbound, hop)).await {
                Ok(reply) => {
                    self.router.outcome(&replica, None);
                    TierCounters::count(&self.counters.forwarded, Method::PutStream);
                    if replica.id != route.owner {
                        TierCounters::count(&self.counters.fell_back, Method::PutStream);
                    }
                    return Ok(Some(reply.into_inner()));
                }
                Err(status) => match self.failed(&replica, status, false) {
                    None if !taken.load(Ordering::Acquire) => continue,
                    None => {
                        TierCounters::count(&self.counters.forwarded, Method::PutStream);
                        return Err(Status::unavailable(format!(
                            "the key's owner {} went away while it took the stream; nothing of it was stored here",
                            replica.id
                        )));
                    }
                    Some(status) => {
                        TierCounters::count(&self.counters.forwarded, Method::PutStream);
                        return Err(status);
                    }
                },
            }
        }
        TierCounters::count(&self.counters.fell_back, Method::PutStream);
        Ok(None)
    }

    /// Exists through the key's owner (which alone may hold a result kept only in memory).
    pub async fn exists(&self, hop: &Hop, req: &pb::ExistsRequest) -> Result<Option<pb::ExistsResponse>, Status> {
        let key = req.location.as_ref().map(|l| l.key.clone()).unwrap_or_default();
        let Some(route) = self.route(&key, hop) else { return Ok(None) };
        self.forward(Method::Exists, route, hop, req, |mut c, r| async move { c.exists(r).await }).await
    }

    /// Delete through the key's owner, dropping this node's copies first.
    pub async fn delete(&self, hop: &Hop, req: &pb::DeleteRequest) -> Result<Option<pb::DeleteResponse>, Status> {
        let key = req.location.as_ref().map(|l| l.key.clone()).unwrap_or_default();
        self.forget(&key).await;
        let Some(route) = self.route(&key, hop) else { return Ok(None) };
        self.forward(Method::Delete, route, hop, req, |mut c, r| async move { c.delete(r).await }).await
    }

    /// A sidecar passes DeletePrefix to its tier (`Some`: the tier's answer); a replica
    /// runs it here (`None`), then [`Tier::delete_prefix_on_peers`].
    pub async fn delete_prefix(
        &self,
        hop: &Hop,
        req: &pb::DeletePrefixRequest,
    ) -> Result<Option<pb::DeletePrefixResponse>, Status> {
        if let Some(copies) = &self.copies {
            copies.forget_all();
        }
        match &self.mode {
            Mode::Peers { .. } => Ok(None),
            Mode::Upstream { .. } => {
                let owner = self.router.owner(&req.prefix).map(|o| o.id.clone()).unwrap_or_default();
                let route = Route { order: self.router.order(&req.prefix), owner };
                self.forward(Method::DeletePrefix, route, hop, req, |mut c, r| async move { c.delete_prefix(r).await })
                    .await
            }
        }
    }

    /// After a DeletePrefix ran here: runs it on every other replica, so that each drops
    /// what its cache holds under the prefix (storage has nothing left to list by then),
    /// and adds what they deleted (results held only in their memory) to `reply`. A
    /// replica that cannot be reached is logged and skipped: its cache, if it comes back,
    /// serves what it held until `cache.time_to_live`.
    pub async fn delete_prefix_on_peers(
        &self,
        hop: &Hop,
        req: &pb::DeletePrefixRequest,
        reply: &mut pb::DeletePrefixResponse,
    ) {
        if hop.forwarded || !matches!(self.mode, Mode::Peers { .. }) {
            return;
        }
        let others: Vec<_> = self.router.order(&req.prefix).into_iter().filter(|r| !self.is_me(r)).collect();
        let calls = others.iter().map(|replica| {
            let mut client = replica.client.clone();
            let request = self.request(req.clone(), hop);
            async move { (replica, client.delete_prefix(request).await) }
        });
        for (replica, outcome) in futures::future::join_all(calls).await {
            match outcome {
                Ok(r) => {
                    reply.deleted += r.get_ref().deleted;
                    reply.bytes += r.get_ref().bytes;
                }
                Err(status) => tracing::warn!(
                    peer = replica.id,
                    code = resultstore_proto::code_name(status.code()),
                    error = status.message(),
                    "DeletePrefix did not reach a peer; its cache may serve results under the prefix until they expire"
                ),
            }
        }
    }

    /// Whether this node runs the background expiry sweeps of `block`: on a tier, only
    /// the replica first in the order of `sweep:<block>`; never on a sidecar.
    pub fn sweeps(&self, block: &str) -> bool {
        match &self.mode {
            Mode::Peers { me } => self.router.order(&format!("sweep:{block}")).first().is_none_or(|r| r.id == *me),
            Mode::Upstream { .. } => false,
        }
    }

    async fn forget(&self, key: &str) {
        if let Some(copies) = &self.copies {
            copies.forget(key).await;
        }
    }
}

/// Whether repeating `method` on another node is harmless.
fn idempotent(method: Method) -> bool {
    matches!(method, Method::Get | Method::GetStream | Method::Resolve | Method::Exists)
}

/// The key a Get or GetStream is for.
fn get_key(req: &pb::GetRequest) -> Option<String> {
    use pb::get_request::Target as T;
    match req.target.as_ref()? {
        T::Reference(r) => Some(r.key.clone()),
        T::Location(l) => Some(l.key.clone()),
        T::Prefect(p) => Some(document_key(&p.document)),
    }
}

/// A request's bytes, tagged with its RPC: what a copy is filed under.
fn tagged(tag: u8, message: &impl Message) -> Bytes {
    let mut bytes = Vec::with_capacity(1 + message.encoded_len());
    bytes.push(tag);
    message.encode_raw(&mut bytes);
    Bytes::from(bytes)
}

/// UNAVAILABLE because the owner's storage failed: an answer, not an absence (this node
/// would read the same storage).
fn from_storage(status: &Status) -> bool {
    status.code() == Code::Unavailable
        && status.metadata().get(resultstore_proto::UNAVAILABLE_REASON).and_then(|v| v.to_str().ok())
            == Some(resultstore_proto::UNAVAILABLE_STORAGE)
}

/// The messages after a PutStream's header, taken from `inbound` one by one (noting in
/// `taken` that one was). A stream that fails ends here; the node it goes to then sees a
/// stream that is not whole unless it already was, and stores nothing.
fn rest(inbound: Inbound, taken: Arc<AtomicBool>) -> impl Stream<Item = pb::PutStreamRequest> + Send + 'static {
    futures::stream::unfold((inbound, taken), |(inbound, taken)| async move {
        let next = {
            let mut slot = inbound.lock().await;
            let messages = slot.as_mut()?;
            taken.store(true, Ordering::Release);
            messages.message().await
        };
        match next {
            Ok(Some(message)) => Some((message, (inbound, taken))),
            Ok(None) | Err(_) => None,
        }
    })
}
