//! How to reach a fleet's etcd: its endpoints and, where the cluster asks for them, TLS (the CA
//! that signed the members' certificates, a client certificate for `--client-cert-auth`) and an
//! etcd user whose role grants read-write on the fleet's prefix only (docs/fleet.md).

use std::path::{Path, PathBuf};
use std::time::Duration;

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};

use crate::{FleetError, Result};

/// Endpoints, TLS files and the etcd user, as configured (`[fleet]` or `rollout` flags).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EtcdAccess {
    /// Client URLs, all `http://` or all `https://`.
    pub endpoints: Vec<String>,
    /// The CA certificate (PEM) that signed the members' certificates: required for `https://`.
    pub ca: Option<PathBuf>,
    /// This client's certificate (PEM), with `key`.
    pub cert: Option<PathBuf>,
    /// The private key (PEM) of `cert`.
    pub key: Option<PathBuf>,
    /// The etcd user, with `password_file`.
    pub user: Option<String>,
    /// A file holding the user's password (a trailing newline is ignored).
    pub password_file: Option<PathBuf>,
}

impl EtcdAccess {
    /// What is wrong with these settings, in the words of `[fleet]`; `None` when they are usable.
    pub fn problem(&self) -> Option<String> {
        if self.endpoints.is_empty() {
            return Some("etcd lists no endpoint".into());
        }
        if let Some(url) = self.endpoints.iter().find(|u| !u.starts_with("http://") && !u.starts_with("https://")) {
            return Some(format!("etcd endpoint {url:?} is not http://HOST:PORT or https://HOST:PORT"));
        }
        let secure = self.endpoints.iter().filter(|u| u.starts_with("https://")).count();
        if secure != 0 && secure != self.endpoints.len() {
            return Some("etcd endpoints mix http:// and https://".into());
        }
        if secure > 0 && self.ca.is_none() {
            return Some("https:// endpoints need etcd_ca, the CA certificate (PEM) that signed the members'".into());
        }
        if secure == 0 && (self.ca.is_some() || self.cert.is_some()) {
            return Some("etcd_ca and etcd_cert are for https:// endpoints".into());
        }
        if self.cert.is_some() != self.key.is_some() {
            return Some("etcd_cert and etcd_key go together".into());
        }
        if self.user.is_some() != self.password_file.is_some() {
            return Some("etcd_user and etcd_password_file go together".into());
        }
        if let Some(user) = self.user.as_ref().filter(|u| u.is_empty() || u.contains(':')) {
            return Some(format!("etcd_user {user:?} is empty or holds ':'"));
        }
        if secure == 0 && self.user.is_some() {
            return Some("etcd_user over http:// would send its password in clear: use https:// endpoints".into());
        }
        None
    }

    /// The client's options: request and connect timeouts, the TLS files and the password read
    /// now (an unreadable file is named), the user's token refreshed when it expires.
    pub fn connect_options(&self, timeout: Duration) -> Result<ConnectOptions> {
        let mut options = ConnectOptions::new().with_connect_timeout(timeout).with_timeout(timeout);
        if let Some(ca) = &self.ca {
            let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(read(ca)?));
            if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            options = options.with_tls(tls);
        }
        if let (Some(user), Some(file)) = (&self.user, &self.password_file) {
            let password = String::from_utf8(read(file)?).map_err(|_| FleetError::Config {
                path: file.clone(),
                reason: "the etcd password is not UTF-8".into(),
            })?;
            let password = password.strip_suffix('\n').unwrap_or(&password).to_owned();
            options = options.with_user(user.clone(), password).with_auto_token_refresh(true);
        }
        Ok(options)
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|error| FleetError::Io { path: path.to_owned(), error })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_that_cannot_work_are_named() {
        let plain = EtcdAccess { endpoints: vec!["http://e:2379".into()], ..EtcdAccess::default() };
        assert_eq!(plain.problem(), None);
        let secure = EtcdAccess {
            endpoints: vec!["https://e1:2379".into(), "https://e2:2379".into()],
            ca: Some("/etc/osdeploy/etcd/ca.pem".into()),
            cert: Some("/etc/osdeploy/etcd/node.pem".into()),
            key: Some("/etc/osdeploy/etcd/node-key.pem".into()),
            user: Some("osdeploy".into()),
            password_file: Some("/etc/osdeploy/etcd/password".into()),
        };
        assert_eq!(secure.problem(), None);
        let cases = [
            (EtcdAccess { endpoints: vec![], ..plain.clone() }, "no endpoint"),
            (EtcdAccess { endpoints: vec!["e:2379".into()], ..plain.clone() }, "is not http://"),
            (EtcdAccess { endpoints: vec!["https://a".into(), "http://b".into()], ..secure.clone() }, "mix"),
            (EtcdAccess { ca: None, ..secure.clone() }, "need etcd_ca"),
            (EtcdAccess { key: None, ..secure.clone() }, "go together"),
            (EtcdAccess { password_file: None, ..secure.clone() }, "go together"),
            (EtcdAccess { user: Some("a:b".into()), ..secure.clone() }, "holds ':'"),
            (EtcdAccess { ca: secure.ca.clone(), ..plain.clone() }, "are for https://"),
            (EtcdAccess { user: Some("u".into()), password_file: Some("/p".into()), ..plain.clone() }, "in clear"),
        ];
        for (access, expected) in cases {
            let problem = access.problem().unwrap_or_default();
            assert!(problem.contains(expected), "{access:?}: {problem:?} lacks {expected:?}");
        }
    }

    #[test]
    fn a_missing_file_is_named() {
        let access = EtcdAccess {
            endpoints: vec!["https://e:2379".into()],
            ca: Some("/nonexistent/ca.pem".into()),
            ..EtcdAccess::default()
        };
        let error = access.connect_options(Duration::from_secs(1)).err().unwrap().to_string();
        assert!(error.contains("/nonexistent/ca.pem"), "{error}");
    }
}
