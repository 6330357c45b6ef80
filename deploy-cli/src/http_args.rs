//! The network options of commands that fetch from a remote (pull, mirror, delta --remote).

use osdeploy_transport::client::HttpOptions;

/// Network options of commands that fetch from a remote.
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct HttpArgs {
    /// Abandon a connection that delivers nothing for this many seconds (the next URL is tried)
    /// [default: 30, or pull_timeout in config.toml for pull].
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: Option<u64>,
    /// Abandon a response slower than this many bytes per second over --speed-time (0: never;
    /// suffixes k, M, G) [default: 1024, or pull_speed_limit in config.toml for pull].
    #[arg(long, value_name = "BYTES/s", value_parser = parse_speed)]
    pub speed_limit: Option<u64>,
    /// The window --speed-limit is measured over [default: 30, or pull_speed_time for pull].
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub speed_time: Option<u64>,
    /// Abandon a response that kept the command waiting this many seconds in all (the rate
    /// limit's pauses do not count) [default: 3600, or pull_deadline for pull].
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub deadline: Option<u64>,
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
        let seconds = |given: Option<u64>, default| given.map_or(default, std::time::Duration::from_secs);
        HttpOptions {
            timeout: seconds(self.timeout, defaults.timeout),
            limit_rate: self.limit_rate.or(defaults.limit_rate),
            speed_limit: self.speed_limit.unwrap_or(defaults.speed_limit),
            speed_time: seconds(self.speed_time, defaults.speed_time),
            deadline: seconds(self.deadline, defaults.deadline),
            max_metadata: defaults.max_metadata,
            backoff: defaults.backoff,
        }
    }
}

/// A low-speed limit: a rate, or 0 for none.
fn parse_speed(text: &str) -> Result<u64, String> {
    if text.trim() == "0" { Ok(0) } else { parse_rate(text) }
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
