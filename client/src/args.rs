//! Command-line value parsers shared by `strstore-cli` and `strstore-bench`.

use std::time::Duration;

use crate::{parse_addrs, ClientError};

/// A parsed `--addr` list (a newtype so clap keeps the whole list as one value).
#[derive(Clone, Debug)]
pub struct Addrs(pub Vec<String>);

/// Parses `HOST:PORT[,HOST:PORT...]` for clap.
pub fn parse_addr_list(list: &str) -> Result<Addrs, String> {
    parse_addrs(list).map(Addrs).map_err(|e| match e {
        ClientError::Config(message) => message,
        other => other.to_string(),
    })
}

/// Parses a positive number of seconds (fractions allowed).
pub fn parse_secs(text: &str) -> Result<Duration, String> {
    match parse_secs_or_zero(text)? {
        Duration::ZERO => Err(format!("must be a positive number of seconds, not {text}")),
        secs => Ok(secs),
    }
}

/// Parses a non-negative number of seconds (fractions allowed).
pub fn parse_secs_or_zero(text: &str) -> Result<Duration, String> {
    let secs: f64 = text.parse().map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !(secs.is_finite() && secs >= 0.0) {
        return Err(format!("must be a non-negative number of seconds, not {text}"));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_and_addresses_parse_or_say_why() {
        assert_eq!(parse_secs("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_secs("0").unwrap_err().contains("positive"));
        assert_eq!(parse_secs_or_zero("0"), Ok(Duration::ZERO));
        assert!(parse_secs("x").unwrap_err().contains("not a number"));
        assert_eq!(parse_addr_list("a:1,b:2").unwrap().0, vec!["a:1", "b:2"]);
        assert!(parse_addr_list("nohost").is_err());
    }
}
