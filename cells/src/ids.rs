//! Client-chosen identifiers: 1 to 64 characters from `[A-Za-z0-9._:-]`.
//!
//! Owns validation and compact storage of ids (up to 23 bytes inline, no allocation).
//! Never accepts an id that failed validation: every constructor checks.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

use compact_str::CompactString;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest id accepted, in bytes.
pub const ID_BYTES_MAX: usize = 64;

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("id is empty")]
    Empty,
    #[error("id is {len} bytes long; at most {ID_BYTES_MAX} are allowed")]
    TooLong { len: usize },
    #[error("id contains {character:?}; only [A-Za-z0-9._:-] are allowed")]
    InvalidCharacter { character: char },
}

/// A validated identifier. Cheap to clone for short ids (inline storage).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Id(CompactString);

/// The id's bytes, in one write: an id is a key of several maps on a transfer's way, and a
/// `str`'s hash writes a terminator byte after the bytes, a second mixing step. Equal ids
/// write equal bytes; a key that is a tuple with an id in it (not the last field) may
/// collide more often, never compare wrongly.
impl Hash for Id {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.0.as_bytes());
    }
}

impl Id {
    /// Validates and stores `text`.
    pub fn new(text: &str) -> Result<Self, IdError> {
        if text.is_empty() {
            return Err(IdError::Empty);
        }
        if text.len() > ID_BYTES_MAX {
            return Err(IdError::TooLong { len: text.len() });
        }
        if let Some(at) = text.bytes().position(|byte| !ID_BYTES[usize::from(byte)]) {
            // Every byte before `at` is ASCII, so `at` starts the offending character.
            let character = text[at..]
                .chars()
                .next()
                .expect("a character starts at `at`");
            return Err(IdError::InvalidCharacter { character });
        }
        Ok(Id(CompactString::new(text)))
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

/// Which bytes an id may hold (`[A-Za-z0-9._:-]`; every other byte, and every byte of a
/// multi-byte character, is refused). A table: ids are validated for every command decoded.
const ID_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        let c = byte as u8;
        table[byte] = c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b':' | b'-');
        byte += 1;
    }
    table
};

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Id);

        impl $name {
            pub fn new(text: &str) -> Result<Self, IdError> {
                Id::new(text).map($name)
            }
            pub fn as_str(&self) -> &str {
                self.0.as_str()
            }
        }
        impl FromStr for $name {
            type Err = IdError;
            fn from_str(text: &str) -> Result<Self, IdError> {
                Self::new(text)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.as_str())
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                Self::new(&text).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// The unit of placement: every account and device belongs to one user.
    UserId
);
id_type!(
    /// An account, chosen by the client at creation.
    AccountId
);
id_type!(
    /// A transfer, chosen by the client; applied at most once, ever (INV-3).
    TransferId
);
id_type!(
    /// A hold, chosen by the client; applied at most once, ever (INV-3).
    HoldId
);
id_type!(
    /// A datacenter (DC): a failure domain that hosts cell instances (`dc-a`).
    DcId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_alphabet() {
        assert!(AccountId::new("Az09._:-").is_ok());
        assert!(AccountId::new(&"a".repeat(64)).is_ok());
    }

    #[test]
    fn rejects_bad_ids_with_typed_errors() {
        assert_eq!(AccountId::new(""), Err(IdError::Empty));
        assert_eq!(
            AccountId::new(&"a".repeat(65)),
            Err(IdError::TooLong { len: 65 })
        );
        assert_eq!(
            AccountId::new("a b"),
            Err(IdError::InvalidCharacter { character: ' ' })
        );
        assert_eq!(
            AccountId::new("é"),
            Err(IdError::InvalidCharacter { character: 'é' })
        );
    }

    #[test]
    fn the_byte_table_matches_the_alphabet_and_names_the_first_bad_character() {
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-');
        let characters = (0u32..0x800)
            .filter_map(char::from_u32)
            .chain(['€', '😀', '\u{FFFF}']);
        for c in characters {
            let text = format!("ab{c}c€");
            let expected = if allowed(c) { '€' } else { c };
            assert_eq!(
                Id::new(&text).map(|_| ()),
                Err(IdError::InvalidCharacter {
                    character: expected
                }),
                "{text:?}"
            );
            assert_eq!(Id::new(&format!("x{c}")).is_ok(), allowed(c), "{c:?}");
        }
    }

    proptest::proptest! {
        /// Equal ids hash alike however they were made (parsed, cloned, decoded; stored
        /// inline or on the heap), so maps keyed by ids find them; unequal ids stay apart.
        #[test]
        fn equal_ids_hash_alike_and_maps_keep_distinct_ids_apart(
            texts in proptest::collection::vec("[a-c0-9._:-]{1,64}", 1..40),
        ) {
            use std::hash::BuildHasher;
            let ids: Vec<AccountId> = texts.iter().map(|t| AccountId::new(t).unwrap()).collect();
            let hasher = foldhash::fast::RandomState::default();
            for (id, text) in ids.iter().zip(&texts) {
                let decoded: AccountId = serde_json::from_str(&format!("{text:?}")).unwrap();
                proptest::prop_assert_eq!(hasher.hash_one(&decoded), hasher.hash_one(id));
                proptest::prop_assert_eq!(hasher.hash_one(id.clone()), hasher.hash_one(id));
            }
            let distinct: std::collections::HashSet<&String> = texts.iter().collect();
            let set: foldhash::HashSet<&AccountId> = ids.iter().collect();
            proptest::prop_assert_eq!(set.len(), distinct.len());
            for text in &texts {
                proptest::prop_assert!(set.contains(&AccountId::new(text).unwrap()));
            }
        }
    }

    #[test]
    fn serde_validates() {
        let id: Result<TransferId, _> = serde_json::from_str("\"ok-1\"");
        assert!(id.is_ok());
        let bad: Result<TransferId, _> = serde_json::from_str("\"no/slash\"");
        assert!(bad.is_err());
    }
}
