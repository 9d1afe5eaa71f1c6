//! The configuration in force, swapped whole on reload.
//!
//! A [`Generation`] is everything a call needs that a reload may change: the store (its
//! blocks), the access policy, the request limits and the TLS certificate. A call takes
//! the current generation once, at its start, and keeps it to its end, so a reload never
//! changes the rules under a call in flight.
//!
//! [`Live::reload`] builds the whole new generation before it swaps anything: a config
//! that does not parse, names a missing certificate or opens a block that cannot be
//! opened is refused with the reason, and the old generation keeps serving. What a
//! reload cannot change in a running process ([`StartupSettings`]: listen addresses,
//! TLS on or off, the transport's limits, cache sizes) keeps its started value in the new
//! generation too, and the reload names what it left for a restart.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::config::Config;
use crate::config::auth::AccessPolicy;
use crate::config::startup::StartupSettings;
use crate::error::{Error, Result};
use crate::ops::store::ResultStore;

/// One configuration's worth of serving state.
pub struct Generation {
    pub config: Config,
    pub store: Arc<ResultStore>,
    pub access: AccessPolicy,
    /// Unary calls in flight, at most `limits.max_concurrent_requests`.
    admission: Arc<Semaphore>,
    /// Streams in flight, at most `limits.max_concurrent_streams`.
    stream_admission: Arc<Semaphore>,
    /// The rustls config built from `config.tls`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Generation {
    fn build(config: Config, previous: Option<&Generation>) -> Result<Self> {
        config.validate()?;
        let store = match previous {
            Some(p) => p.store.reconfigured(&config)?,
            None => ResultStore::new(&config)?,
        };
        let tls = config.tls.as_ref().map(crate::runtime::tls::server_config).transpose()?;
        Ok(Generation {
            access: AccessPolicy::from_config(config.auth.as_ref())?,
            admission: Arc::new(Semaphore::new(config.limits.max_concurrent_requests)),
            stream_admission: Arc::new(Semaphore::new(config.limits.max_concurrent_streams)),
            tls,
            store: Arc::new(store),
            config,
        })
    }

    /// A place among the unary calls in flight, or `Overloaded` at once when all are taken.
    pub fn admit(&self) -> Result<OwnedSemaphorePermit> {
        self.admission.clone().try_acquire_owned().map_err(|_| {
            Error::Overloaded(format!(
                "{} calls are in flight (limits.max_concurrent_requests); retry with backoff",
                self.config.limits.max_concurrent_requests
            ))
        })
    }

    /// A place among the streams in flight (apart from unary calls), or `Overloaded`.
    pub fn admit_stream(&self) -> Result<OwnedSemaphorePermit> {
        self.stream_admission.clone().try_acquire_owned().map_err(|_| {
            Error::Overloaded(format!(
                "{} streams are in flight (limits.max_concurrent_streams); retry with backoff",
                self.config.limits.max_concurrent_streams
            ))
        })
    }
}

/// The current generation, and whether the server is draining.
pub struct Live {
    /// Read by every call, written by reloads: an `ArcSwap` load takes no lock.
    current: ArcSwap<Generation>,
    /// The settings fixed at start, kept by every generation.
    startup: StartupSettings,
    draining: AtomicBool,
    /// The same, for whoever waits on it (connections still silent close when it turns).
    drain_signal: watch::Sender<bool>,
}

impl Live {
    pub fn new(config: Config) -> Result<Self> {
        Ok(Live {
            startup: config.startup(),
            current: ArcSwap::from_pointee(Generation::build(config, None)?),
            draining: AtomicBool::new(false),
            drain_signal: watch::Sender::new(false),
        })
    }

    /// The generation in force now.
    pub fn current(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    /// Builds a generation from `config` and puts it in force, or refuses it and keeps the
    /// old one. The settings fixed at start keep their started values; the names of those
    /// `config` would change (which only a restart applies) are returned.
    pub fn reload(&self, config: Config) -> Result<Vec<String>> {
        // The file as written first: a setting that only a restart applies must still be one
        // the next start accepts (checked again below, with the started values put back).
        config.validate()?;
        let wanted = config.startup();
        if wanted.tls != self.startup.tls {
            return Err(Error::Config(
                "a reload cannot turn TLS on or off (the listener speaks one or the other): restart instead".into(),
            ));
        }
        let next = Generation::build(config.keeping(&self.startup), Some(&self.current()))?;
        self.current.store(Arc::new(next));
        Ok(self.startup.changes(&wanted))
    }

    /// From now on, new calls are refused with UNAVAILABLE.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.drain_signal.send_replace(true);
    }

    /// Turns true when the server starts draining.
    pub fn drain_signal(&self) -> watch::Receiver<bool> {
        self.drain_signal.subscribe()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::from_toml("default_block = \"memory/default\"\n[blocks.\"memory/default\"]\nurl = \"memory://\"\n")
            .unwrap()
    }

    #[test]
    fn a_reload_refuses_restart_only_settings_the_next_start_would_refuse() {
        let live = Live::new(config()).unwrap();
        let mut zero = config();
        zero.cache.capacity = crate::config::ByteSize(0);
        let err = live.reload(zero).unwrap_err();
        assert!(err.to_string().contains("capacity"), "{err}");
        // A valid change waits for the restart, named; the started value stays in force.
        let mut bigger = config();
        bigger.cache.capacity = crate::config::ByteSize(1 << 30);
        assert_eq!(live.reload(bigger).unwrap(), ["cache.capacity"]);
        assert_eq!(live.current().config.cache.capacity, config().cache.capacity);
    }
}
