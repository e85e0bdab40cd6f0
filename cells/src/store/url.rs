//! Store addresses as given on the command line: `embedded:<dir>`, `remote:<host:port>`,
//! `fdb:<cluster-file>`.
//!
//! Owns: parsing and printing [`StoreUrl`] (printing gives back what parses to the same
//! value). Must never: open anything. Opening a store from a URL is the binary's job (the
//! remote client lives in `wire`, the FoundationDB backend behind the `fdb` feature).
//!
//! ```
//! use cells::store::url::StoreUrl;
//! let url: StoreUrl = "fdb:/etc/foundationdb/fdb.cluster".parse().unwrap();
//! assert_eq!(url, StoreUrl::Fdb("/etc/foundationdb/fdb.cluster".into()));
//! assert_eq!(url.to_string(), "fdb:/etc/foundationdb/fdb.cluster");
//! ```

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Longest store URL accepted, in bytes.
pub const STORE_URL_BYTES_MAX: usize = 4_096;

/// Where a process finds its store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// The embedded engine in this directory, opened by this process.
    Embedded(PathBuf),
    /// A `tessera store` process serving the embedded engine at this address.
    Remote { host: String, port: u16 },
    /// A FoundationDB cluster, reached through this cluster file.
    Fdb(PathBuf),
}

/// Why a store URL does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreUrlError {
    #[error("store URL of {len} bytes; at most {max} are allowed")]
    TooLong { len: usize, max: usize },
    #[error("store URL {url:?} has no scheme; expected embedded:<dir>, remote:<host:port> or fdb:<cluster-file>")]
    MissingScheme { url: String },
    #[error("unknown store scheme {scheme:?}; expected embedded, remote or fdb")]
    UnknownScheme { scheme: String },
    #[error("store URL {scheme}: needs a path after the colon")]
    EmptyPath { scheme: &'static str },
    #[error("store URL path contains a NUL byte")]
    NulInPath,
    #[error("remote store address {address:?} is not <host:port>")]
    BadAddress { address: String },
    #[error("remote store port {port:?} is not a number from 1 to 65535")]
    BadPort { port: String },
}

impl FromStr for StoreUrl {
    type Err = StoreUrlError;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        if url.len() > STORE_URL_BYTES_MAX {
            return Err(StoreUrlError::TooLong {
                len: url.len(),
                max: STORE_URL_BYTES_MAX,
            });
        }
        let Some((scheme, rest)) = url.split_once(':') else {
            return Err(StoreUrlError::MissingScheme {
                url: url.to_string(),
            });
        };
        match scheme {
            "embedded" => parse_path("embedded", rest).map(StoreUrl::Embedded),
            "fdb" => parse_path("fdb", rest).map(StoreUrl::Fdb),
            "remote" => parse_address(rest),
            _ => Err(StoreUrlError::UnknownScheme {
                scheme: scheme.to_string(),
            }),
        }
    }
}

fn parse_path(scheme: &'static str, path: &str) -> Result<PathBuf, StoreUrlError> {
    if path.is_empty() {
        return Err(StoreUrlError::EmptyPath { scheme });
    }
    if path.contains('\0') {
        return Err(StoreUrlError::NulInPath);
    }
    Ok(PathBuf::from(path))
}

/// `host:port`, with an IPv6 host in brackets (`[::1]:7000`).
fn parse_address(address: &str) -> Result<StoreUrl, StoreUrlError> {
    let bad = || StoreUrlError::BadAddress {
        address: address.to_string(),
    };
    let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
    let host = match host.strip_prefix('[') {
        Some(bracketed) => bracketed.strip_suffix(']').ok_or_else(bad)?,
        None if host.contains(':') => return Err(bad()),
        None => host,
    };
    let valid_host = !host.is_empty()
        && !host
            .chars()
            .any(|c| c.is_whitespace() || "/[]@".contains(c));
    if !valid_host {
        return Err(bad());
    }
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|port| *port != 0)
        .ok_or_else(|| StoreUrlError::BadPort {
            port: port.to_string(),
        })?;
    Ok(StoreUrl::Remote {
        host: host.to_string(),
        port,
    })
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreUrl::Embedded(dir) => write!(f, "embedded:{}", dir.display()),
            StoreUrl::Fdb(file) => write!(f, "fdb:{}", file.display()),
            StoreUrl::Remote { host, port } if host.contains(':') => {
                write!(f, "remote:[{host}]:{port}")
            }
            StoreUrl::Remote { host, port } => write!(f, "remote:{host}:{port}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<StoreUrl, StoreUrlError> {
        url.parse()
    }

    #[test]
    fn parses_each_scheme() {
        assert_eq!(
            parse("embedded:/var/lib/tessera").unwrap(),
            StoreUrl::Embedded("/var/lib/tessera".into())
        );
        assert_eq!(
            parse("embedded:data").unwrap(),
            StoreUrl::Embedded("data".into())
        );
        assert_eq!(
            parse("fdb:/etc/foundationdb/fdb.cluster").unwrap(),
            StoreUrl::Fdb("/etc/foundationdb/fdb.cluster".into())
        );
        let remote = StoreUrl::Remote {
            host: "127.0.0.1".into(),
            port: 7400,
        };
        assert_eq!(parse("remote:127.0.0.1:7400").unwrap(), remote);
        assert_eq!(
            parse("remote:store-a.internal:7400").unwrap(),
            StoreUrl::Remote {
                host: "store-a.internal".into(),
                port: 7400
            }
        );
        assert_eq!(
            parse("remote:[::1]:7400").unwrap(),
            StoreUrl::Remote {
                host: "::1".into(),
                port: 7400
            }
        );
    }

    #[test]
    fn display_round_trips() {
        for url in [
            "embedded:/var/lib/tessera",
            "embedded:relative/dir",
            "fdb:/etc/foundationdb/fdb.cluster",
            "fdb:C:/fdb.cluster",
            "remote:127.0.0.1:7400",
            "remote:[::1]:7400",
            "remote:store:1",
        ] {
            let parsed = parse(url).unwrap();
            assert_eq!(parsed.to_string(), url);
            assert_eq!(parse(&parsed.to_string()).unwrap(), parsed);
        }
    }

    #[test]
    fn rejects_bad_schemes() {
        assert!(matches!(
            parse("/var/lib/tessera"),
            Err(StoreUrlError::MissingScheme { .. })
        ));
        assert!(matches!(
            parse(""),
            Err(StoreUrlError::MissingScheme { .. })
        ));
        assert_eq!(
            parse("redis:localhost:6379"),
            Err(StoreUrlError::UnknownScheme {
                scheme: "redis".into()
            })
        );
        assert!(matches!(
            parse("FDB:/etc/fdb.cluster"),
            Err(StoreUrlError::UnknownScheme { .. })
        ));
    }

    #[test]
    fn rejects_bad_paths() {
        assert_eq!(
            parse("embedded:"),
            Err(StoreUrlError::EmptyPath { scheme: "embedded" })
        );
        assert_eq!(
            parse("fdb:"),
            Err(StoreUrlError::EmptyPath { scheme: "fdb" })
        );
        assert_eq!(parse("fdb:/etc/\0x"), Err(StoreUrlError::NulInPath));
        let long = format!("embedded:{}", "d".repeat(STORE_URL_BYTES_MAX));
        assert!(matches!(parse(&long), Err(StoreUrlError::TooLong { .. })));
    }

    #[test]
    fn rejects_bad_addresses() {
        for address in [
            "remote:",
            "remote:localhost",
            "remote::7400",
            "remote:::1:7400",
            "remote:[::1:7400",
            "remote:a b:7400",
            "remote:user@host:7400",
        ] {
            assert!(
                matches!(parse(address), Err(StoreUrlError::BadAddress { .. })),
                "{address}: {:?}",
                parse(address)
            );
        }
        for address in [
            "remote:host:0",
            "remote:host:65536",
            "remote:host:port",
            "remote:host:",
        ] {
            assert!(
                matches!(parse(address), Err(StoreUrlError::BadPort { .. })),
                "{address}: {:?}",
                parse(address)
            );
        }
    }
}
