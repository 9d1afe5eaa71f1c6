//! Storage: where results live, and the read cache in front of it.
//!
//! - [`blocks`]: the configured blocks, slug → object store, each wrapped to count its
//!   calls (and, for local files, confined and legacy-name aware);
//! - [`cache`]: the byte-bounded cache of loaded results, with singleflight fills and a
//!   fill budget;
//! - [`confined`]: local blocks never follow a symbolic link;
//! - [`object_names`]: a key's object name (the key as written), and its pre-0.2 one;
//! - [`legacy_keys`]: results stored under pre-0.2 percent-encoded names still read and
//!   delete.
//!
//! Uses: [`crate::config`], [`crate::formats`], [`crate::error`], [`crate::telemetry`].

pub mod blocks;
pub mod cache;
pub mod confined;
pub mod legacy_keys;
pub mod object_names;
