//! Which settings a reload may change, decided by types.
//!
//! A running process fixes some settings when it starts: the addresses it listens on,
//! whether its listener speaks TLS, the transport's limits (set on the HTTP/2 server and
//! the accept loop) and the cache's sizes. [`StartupSettings`] holds exactly those.
//! [`Config::startup`] takes them out of a config by destructuring every field of
//! [`Config`] and [`LimitsConfig`] with no `..`: a field added to either does not compile
//! until it is placed here or marked reloadable there. A reload puts the new config in
//! force with the started values put back ([`Config::keeping`]), so the generation in
//! force never claims a value the process is not using, and it names the settings whose
//! change waits for a restart ([`StartupSettings::changes`], from the fields' own names).

use std::time::Duration;

use serde::Serialize;

use crate::config::{ByteSize, CacheConfig, Config, LimitsConfig, MetricsConfig, TierConfig};

/// The settings a running process fixes at start (see the module's doc).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StartupSettings {
    pub listen: Option<String>,
    pub metrics: MetricsConfig,
    /// Whether the listener speaks TLS (its certificates reload; on or off does not).
    pub tls: bool,
    pub cache: CacheConfig,
    pub limits: StartupLimits,
    /// The tier's members and copies: connections are made at start.
    pub tier: Option<TierConfig>,
}

/// The `[limits]` a running process fixes at start.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StartupLimits {
    pub max_message_size: ByteSize,
    pub max_concurrent_streams_per_connection: u32,
    pub max_connections: usize,
    #[serde(with = "humantime_serde")]
    pub connection_preface_timeout: Duration,
    pub max_request_bytes_in_flight: ByteSize,
}

impl Config {
    /// The settings of this config that a running process fixes at start.
    pub fn startup(&self) -> StartupSettings {
        // Every field, no `..`: each is either taken below or reloadable (`_`).
        let Config {
            listen,
            default_block: _,
            default_serializer: _,
            persist_by_default: _,
            cache,
            limits,
            blocks: _,
            tls,
            auth: _,
            metrics,
            tier,
            shutdown_grace_period: _,
        } = self;
        let LimitsConfig {
            max_message_size,
            max_result_size: _,
            stream_chunk_size: _,
            max_concurrent_requests: _,
            max_concurrent_streams_per_connection,
            request_timeout: _,
            max_concurrent_streams: _,
            stream_idle_timeout: _,
            max_connections,
            connection_preface_timeout,
            max_request_bytes_in_flight,
        } = limits;
        StartupSettings {
            listen: listen.clone(),
            metrics: metrics.clone(),
            tls: tls.is_some(),
            cache: cache.clone(),
            tier: tier.clone(),
            limits: StartupLimits {
                max_message_size: *max_message_size,
                max_concurrent_streams_per_connection: *max_concurrent_streams_per_connection,
                max_connections: *max_connections,
                connection_preface_timeout: *connection_preface_timeout,
                max_request_bytes_in_flight: *max_request_bytes_in_flight,
            },
        }
    }

    /// This config with `startup`'s values in place of its own: what a reload puts in
    /// force. (`tls` is on or off in both; a reload that would turn it is refused first.)
    pub fn keeping(mut self, startup: &StartupSettings) -> Config {
        let StartupSettings { listen, metrics, tls: _, cache, limits, tier } = startup;
        let StartupLimits {
            max_message_size,
            max_concurrent_streams_per_connection,
            max_connections,
            connection_preface_timeout,
            max_request_bytes_in_flight,
        } = limits;
        self.listen.clone_from(listen);
        self.metrics = metrics.clone();
        self.cache = cache.clone();
        self.tier.clone_from(tier);
        self.limits.max_message_size = *max_message_size;
        self.limits.max_concurrent_streams_per_connection = *max_concurrent_streams_per_connection;
        self.limits.max_connections = *max_connections;
        self.limits.connection_preface_timeout = *connection_preface_timeout;
        self.limits.max_request_bytes_in_flight = *max_request_bytes_in_flight;
        self
    }
}

impl StartupSettings {
    /// The dotted names (`limits.max_message_size`, `cache.capacity`) of the settings
    /// that differ between `self` and `wanted`, taken from the fields' own names.
    pub fn changes(&self, wanted: &StartupSettings) -> Vec<String> {
        let (Ok(a), Ok(b)) = (serde_json::to_value(self), serde_json::to_value(wanted)) else {
            // Plain fields always serialize; if one ever did not, say that something did.
            return vec!["(settings read at start)".into()];
        };
        let mut names = Vec::new();
        differing(&a, &b, "", &mut names);
        names
    }
}

fn differing(a: &serde_json::Value, b: &serde_json::Value, path: &str, out: &mut Vec<String>) {
    match (a, b) {
        (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
            for (name, value) in x {
                let dotted = if path.is_empty() { name.clone() } else { format!("{path}.{name}") };
                differing(value, y.get(name).unwrap_or(&serde_json::Value::Null), &dotted, out);
            }
        }
        _ if a != b => out.push(path.to_owned()),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        let text =
            format!("default_block = \"memory/default\"\n{extra}\n[blocks.\"memory/default\"]\nurl = \"memory://\"\n");
        Config::from_toml(&text).unwrap()
    }

    #[test]
    fn changes_are_named_by_the_fields_and_reloadable_ones_are_not_among_them() {
        let started = config("[limits]\nmax_message_size = \"16MiB\"\n").startup();
        let wanted = config(
            "listen = \"127.0.0.1:1\"\n[cache]\ncapacity = \"1GiB\"\n[limits]\nmax_message_size = \"8MiB\"\n\
             max_concurrent_requests = 7\nrequest_timeout = \"5s\"\n",
        );
        assert_eq!(started.changes(&wanted.startup()), ["listen", "cache.capacity", "limits.max_message_size"]);
        // What is put in force: the started values, and the reloadable ones as written.
        let in_force = wanted.keeping(&started);
        assert_eq!(in_force.startup(), started);
        assert_eq!(in_force.limits.max_concurrent_requests, 7);
        assert_eq!(in_force.limits.request_timeout, Duration::from_secs(5));
    }
}
