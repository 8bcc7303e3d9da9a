//! Access tiers: who may see an item. Tiers are ordered; a caller at tier `t` may see every
//! item whose tier is `<= t`.
//!
//! ```
//! use tilewarm::access::Access;
//! assert!(Access::Public < Access::Agent);
//! assert_eq!("verified".parse::<Access>().unwrap(), Access::Verified);
//! assert_eq!(
//!     "admin".parse::<Access>().unwrap_err().to_string(),
//!     "unknown access tier \"admin\": allowed are public, registered, verified, agent"
//! );
//! ```

use crate::util::Quoted;
use std::fmt;
use std::str::FromStr;

/// An access tier, ordered `Public < Registered < Verified < Agent`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Access {
    /// Anyone; the default.
    #[default]
    Public,
    /// A signed-in user.
    Registered,
    /// A user whose identity was checked.
    Verified,
    /// A licensed agent: sees everything.
    Agent,
}

/// A tier name that is not one of the known tiers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown access tier {}: allowed are public, registered, verified, agent",
    Quoted(.0)
)]
pub struct UnknownAccess(pub String);

impl Access {
    /// All tiers, lowest first.
    pub const ALL: [Access; 4] = [
        Access::Public,
        Access::Registered,
        Access::Verified,
        Access::Agent,
    ];

    /// The wire name (`public`, `registered`, `verified`, `agent`).
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Public => "public",
            Access::Registered => "registered",
            Access::Verified => "verified",
            Access::Agent => "agent",
        }
    }

    /// The tier's rank, 0 for `Public`.
    pub fn rank(self) -> u8 {
        self as u8
    }

    /// The tier of a rank from [`rank`](Access::rank), if there is one.
    pub fn from_rank(rank: u8) -> Option<Access> {
        Access::ALL.get(rank as usize).copied()
    }

    /// Whether a caller at tier `self` may see an item at tier `item`.
    pub fn can_see(self, item: Access) -> bool {
        item <= self
    }
}

/// A request that asks for a tier above the one its caller's credential gives (a 403).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "access \"{asked}\" is above the tier the credential gives (\"{verified}\"): ask for at most \"{verified}\", or send a credential for a higher tier"
)]
pub struct AboveCredential {
    /// The tier the request asked for.
    pub asked: Access,
    /// The caller's verified tier.
    pub verified: Access,
}

/// The tier a request is served at: what it asks for (`asked`, the body's `access`), which
/// may only lower the caller's `verified` tier (from a checked credential; `Public` without
/// one). Asking for more is refused, never silently lowered, so a caller learns its token
/// does not give what it wants.
///
/// ```
/// use tilewarm::access::{effective_tier, Access};
/// assert_eq!(effective_tier(Access::Agent, Access::Registered), Ok(Access::Registered));
/// let e = effective_tier(Access::Public, Access::Agent).unwrap_err();
/// assert_eq!(
///     e.to_string(),
///     "access \"agent\" is above the tier the credential gives (\"public\"): ask for at most \"public\", or send a credential for a higher tier"
/// );
/// ```
pub fn effective_tier(verified: Access, asked: Access) -> Result<Access, AboveCredential> {
    if asked <= verified {
        Ok(asked)
    } else {
        Err(AboveCredential { asked, verified })
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Access {
    type Err = UnknownAccess;
    fn from_str(s: &str) -> Result<Access, UnknownAccess> {
        Access::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| UnknownAccess(s.chars().take(64).collect()))
    }
}

impl serde::Serialize for Access {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Access {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Access, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}
