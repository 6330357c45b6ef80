//! The network options of commands that fetch from a remote (pull, mirror, delta --remote).

use osdeploy_transport::client::HttpOptions;

/// Network options of commands that fetch from a remote.
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct HttpArgs {
    /// Abandon a connection that delivers nothing for this many seconds (the next URL is tried)
    /// [default: 30, or pull_timeout in config.toml for pull].
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u64>,
    /// Use at most this many bytes per second (suffixes k, M, G: powers of 1024), for links that
    /// must not be saturated [default: unlimited, or pull_limit_rate in config.toml for pull].
    #[arg(long, value_name = "BYTES/s", value_parser = parse_rate)]
    pub limit_rate: Option<u64>,
}

impl HttpArgs {
    /// The transport's options: these arguments where given, the defaults otherwise.
    pub fn options(self) -> HttpOptions {
        self.options_over(HttpOptions::default())
    }

    /// The transport's options: these arguments where given, `defaults` otherwise.
    pub fn options_over(self, defaults: HttpOptions) -> HttpOptions {
        HttpOptions {
            timeout: self.timeout.map_or(defaults.timeout, |s| std::time::Duration::from_secs(s.max(1))),
            limit_rate: self.limit_rate.or(defaults.limit_rate),
        }
    }
}

/// A size: "64M", "1G" or plain bytes.
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    parse_rate(text).map_err(|_| format!("{text:?} is not a positive size such as 64M, 1G or 1048576"))
}

/// "500k", "10M", "1G" or plain bytes.
pub(crate) fn parse_rate(text: &str) -> Result<u64, String> {
    let (digits, shift) = match text.trim().to_ascii_lowercase().as_str() {
        t if t.ends_with('k') => (t[..t.len() - 1].to_string(), 10),
        t if t.ends_with('m') => (t[..t.len() - 1].to_string(), 20),
        t if t.ends_with('g') => (t[..t.len() - 1].to_string(), 30),
        t => (t.to_string(), 0),
    };
    match digits.parse::<u64>() {
        Ok(n) if n > 0 => n.checked_mul(1 << shift).ok_or_else(|| format!("{text} is too large")),
        _ => Err(format!("{text:?} is not a positive byte rate such as 500k, 10M or 1048576")),
    }
}
