//! Client settings: one struct, defaults in one place, and a `validate()` that says exactly
//! what is wrong.

use std::time::Duration;

use crate::tls::TlsFiles;
use crate::ClientError;

/// Address the tools use when neither `--addr` nor [`ADDR_ENV`] is given: the default port of
/// a node on this machine.
pub const DEFAULT_ADDR: &str = "127.0.0.1:7379";

/// Environment variable the tools read the node list from, so a shell can point every command
/// at one cluster once.
pub const ADDR_ENV: &str = "STRSTORE_ADDR";

/// Default overall deadline of one request, retries included. Long enough to ride out a node
/// restart or a view change; short enough that a person at a prompt is not left waiting.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Default time to open a TCP connection and complete the hello. A node on a healthy network
/// answers in milliseconds, so after this long we assume it is down and try the next one.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Default cap on the time one node gets to answer a request before the client tries the next
/// node with the same `(client, seq)`. Each attempt gets its share of the deadline (see
/// [`ClientConfig::attempt_timeout`]); the cap only bites with long deadlines, and 5 s keeps
/// a node that hangs from ever costing more than it did when this was the attempt's whole
/// time.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// Least time one node gets to answer, whatever the share of the deadline comes to. A healthy
/// node answers a write in milliseconds (one round trip to a quorum and an fsync), tens under
/// load, so half a second abandons no node that works; and it is short enough that a request
/// with a one-second deadline still reaches a second node.
pub const MIN_ATTEMPT_TIMEOUT: Duration = Duration::from_millis(500);

/// Default largest reply frame: a `get` returns the whole string, which a node caps at 64 MiB
/// by default, plus 1 MiB of slack for framing and for nodes configured a little higher.
pub const DEFAULT_MAX_REPLY_BYTES: usize = (64 << 20) + (1 << 20);

/// Smallest frame limit `validate` accepts: below this even short replies would be refused,
/// which is a configuration mistake rather than a useful limit.
const MIN_REPLY_BYTES: usize = 1 << 10;

/// How a [`Client`](crate::Client) finds and talks to the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// Nodes to try, as `HOST:PORT`. Any member can serve any request. A request starts at the
    /// node that answered most recently and moves on by how recently the others answered; the
    /// list order only decides among nodes never heard from (so the first is tried first).
    pub addrs: Vec<String>,
    /// Overall deadline of one request, retries and backoff included. When it passes the
    /// caller gets [`ClientError::Timeout`] or [`ClientError::NoNodeReachable`].
    pub request_timeout: Duration,
    /// Time to connect and complete the hello with one node before moving on to the next.
    pub connect_timeout: Duration,
    /// Most time one node gets to answer one request before the same request is sent to the
    /// next node. Each attempt gets an equal share of what remains of `request_timeout` among
    /// the nodes its round has not tried yet (at least 0.5 s), so that a node which takes the
    /// request and never answers leaves the others time; this caps that share, and wins over
    /// the 0.5 s floor when set lower. Never more than what remains of `request_timeout`.
    pub attempt_timeout: Duration,
    /// Largest frame accepted from a node (and sent to one): bounds the memory a reply can
    /// take. Must exceed the largest string a `get` may return.
    pub max_reply_bytes: usize,
    /// TLS towards the nodes, or `None` for plaintext. The files are read when the
    /// [`Client`](crate::Client) is created.
    pub tls: Option<TlsFiles>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            addrs: vec![DEFAULT_ADDR.to_string()],
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
            max_reply_bytes: DEFAULT_MAX_REPLY_BYTES,
            tls: None,
        }
    }
}

impl ClientConfig {
    /// The default settings, talking to `addrs`.
    pub fn with_addrs(addrs: Vec<String>) -> Self {
        Self { addrs, ..Self::default() }
    }

    /// Checks every setting and names the first one that cannot work.
    pub fn validate(&self) -> Result<(), ClientError> {
        if self.addrs.is_empty() {
            return Err(config_error("no node addresses given"));
        }
        for addr in &self.addrs {
            check_addr(addr)?;
            if self.tls.is_some() {
                crate::tls::server_name(addr)?;
            }
        }
        for (name, value) in [
            ("request_timeout", self.request_timeout),
            ("connect_timeout", self.connect_timeout),
            ("attempt_timeout", self.attempt_timeout),
        ] {
            if value.is_zero() {
                return Err(config_error(format!("{name} must be greater than zero")));
            }
        }
        // The frame header is a u32, so larger limits could never be reached anyway.
        let max = u32::MAX as usize;
        if !(MIN_REPLY_BYTES..=max).contains(&self.max_reply_bytes) {
            return Err(config_error(format!(
                "max_reply_bytes must be between {MIN_REPLY_BYTES} and {max}, not {}",
                self.max_reply_bytes
            )));
        }
        Ok(())
    }
}

/// Parses a comma-separated node list such as `10.0.0.1:7379, 10.0.0.2:7379`. Blanks around
/// entries and empty entries (a trailing comma) are ignored; each entry must be `HOST:PORT`.
pub fn parse_addrs(list: &str) -> Result<Vec<String>, ClientError> {
    let addrs: Vec<String> =
        list.split(',').map(str::trim).filter(|a| !a.is_empty()).map(String::from).collect();
    if addrs.is_empty() {
        return Err(config_error(format!("no node addresses in {list:?}; expected HOST:PORT")));
    }
    for addr in &addrs {
        check_addr(addr)?;
    }
    Ok(addrs)
}

/// Checks the shape of one `HOST:PORT` (IPv6 hosts in brackets); whether the host resolves is
/// found out when connecting.
fn check_addr(addr: &str) -> Result<(), ClientError> {
    let bad =
        |why: &str| config_error(format!("bad node address {addr:?}: {why}; expected HOST:PORT"));
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(bad("no host"));
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(bad("port must be a number from 1 to 65535")),
        Ok(_) => Ok(()),
    }
}

fn config_error(message: impl Into<String>) -> ClientError {
    ClientError::Config(message.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists_with_blanks_and_trailing_commas() {
        assert_eq!(parse_addrs("127.0.0.1:7379").unwrap(), ["127.0.0.1:7379"]);
        assert_eq!(
            parse_addrs(" a:1 ,b:2,, [::1]:3 ,").unwrap(),
            ["a:1", "b:2", "[::1]:3"],
            "order is kept; blanks and empty entries are dropped"
        );
    }

    #[test]
    fn rejects_malformed_addresses() {
        for (list, why) in [
            ("", "no node addresses"),
            (" , ", "no node addresses"),
            ("localhost", "no port"),
            (":7379", "no host"),
            ("host:", "port must be"),
            ("host:0", "port must be"),
            ("host:70000", "port must be"),
            ("a:1,b", "\"b\": no port"),
        ] {
            let err = parse_addrs(list).unwrap_err().to_string();
            assert!(err.contains(why), "{list:?}: {err}");
        }
    }

    #[test]
    fn default_config_is_valid() {
        let config = ClientConfig::default();
        config.validate().unwrap();
        assert_eq!(config.addrs, [DEFAULT_ADDR]);
        assert_eq!(config.max_reply_bytes, 65 << 20);
    }

    #[test]
    fn validate_names_the_bad_setting() {
        type Breaker = fn(&mut ClientConfig);
        let cases: [(Breaker, &str); 4] = [
            (|c| c.addrs.clear(), "no node addresses"),
            (|c| c.request_timeout = Duration::ZERO, "request_timeout"),
            (|c| c.attempt_timeout = Duration::ZERO, "attempt_timeout"),
            (|c| c.max_reply_bytes = 10, "max_reply_bytes"),
        ];
        for (break_it, name) in cases {
            let mut config = ClientConfig::default();
            break_it(&mut config);
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(name), "{err}");
        }
    }
}
