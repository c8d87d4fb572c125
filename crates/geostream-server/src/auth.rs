//! Who a client is and what it may do.
//!
//! A client proves who it is with a JWT (HS256 with a shared secret, RS256 or ES256 with
//! configured public keys), given in `hello`, an `Authorization: Bearer` header, or an
//! `access_token` query parameter (browsers cannot set headers on WebSocket or EventSource).
//! The token's claims grant rights per layer and channel name pattern:
//!
//! ```json
//! { "sub": "alice", "exp": 1767225600,
//!   "layers": { "roads": "rw", "sensors/*": "r" },
//!   "channels": { "chat/*": "rw", "alerts": "r" } }
//! ```
//!
//! `r` reads (layers: get, query, subscribe, tiles; channels: subscribe, history, presence),
//! `w` writes (layers: edits, locks, imports, creating and deleting; channels: publish). A
//! pattern's `*` matches any run of characters. Channels whose name ends in `#USER` (such as
//! `notifications#alice`) are readable only by the token whose subject is `USER`, whatever
//! else it is granted. Clients without a token get what `auth.anonymous` allows. A token
//! that is presented and invalid is refused, even where anonymous access would be allowed.

use std::collections::BTreeMap;

use axum::http::{HeaderMap, header};
use geostream_core::error::ErrorCode;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Validation};
use serde::{Deserialize, Serialize};

use crate::config::{Anonymous, Config};
use crate::error::{Result, ServerError};

/// Read access.
pub const READ: u8 = 1;
/// Write access.
pub const WRITE: u8 = 2;

/// Rights on names matching a pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// A name, with `*` matching any run of characters.
    pub pattern: String,
    /// [`READ`] and/or [`WRITE`].
    pub rights: u8,
}

impl Grant {
    fn matches(&self, name: &str) -> bool {
        glob(self.pattern.as_bytes(), name.as_bytes())
    }
}

/// Whether `name` matches `pattern`, where `*` matches any run (iterative, so hostile
/// patterns cannot recurse deeply; at most a few passes over the name per star).
fn glob(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, n));
            p += 1;
        } else if p < pattern.len() && pattern[p] == name[n] {
            p += 1;
            n += 1;
        } else if let Some((sp, sn)) = star {
            p = sp + 1;
            n = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|c| *c == b'*')
}

/// Parses `"r"`, `"w"`, `"rw"`.
fn parse_rights(s: &str) -> Option<u8> {
    let mut r = 0;
    for c in s.chars() {
        r |= match c {
            'r' => READ,
            'w' => WRITE,
            _ => return None,
        };
    }
    (r != 0).then_some(r)
}

/// An authenticated (or anonymous) client.
#[derive(Clone, Debug)]
pub struct Principal {
    /// The token's subject; `None` when anonymous or when the token has none.
    pub user: Option<String>,
    /// Whether no token was given.
    pub anonymous: bool,
    /// When the token expires, seconds since the Unix epoch.
    pub expires: Option<u64>,
    layers: Vec<Grant>,
    channels: Vec<Grant>,
    /// Rights on every layer and (non-user) channel, for anonymous access.
    everything: u8,
}

impl Principal {
    fn anonymous(mode: Anonymous) -> Self {
        Principal {
            user: None,
            anonymous: true,
            expires: None,
            layers: Vec::new(),
            channels: Vec::new(),
            everything: match mode {
                Anonymous::Full => READ | WRITE,
                Anonymous::Read => READ,
                Anonymous::None | Anonymous::Auto => 0,
            },
        }
    }

    fn rights(grants: &[Grant], everything: u8, name: &str) -> u8 {
        grants
            .iter()
            .filter(|g| g.matches(name))
            .fold(everything, |acc, g| acc | g.rights)
    }

    /// Whether the token has expired (a connection must then refresh it).
    pub fn expired(&self) -> bool {
        self.expires.is_some_and(|e| e < now_secs())
    }

    fn deny(&self, what: String) -> ServerError {
        if self.anonymous {
            ServerError::new(
                ErrorCode::Unauthorized,
                format!("{what} needs a token (this server allows no such anonymous access)"),
            )
        } else {
            ServerError::new(
                ErrorCode::Forbidden,
                format!("{what} is not granted by your token"),
            )
        }
    }

    fn check_live(&self) -> Result<()> {
        if self.expired() {
            return Err(ServerError::new(
                ErrorCode::Unauthorized,
                "your token has expired; send hello with a fresh one",
            ));
        }
        Ok(())
    }

    /// Whether layer `name` may be read (without an error, for listing).
    pub fn may_read_layer(&self, name: &str) -> bool {
        !self.expired() && Self::rights(&self.layers, self.everything, name) & READ != 0
    }

    /// Checks read access to a layer.
    pub fn read_layer(&self, name: &str) -> Result<()> {
        self.check_live()?;
        if Self::rights(&self.layers, self.everything, name) & READ == 0 {
            return Err(self.deny(format!("reading layer {name:?}")));
        }
        Ok(())
    }

    /// Checks write access to a layer.
    pub fn write_layer(&self, name: &str) -> Result<()> {
        self.check_live()?;
        if Self::rights(&self.layers, self.everything, name) & WRITE == 0 {
            return Err(self.deny(format!("writing to layer {name:?}")));
        }
        Ok(())
    }

    /// The user a channel name is limited to (`notifications#alice` → `alice`).
    fn channel_owner(name: &str) -> Option<&str> {
        name.rsplit_once('#')
            .map(|(_, u)| u)
            .filter(|u| !u.is_empty())
    }

    /// Checks the right to subscribe to a channel or read its history and presence.
    pub fn read_channel(&self, name: &str) -> Result<()> {
        self.check_live()?;
        if let Some(owner) = Self::channel_owner(name) {
            if self.user.as_deref() == Some(owner) {
                return Ok(());
            }
            return Err(if self.anonymous {
                self.deny(format!("reading channel {name:?}"))
            } else {
                ServerError::new(
                    ErrorCode::Forbidden,
                    format!("channel {name:?} is readable only by {owner:?}"),
                )
            });
        }
        if Self::rights(&self.channels, self.everything, name) & READ == 0 {
            return Err(self.deny(format!("reading channel {name:?}")));
        }
        Ok(())
    }

    /// Checks the right to publish to a channel. Publishing to a user channel needs an
    /// explicit grant (a notification service's token), not anonymous access. Geofence
    /// channels (`fence:*`) are written by the server only.
    pub fn publish_channel(&self, name: &str) -> Result<()> {
        self.check_live()?;
        if name.starts_with(geostream_fence::CHANNEL_PREFIX) {
            return Err(ServerError::new(
                ErrorCode::Forbidden,
                format!(
                    "channel {name:?} carries geofence events and only the server publishes to it"
                ),
            ));
        }
        let everything = if Self::channel_owner(name).is_some() {
            0
        } else {
            self.everything
        };
        if Self::rights(&self.channels, everything, name) & WRITE == 0 {
            return Err(self.deny(format!("publishing to channel {name:?}")));
        }
        Ok(())
    }
}

impl Principal {
    /// Checks the right to create or delete geofence `name`: write access to its channel
    /// `fence:NAME` (a grant such as `"fence:*": "rw"`), which clients cannot publish to.
    pub fn manage_fence(&self, name: &str) -> Result<()> {
        self.check_live()?;
        let channel = geostream_fence::channel_of(name);
        if Self::rights(&self.channels, self.everything, &channel) & WRITE == 0 {
            return Err(self.deny(format!("managing geofence {name:?}")));
        }
        Ok(())
    }
}

/// The claims geostream reads.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    /// Subject: the user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Expiry, seconds since the Unix epoch (required).
    pub exp: u64,
    /// Not before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issued at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Layer name pattern → rights.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub layers: BTreeMap<String, String>,
    /// Channel name pattern → rights.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub channels: BTreeMap<String, String>,
}

/// Verifies tokens with the configured keys.
pub struct Authenticator {
    anonymous: Anonymous,
    hs256: Option<DecodingKey>,
    keys: Vec<(Algorithm, Option<String>, DecodingKey)>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: u64,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("anonymous", &self.anonymous)
            .field("hs256", &self.hs256.is_some())
            .field("keys", &self.keys.len())
            .finish()
    }
}

/// Largest token accepted, in bytes.
const MAX_TOKEN_BYTES: usize = 8192;

impl Authenticator {
    /// Reads the keys the configuration names.
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        let a = &config.auth;
        let hs256 = (!a.hs256_secret.is_empty())
            .then(|| DecodingKey::from_secret(a.hs256_secret.as_bytes()));
        let mut keys = Vec::new();
        for k in &a.public_keys {
            let path = config.data_path(&k.pem_file);
            let pem = std::fs::read(&path)
                .map_err(|e| anyhow::anyhow!("auth.public_keys: {}: {e}", path.display()))?;
            let (alg, key) = match k.alg.as_str() {
                "RS256" => (Algorithm::RS256, DecodingKey::from_rsa_pem(&pem)),
                "ES256" => (Algorithm::ES256, DecodingKey::from_ec_pem(&pem)),
                other => anyhow::bail!("auth.public_keys: alg {other:?} is not RS256 or ES256"),
            };
            let key =
                key.map_err(|e| anyhow::anyhow!("auth.public_keys: {}: {e}", path.display()))?;
            keys.push((alg, k.kid.clone(), key));
        }
        Ok(Authenticator {
            anonymous: a.anonymous_mode(config.listen),
            hs256,
            keys,
            issuer: a.issuer.clone(),
            audience: a.audience.clone(),
            leeway: a.leeway_secs,
        })
    }

    /// The principal of a client without a token.
    pub fn anonymous(&self) -> Principal {
        Principal::anonymous(self.anonymous)
    }

    /// Verifies a token; any failure is `unauthorized` with the reason.
    pub fn verify(&self, token: &str) -> Result<Principal> {
        let bad = |m: String| ServerError::new(ErrorCode::Unauthorized, m);
        if token.len() > MAX_TOKEN_BYTES {
            return Err(bad(format!(
                "the token is longer than {MAX_TOKEN_BYTES} bytes"
            )));
        }
        // `alg: none` and any algorithm we have no key for fail here: the header is read
        // only to pick a key, never trusted to skip verification.
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| bad(format!("the token is not a valid JWT: {e}")))?;
        let key = match header.alg {
            Algorithm::HS256 => self.hs256.as_ref(),
            alg => self
                .keys
                .iter()
                .find(|(a, kid, _)| {
                    *a == alg && (kid.is_none() || kid.as_deref() == header.kid.as_deref())
                })
                .map(|(_, _, k)| k),
        }
        .ok_or_else(|| {
            bad(format!(
                "tokens signed with {:?} are not accepted here",
                header.alg
            ))
        })?;
        let mut v = Validation::new(header.alg);
        v.leeway = self.leeway;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp"]);
        if let Some(i) = &self.issuer {
            v.set_issuer(&[i]);
        }
        match &self.audience {
            Some(a) => v.set_audience(&[a]),
            None => v.validate_aud = false,
        }
        let data = jsonwebtoken::decode::<Claims>(token, key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            bad(match e.kind() {
                K::ExpiredSignature => "the token has expired".to_string(),
                K::ImmatureSignature => "the token is not valid yet (nbf)".to_string(),
                K::InvalidSignature => "the token's signature is invalid".to_string(),
                _ => format!("the token was refused: {e}"),
            })
        })?;
        let c = data.claims;
        let grants = |m: &BTreeMap<String, String>, what: &str| -> Result<Vec<Grant>> {
            m.iter()
                .map(|(p, r)| {
                    parse_rights(r)
                        .map(|rights| Grant {
                            pattern: p.clone(),
                            rights,
                        })
                        .ok_or_else(|| bad(format!("{what}.{p}: rights must be r, w or rw")))
                })
                .collect()
        };
        Ok(Principal {
            user: c.sub,
            anonymous: false,
            expires: Some(c.exp),
            layers: grants(&c.layers, "layers")?,
            channels: grants(&c.channels, "channels")?,
            everything: 0,
        })
    }

    /// The principal of an HTTP request: a bearer token, an `access_token` query
    /// parameter, or anonymous.
    pub fn from_request(&self, headers: &HeaderMap, query: Option<&str>) -> Result<Principal> {
        if let Some(v) = headers.get(header::AUTHORIZATION) {
            let s = v.to_str().unwrap_or_default();
            let Some(t) = s
                .strip_prefix("Bearer ")
                .or_else(|| s.strip_prefix("bearer "))
            else {
                return Err(ServerError::new(
                    ErrorCode::Unauthorized,
                    "Authorization: use the Bearer scheme with a JWT",
                ));
            };
            return self.verify(t.trim());
        }
        if let Some(q) = query {
            for (k, v) in form_urlencoded::parse(q.as_bytes()) {
                if k == "access_token" {
                    return self.verify(&v);
                }
            }
        }
        Ok(self.anonymous())
    }
}

/// Signs an HS256 token (for `geostream token`, development and tests).
pub fn mint_hs256(secret: &str, claims: &Claims) -> anyhow::Result<String> {
    anyhow::ensure!(
        !secret.is_empty(),
        "an HS256 secret is needed to sign tokens"
    );
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

/// Parses `--grant` values: `NAME:RIGHTS` or `layer:NAME:RIGHTS` for layers,
/// `channel:NAME:RIGHTS` for channels.
pub fn parse_grant(
    s: &str,
    layers: &mut BTreeMap<String, String>,
    channels: &mut BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let (rest, rights) = s
        .rsplit_once(':')
        .ok_or_else(|| anyhow::anyhow!("grant {s:?}: expected NAME:RIGHTS"))?;
    anyhow::ensure!(
        parse_rights(rights).is_some(),
        "grant {s:?}: rights must be r, w or rw"
    );
    let (map, name) = if let Some(n) = rest.strip_prefix("channel:") {
        (channels, n)
    } else if let Some(n) = rest.strip_prefix("layer:") {
        (layers, n)
    } else {
        (layers, rest)
    };
    anyhow::ensure!(!name.is_empty(), "grant {s:?}: the name is empty");
    map.insert(name.to_string(), rights.to_string());
    Ok(())
}

/// Parses a duration such as `90s`, `15m`, `1h`, `7d`.
pub fn parse_ttl(s: &str) -> anyhow::Result<u64> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n
        .parse()
        .map_err(|_| anyhow::anyhow!("ttl {s:?}: expected a number and s, m, h or d"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => anyhow::bail!("ttl {s:?}: unit must be s, m, h or d"),
    };
    Ok(n * mult)
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob(b"sensors/*", b"sensors/a/b"));
        assert!(glob(b"*", b"anything"));
        assert!(glob(b"roads", b"roads"));
        assert!(!glob(b"roads", b"roads2"));
        assert!(glob(b"a*b*c", b"axxbyyc"));
        assert!(!glob(b"a*b*c", b"axxbyy"));
        assert!(glob(b"**", b""));
    }

    fn config(anon: Anonymous) -> Config {
        let mut c = Config::default();
        c.auth.hs256_secret = "s3cret".into();
        c.auth.anonymous = anon;
        c
    }

    fn token(secret: &str, exp: u64, layers: &[(&str, &str)], channels: &[(&str, &str)]) -> String {
        mint_hs256(
            secret,
            &Claims {
                sub: Some("alice".into()),
                exp,
                nbf: None,
                iat: None,
                layers: layers
                    .iter()
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .collect(),
                channels: channels
                    .iter()
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .collect(),
            },
        )
        .unwrap()
    }

    #[test]
    fn grants_and_refusals() {
        let a = Authenticator::new(&config(Anonymous::None)).unwrap();
        let later = now_secs() + 3600;
        let p = a
            .verify(&token(
                "s3cret",
                later,
                &[("roads", "rw"), ("sensors/*", "r")],
                &[("chat/*", "rw")],
            ))
            .unwrap();
        assert_eq!(p.user.as_deref(), Some("alice"));
        assert!(p.write_layer("roads").is_ok());
        assert!(p.read_layer("sensors/t1").is_ok());
        assert_eq!(
            p.write_layer("sensors/t1").unwrap_err().to_rpc().code,
            ErrorCode::Forbidden
        );
        assert!(p.read_layer("parks").is_err());
        assert!(p.publish_channel("chat/x").is_ok());
        assert!(p.read_channel("notifications#alice").is_ok());
        assert!(p.read_channel("notifications#bob").is_err());
        // Expired, forged, alg none.
        let e = a
            .verify(&token("s3cret", now_secs() - 3600, &[], &[]))
            .unwrap_err();
        assert!(e.to_rpc().message.contains("expired"));
        let e = a.verify(&token("wrong", later, &[], &[])).unwrap_err();
        assert!(e.to_rpc().message.contains("signature"));
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let none = format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(&format!(
                r#"{{"sub":"alice","exp":{later},"layers":{{"*":"rw"}}}}"#
            ))
        );
        assert_eq!(
            a.verify(&none).unwrap_err().to_rpc().code,
            ErrorCode::Unauthorized
        );
        // Anonymous modes.
        let anon = a.anonymous();
        assert_eq!(
            anon.read_layer("roads").unwrap_err().to_rpc().code,
            ErrorCode::Unauthorized
        );
        let full = Authenticator::new(&config(Anonymous::Full))
            .unwrap()
            .anonymous();
        assert!(full.write_layer("roads").is_ok());
        assert!(full.read_channel("notifications#alice").is_err());
        assert!(full.publish_channel("notifications#alice").is_err());
        let read = Authenticator::new(&config(Anonymous::Read))
            .unwrap()
            .anonymous();
        assert!(read.read_layer("roads").is_ok());
        assert!(read.write_layer("roads").is_err());
    }

    #[test]
    fn grant_and_ttl_syntax() {
        let (mut l, mut c) = (BTreeMap::new(), BTreeMap::new());
        parse_grant("roads:rw", &mut l, &mut c).unwrap();
        parse_grant("layer:sensors/*:r", &mut l, &mut c).unwrap();
        parse_grant("channel:chat:rw", &mut l, &mut c).unwrap();
        assert!(parse_grant("roads:x", &mut l, &mut c).is_err());
        assert_eq!(l.len(), 2);
        assert_eq!(c["chat"], "rw");
        assert_eq!(parse_ttl("1h").unwrap(), 3600);
        assert_eq!(parse_ttl("90").unwrap(), 90);
        assert!(parse_ttl("1y").is_err());
    }
}
