//! Who may do what: bearer tokens scoped to blocks and operations.
//!
//! The config holds each token as the hex SHA-256 of its text, never the text, with a
//! name (for logs) and scopes: block patterns (`"s3-bucket/*"`, `"memory/scratch"`,
//! `"*"`) mapped to operations (`read`, `write`, `delete`). A call presents
//! `authorization: Bearer TOKEN`; [`AccessPolicy::authenticate`] turns that into an
//! [`Access`], and every domain operation checks the block it is about to touch with
//! [`Access::check`] *before* any storage call, so a refusal says nothing about whether
//! the key exists.
//!
//! Without an `[auth]` table the server is open (everyone may do everything): that is
//! the embedded default, which listens on loopback only. With one, a call without a
//! token gets the `anonymous` scopes (none unless configured), and a token the config
//! does not know is refused outright, even where anonymous calls would be let in, so a
//! mistyped or revoked token fails loudly instead of quietly losing rights.
//!
//! Which RPC needs which operation: Put and PutStream `write`; Get, GetStream, Resolve,
//! Exists and List `read`; Delete `delete`. ListBlocks shows the blocks on which the
//! caller holds any operation. Health and reflection need no token (probes carry none,
//! and reflection shows only the schema).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::config::keys::{BlockType, parse_slug};
use crate::error::{Error, Result};

/// The name of the anonymous caller's grant; no token may take it.
const ANONYMOUS: &str = "anonymous";

/// An operation a scope grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    Read,
    Write,
    Delete,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Read => "read",
            Operation::Write => "write",
            Operation::Delete => "delete",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which blocks a scope covers.
#[derive(Debug, Clone, PartialEq, Eq)]
enum BlockPattern {
    /// `*`: every block.
    Any,
    /// `type/*`: every block of one type.
    Type(BlockType),
    /// One block, by canonical slug.
    Exact(String),
}

impl BlockPattern {
    fn parse(pattern: &str) -> Result<Self> {
        if pattern == "*" {
            return Ok(BlockPattern::Any);
        }
        if let Some(ty) = pattern.strip_suffix("/*") {
            return BlockType::parse(ty).map(BlockPattern::Type).ok_or_else(|| {
                Error::Config(format!("scope `{pattern}`: `{ty}` is not a block type (e.g. `s3-bucket/*`)"))
            });
        }
        if pattern.contains('*') {
            return Err(Error::Config(format!(
                "scope `{pattern}`: `*` stands only for a whole slug (`*`) or a whole block name (`type/*`)"
            )));
        }
        let (canonical, _) = parse_slug(pattern).map_err(|e| Error::Config(format!("scope `{pattern}`: {e}")))?;
        Ok(BlockPattern::Exact(canonical))
    }

    /// Whether the pattern covers a block, given as canonical slug and type.
    fn covers(&self, slug: &str, ty: BlockType) -> bool {
        match self {
            BlockPattern::Any => true,
            BlockPattern::Type(t) => *t == ty,
            BlockPattern::Exact(s) => s == slug,
        }
    }
}

/// The `[auth]` table of the config: bearer tokens and what calls without one may do
/// (see the module docs for what each RPC needs).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Scopes of calls that carry no token: block pattern → operations. Empty (the
    /// default): every call needs a token.
    #[serde(default)]
    pub anonymous: BTreeMap<String, Vec<Operation>>,
    /// The tokens.
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
}

/// One bearer token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// A name for logs and refusals; unique.
    pub name: String,
    /// Hex SHA-256 of the token (`resultstore token hash` prints it). The token itself
    /// is never stored.
    pub sha256: String,
    /// Block pattern (`*`, `type/*`, or a slug) → operations (`read`, `write`, `delete`).
    pub scopes: BTreeMap<String, Vec<Operation>>,
}

/// One token's (or the anonymous caller's) rights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The token's name from the config, or `anonymous`: logged, never the token.
    pub name: String,
    scopes: Vec<(BlockPattern, u8)>,
}

impl Grant {
    fn from_scopes(name: &str, scopes: &BTreeMap<String, Vec<Operation>>) -> Result<Self> {
        let scopes = scopes
            .iter()
            .map(|(pattern, ops)| {
                if ops.is_empty() {
                    return Err(Error::Config(format!(
                        "`{name}`: scope `{pattern}` grants no operation; list read, write or delete, or drop it"
                    )));
                }
                Ok((BlockPattern::parse(pattern)?, ops.iter().fold(0, |m, op| m | op.bit())))
            })
            .collect::<Result<Vec<_>>>()
            .map_err(|e| match e {
                Error::Config(m) if !m.starts_with('`') => Error::Config(format!("`{name}`: {m}")),
                e => e,
            })?;
        Ok(Grant { name: name.to_owned(), scopes })
    }

    fn allows(&self, slug: &str, ty: BlockType, op: Operation) -> bool {
        self.scopes.iter().any(|(p, ops)| ops & op.bit() != 0 && p.covers(slug, ty))
    }

    fn sees(&self, slug: &str, ty: BlockType) -> bool {
        self.scopes.iter().any(|(p, _)| p.covers(slug, ty))
    }
}

/// A caller's rights for one call.
#[derive(Debug, Clone)]
pub enum Access {
    /// No `[auth]` table: everything is allowed.
    Open,
    /// What one token (or the anonymous caller) was granted.
    Granted(Arc<Grant>),
}

impl Access {
    /// `Ok` when the caller may perform `op` on the block `slug` (any spelling the
    /// registry accepts; an empty slug means the default block and must be resolved by
    /// the caller first). A refusal names the block and the operation, and is decided
    /// from the slug alone: nothing about keys is looked at.
    pub fn check(&self, slug: &str, op: Operation) -> Result<()> {
        let Access::Granted(grant) = self else {
            return Ok(());
        };
        let (canonical, ty) = parse_slug(slug)?;
        if grant.allows(&canonical, ty, op) {
            Ok(())
        } else {
            let who = if grant.name == ANONYMOUS {
                "a call without a token".to_owned()
            } else {
                format!("token `{}`", grant.name)
            };
            Err(Error::PermissionDenied { who, operation: op.as_str(), block: canonical })
        }
    }

    /// Whether ListBlocks shows the block to this caller: it holds some operation on it.
    pub fn sees(&self, slug: &str) -> bool {
        match self {
            Access::Open => true,
            Access::Granted(grant) => parse_slug(slug).is_ok_and(|(canonical, ty)| grant.sees(&canonical, ty)),
        }
    }

    /// The name to log for the caller (`-` when the server is open).
    pub fn name(&self) -> &str {
        match self {
            Access::Open => "-",
            Access::Granted(g) => &g.name,
        }
    }
}

/// The tokens and anonymous scopes of one config generation.
#[derive(Debug, Clone)]
pub struct AccessPolicy {
    /// `None`: no `[auth]` table, the server is open.
    tokens: Option<HashMap<[u8; 32], Arc<Grant>>>,
    anonymous: Option<Arc<Grant>>,
}

impl AccessPolicy {
    /// The open policy of a config without `[auth]`.
    pub fn open() -> Self {
        AccessPolicy { tokens: None, anonymous: None }
    }

    pub fn from_config(auth: Option<&AuthConfig>) -> Result<Self> {
        let Some(auth) = auth else {
            return Ok(Self::open());
        };
        let mut tokens = HashMap::new();
        let mut names = Vec::new();
        for TokenConfig { name, sha256, scopes } in &auth.tokens {
            if name.is_empty() || name == ANONYMOUS || names.contains(&name) {
                return Err(Error::Config(format!(
                    "auth.tokens: the name `{name}` is empty, reserved or used twice; each token needs its own name"
                )));
            }
            names.push(name);
            let hash = parse_hash(sha256).ok_or_else(|| {
                Error::Config(format!(
                    "token `{name}`: sha256 must be the 64 hex digits of the token's SHA-256 (see `resultstore \
                     token hash`), not the token itself"
                ))
            })?;
            let grant = Grant::from_scopes(name, scopes).map_err(|e| Error::Config(format!("auth.tokens: {e}")))?;
            if tokens.insert(hash, Arc::new(grant)).is_some() {
                return Err(Error::Config(format!("token `{name}`: its sha256 is also another token's")));
            }
        }
        let anonymous = if auth.anonymous.is_empty() {
            None
        } else {
            Some(Arc::new(
                Grant::from_scopes(ANONYMOUS, &auth.anonymous).map_err(|e| Error::Config(format!("auth.{e}")))?,
            ))
        };
        Ok(AccessPolicy { tokens: Some(tokens), anonymous })
    }

    /// The access of a call that carried `authorization` (the header's value, if any).
    pub fn authenticate(&self, authorization: Option<&[u8]>) -> Result<Access> {
        let Some(tokens) = &self.tokens else {
            return Ok(Access::Open);
        };
        let Some(header) = authorization else {
            return self.anonymous.clone().map(Access::Granted).ok_or_else(|| {
                Error::Unauthenticated(
                    "this server needs a token: send `authorization: Bearer <token>` (anonymous calls have no scope)"
                        .into(),
                )
            });
        };
        let token = bearer_token(header)
            .ok_or_else(|| Error::Unauthenticated("the authorization header is not `Bearer <token>`".into()))?;
        let hash: [u8; 32] = Sha256::digest(token).into();
        tokens.get(&hash).cloned().map(Access::Granted).ok_or_else(|| {
            Error::Unauthenticated("the token is not known to this server (revoked, mistyped or from another)".into())
        })
    }
}

/// The token of `Bearer TOKEN` (scheme case-insensitive, as RFC 7235 says).
fn bearer_token(header: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = header.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

fn parse_hash(hex_text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_text.trim(), &mut out).ok()?;
    Some(out)
}

/// The hex SHA-256 of a token, as the config stores it.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.trim().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(text: &str) -> Result<AccessPolicy> {
        let auth: AuthConfig = toml::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        AccessPolicy::from_config(Some(&auth))
    }

    #[test]
    fn scopes_cover_types_slugs_and_aliases() {
        let p = policy(&format!(
            "[[tokens]]\nname = \"r\"\nsha256 = \"{}\"\nscopes = {{ \"s3/*\" = [\"read\"], \"memory/a\" = [\"read\", \
             \"write\"] }}\n",
            token_hash("secret")
        ))
        .unwrap();
        let a = p.authenticate(Some(b"bearer secret")).unwrap();
        a.check("s3-bucket/prod", Operation::Read).unwrap();
        a.check("s3/prod", Operation::Read).unwrap();
        a.check("memory/a", Operation::Write).unwrap();
        let e = a.check("s3-bucket/prod", Operation::Write).unwrap_err();
        assert_eq!(e.to_string(), "token `r` may not write in block `s3-bucket/prod`");
        assert!(a.check("memory/b", Operation::Read).is_err());
        assert!(a.sees("s3-bucket/x") && a.sees("memory/a") && !a.sees("memory/b"));
        assert!(matches!(p.authenticate(None), Err(Error::Unauthenticated(_))));
        assert!(matches!(p.authenticate(Some(b"Bearer other")), Err(Error::Unauthenticated(_))));
        assert!(matches!(p.authenticate(Some(b"Basic c2VjcmV0")), Err(Error::Unauthenticated(_))));
    }

    #[test]
    fn bad_configs_are_named() {
        let hash = token_hash("x");
        for (text, needle) in [
            ("[[tokens]]\nname = \"a\"\nsha256 = \"x\"\nscopes = {}\n", "64 hex digits"),
            (&format!("[[tokens]]\nname = \"a\"\nsha256 = \"{hash}\"\nscopes = {{ \"s3-*\" = [\"read\"] }}\n"), "s3-*"),
            (
                &format!("[[tokens]]\nname = \"a\"\nsha256 = \"{hash}\"\nscopes = {{ \"nope/*\" = [\"read\"] }}\n"),
                "nope",
            ),
            (&format!("[[tokens]]\nname = \"a\"\nsha256 = \"{hash}\"\nscopes = {{ \"*\" = [] }}\n"), "no operation"),
            (
                &format!(
                    "[[tokens]]\nname = \"a\"\nsha256 = \"{hash}\"\nscopes = {{}}\n[[tokens]]\nname = \"a\"\nsha256 = \
                     \"{hash}\"\nscopes = {{}}\n"
                ),
                "used twice",
            ),
            ("anonymous = { \"*\" = [\"admin\"] }\n", "admin"),
        ] {
            let err = policy(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}
