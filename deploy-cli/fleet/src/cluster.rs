//! The etcd side of a fleet. Every key lives below a prefix (`/osdeploy` by default), so that
//! several fleets share one etcd:
//!
//! ```text
//! PREFIX/nodes/NODE                      the node's registration (its agent's lease: gone when the agent dies)
//! PREFIX/halt                            the halt switch: while present, no node starts an update
//! PREFIX/rollouts/COMMIT/started         when the first node saw the commit
//! PREFIX/rollouts/COMMIT/policy          the rollout policy that node found
//! PREFIX/rollouts/COMMIT/nodes/NODE      each node's report: taking, updated, health-failed, rolled-back
//! PREFIX/rollouts/COMMIT/paused          an operator's pause of this commit
//! PREFIX/rollouts/COMMIT/aborted         an operator's abort: no node takes this commit
//! PREFIX/rollouts/COMMIT/forgiven        failures an operator's resume forgave (`forget` removes a
//!                                        silent node's report instead)
//! PREFIX/reboot/GROUP/max                reboot slots of the group (1 when absent)
//! PREFIX/reboot/GROUP/holders/NODE       the reboot queue (the node's reboot lease); the first MAX by
//!                                        creation hold a slot
//! ```
//!
//! The reboot semaphore is a queue ordered by etcd's creation revision: a node enqueues once (a
//! restarted agent finds its key and keeps its place), holds a slot while it is among the first
//! `max`, and leaves by deleting its key. The key is attached to a lease that the node keeps
//! alive, also across its own reboot (the lease's TTL covers a reboot): a node that dies leaves
//! the queue when its lease expires, so nobody blocks the fleet for longer than the TTL.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp};
use osdeploy_store::CommitId;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::access::EtcdAccess;
use crate::policy::{RolloutPolicy, Wave};
use crate::{FleetError, Result};

/// Attempts after the first when a request finds its etcd member unreachable.
const RETRIES: u32 = 4;

/// A node's registration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The node id.
    pub node: String,
    /// Its reboot group.
    pub group: String,
    /// The branch it follows (`REMOTE/BRANCH`).
    pub branch: String,
    /// The commit it runs.
    pub booted: Option<CommitId>,
    /// What its agent is doing.
    pub doing: String,
    /// When it registered or last changed (seconds since the epoch).
    pub at: i64,
}

/// How a node's update went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// It switched and waits for its reboot.
    Taking,
    /// It booted the release and its health checks passed.
    Updated,
    /// Its health checks failed on the release; it is going back.
    HealthFailed,
    /// It runs the previous release again.
    RolledBack,
}

impl Outcome {
    /// Counts against the policy's failure threshold.
    pub fn is_failure(self) -> bool {
        matches!(self, Outcome::HealthFailed | Outcome::RolledBack)
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Outcome::Taking => "taking",
            Outcome::Updated => "updated",
            Outcome::HealthFailed => "health-failed",
            Outcome::RolledBack => "rolled-back",
        })
    }
}

/// A node's report on one commit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The outcome.
    pub outcome: Outcome,
    /// The node's wave.
    pub wave: Wave,
    /// When (seconds since the epoch).
    pub at: i64,
    /// Details for people.
    pub message: String,
}

/// An operator's or a node's mark: a pause, an abort, the halt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// The commit concerned.
    pub commit: CommitId,
    /// Why.
    pub reason: String,
    /// When (seconds since the epoch).
    pub at: i64,
}

/// A place in a group's reboot queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueEntry {
    /// The node.
    pub node: String,
    /// The commit it reboots into.
    pub commit: CommitId,
    /// When it joined the queue.
    pub since: i64,
    /// It holds a slot (it is among the first `max`).
    #[serde(default)]
    pub holds: bool,
}

/// Everything etcd knows about one commit's rollout, read in one pass.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RolloutView {
    /// When the first node saw the commit.
    pub started: Option<i64>,
    /// The policy the first node found.
    pub policy: Option<RolloutPolicy>,
    /// Every node's report, by node.
    pub reports: BTreeMap<String, Report>,
    /// An operator's pause.
    pub paused: Option<Mark>,
    /// An operator's abort.
    pub aborted: Option<Mark>,
    /// Failures a resume forgave.
    pub forgiven: u32,
    /// The fleet's halt switch.
    pub halt: Option<Mark>,
    /// Live nodes.
    pub nodes: Vec<NodeRecord>,
}

impl RolloutView {
    /// Failures counted against the threshold (reports of failure minus what a resume forgave).
    pub fn failures(&self) -> u32 {
        let all = self.reports.values().filter(|r| r.outcome.is_failure()).count() as u32;
        all.saturating_sub(self.forgiven)
    }
}

/// A connection to the fleet's etcd.
#[derive(Clone)]
pub struct Cluster {
    client: Client,
    prefix: String,
    endpoints: String,
    timeout: Duration,
}

/// Seconds since the epoch, now.
pub fn now() -> i64 {
    osdeploy_deploy::deploy::state::now()
}

impl Cluster {
    /// Connects to etcd as `access` says; keys live below `prefix`. Requests fail after `timeout`.
    pub async fn connect(access: &EtcdAccess, prefix: &str, timeout: Duration) -> Result<Cluster> {
        let joined = access.endpoints.join(",");
        let options = access.connect_options(timeout)?;
        let client = Client::connect(&access.endpoints, Some(options)).await.map_err(|e| {
            let what = match tls_hint(&e.to_string(), access) {
                Some(hint) => format!("connecting ({hint})"),
                None => "connecting".into(),
            };
            FleetError::Etcd { endpoints: joined.clone(), what, error: Box::new(e) }
        })?;
        Ok(Cluster { client, prefix: prefix.trim_end_matches('/').to_owned(), endpoints: joined, timeout })
    }

    fn key(&self, rest: &str) -> String {
        format!("{}/{rest}", self.prefix)
    }

    fn etcd(&self, what: impl Into<String>) -> impl FnOnce(etcd_client::Error) -> FleetError + '_ {
        let what = what.into();
        move |e| FleetError::Etcd { endpoints: self.endpoints.clone(), what, error: Box::new(e) }
    }

    /// Runs `op` with a client; a request that found its member unreachable (a dead member of
    /// the cluster: the client does not route around it by itself) is tried again.
    async fn retry<T, Fut>(&self, what: String, mut op: impl FnMut(Client) -> Fut) -> Result<T>
    where
        Fut: std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let mut attempt = 0;
        loop {
            match op(self.client.clone()).await {
                Ok(value) => return Ok(value),
                Err(etcd_client::Error::GRpcStatus(status))
                    if status.code() == tonic::Code::Unavailable && attempt < RETRIES =>
                {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
                }
                Err(e) => return Err(self.etcd(what)(e)),
            }
        }
    }

    /// A range read of `key` (with `options`).
    async fn range(&self, key: &str, options: Option<GetOptions>) -> Result<etcd_client::GetResponse> {
        self.retry(format!("reading {key}"), |mut client| {
            let (key, options) = (key.to_owned(), options.clone());
            async move { client.get(key, options).await }
        })
        .await
    }

    async fn get_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        let response = self.range(key, None).await?;
        response.kvs().first().map(|kv| decode(key, kv.value())).transpose()
    }

    async fn put_json(&self, key: &str, value: &impl Serialize, lease: Option<i64>) -> Result<()> {
        let bytes = serde_json::to_vec(value).expect("fleet records serialise");
        let options = lease.map(|id| PutOptions::new().with_lease(id));
        self.retry(format!("writing {key}"), |mut client| {
            let (key, bytes, options) = (key.to_owned(), bytes.clone(), options.clone());
            async move { client.put(key, bytes, options).await }
        })
        .await?;
        Ok(())
    }

    /// Puts `value` at `key` unless the key exists; true when it was created.
    async fn create_json(&self, key: &str, value: &impl Serialize, lease: Option<i64>) -> Result<bool> {
        let bytes = serde_json::to_vec(value).expect("fleet records serialise");
        let options = lease.map(|id| PutOptions::new().with_lease(id));
        let response = self
            .retry(format!("creating {key}"), |mut client| {
                let txn = Txn::new().when([Compare::create_revision(key, CompareOp::Equal, 0)]).and_then([TxnOp::put(
                    key,
                    bytes.clone(),
                    options.clone(),
                )]);
                async move { client.txn(txn).await }
            })
            .await?;
        Ok(response.succeeded())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.retry(format!("deleting {key}"), |mut client| {
            let key = key.to_owned();
            async move { client.delete(key, None).await }
        })
        .await?;
        Ok(())
    }

    /// A new lease of `ttl` seconds.
    pub async fn grant_lease(&self, ttl: u64) -> Result<i64> {
        let response = self
            .retry("granting a lease".into(), |mut client| async move { client.lease_grant(ttl as i64, None).await })
            .await?;
        Ok(response.id())
    }

    /// Renews lease `id`; false when it has expired (or was revoked).
    pub async fn renew(&self, id: i64) -> Result<bool> {
        let what = format!("renewing lease {id:x}");
        let renewal = async {
            let mut client = self.client.clone();
            let (mut keeper, mut stream) = client.lease_keep_alive(id).await?;
            keeper.keep_alive().await?;
            stream.message().await
        };
        // A keep-alive is a stream, which the client's request timeout does not bound: a member
        // that died under it would hang the renewal.
        match tokio::time::timeout(self.timeout, renewal).await {
            Ok(Err(etcd_client::Error::LeaseKeepAliveError(e))) if e.contains("not found") => Ok(false),
            Ok(response) => Ok(response.map_err(self.etcd(what))?.is_some_and(|r| r.ttl() > 0)),
            Err(_) => Err(FleetError::EtcdTimeout { endpoints: self.endpoints.clone(), what, after: self.timeout }),
        }
    }

    /// Ends lease `id` and removes its keys.
    pub async fn revoke(&self, id: i64) -> Result<()> {
        match self
            .retry(format!("revoking lease {id:x}"), |mut client| async move { client.lease_revoke(id).await })
            .await
        {
            Ok(_) => Ok(()),
            // Already expired: its keys are gone, which is what was asked.
            Err(FleetError::Etcd { error, .. }) if error.to_string().contains("not found") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Registers (or updates) a node under its agent's lease; false when the lease has expired
    /// (a new one is needed).
    pub async fn register(&self, record: &NodeRecord, lease: i64) -> Result<bool> {
        let key = self.key(&format!("nodes/{}", record.node));
        match self.put_json(&key, record, Some(lease)).await {
            // etcd: "requested lease not found".
            Err(FleetError::Etcd { error, .. }) if error.to_string().contains("lease not found") => Ok(false),
            other => other.map(|()| true),
        }
    }

    /// The registered (live) nodes.
    pub async fn nodes(&self) -> Result<Vec<NodeRecord>> {
        let prefix = self.key("nodes/");
        self.list(&prefix).await.map(|entries| entries.into_iter().map(|(_, v)| v).collect())
    }

    /// Every value below `prefix`, with the rest of its key.
    async fn list<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<(String, T)>> {
        let response = self.range(prefix, Some(GetOptions::new().with_prefix())).await?;
        response
            .kvs()
            .iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                let value = decode(&key, kv.value())?;
                Ok((key[prefix.len()..].to_owned(), value))
            })
            .collect()
    }

    fn rollout_key(&self, commit: &CommitId, rest: &str) -> String {
        self.key(&format!("rollouts/{commit}/{rest}"))
    }

    /// Records when the rollout of `policy.commit` started and under which policy (the first
    /// caller's record wins, so `rollout status` shows every node's wave).
    pub async fn mark_started(&self, policy: &RolloutPolicy) -> Result<()> {
        let key = self.rollout_key(&policy.commit, "started");
        if self.create_json(&key, &now(), None).await? {
            let key = self.rollout_key(&policy.commit, "policy");
            self.put_json(&key, policy, None).await?;
        }
        Ok(())
    }

    /// Records a node's report on `commit`.
    pub async fn report(&self, commit: &CommitId, node: &str, report: &Report) -> Result<()> {
        let key = self.rollout_key(commit, &format!("nodes/{node}"));
        self.put_json(&key, report, None).await
    }

    /// Everything about the rollout of `commit`: three range reads.
    pub async fn rollout(&self, commit: &CommitId) -> Result<RolloutView> {
        let prefix = self.rollout_key(commit, "");
        let response = self.range(&prefix, Some(GetOptions::new().with_prefix())).await?;
        let mut view = RolloutView::default();
        for kv in response.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let rest = &key[prefix.len()..];
            match rest {
                "started" => view.started = Some(decode(&key, kv.value())?),
                "policy" => view.policy = Some(decode(&key, kv.value())?),
                "paused" => view.paused = Some(decode(&key, kv.value())?),
                "aborted" => view.aborted = Some(decode(&key, kv.value())?),
                "forgiven" => view.forgiven = decode(&key, kv.value())?,
                _ => {
                    if let Some(node) = rest.strip_prefix("nodes/") {
                        view.reports.insert(node.to_owned(), decode(&key, kv.value())?);
                    }
                }
            }
        }
        view.halt = self.halt_mark().await?;
        view.nodes = self.nodes().await?;
        Ok(view)
    }

    /// The halt switch, if set.
    pub async fn halt_mark(&self) -> Result<Option<Mark>> {
        let key = self.key("halt");
        self.get_json(&key).await
    }

    /// Sets the halt switch (unless set already); true when this call set it.
    pub async fn halt(&self, mark: &Mark) -> Result<bool> {
        let key = self.key("halt");
        self.create_json(&key, mark, None).await
    }

    /// Pauses the rollout of `commit`.
    pub async fn pause(&self, mark: &Mark) -> Result<()> {
        let key = self.rollout_key(&mark.commit, "paused");
        self.put_json(&key, mark, None).await
    }

    /// Aborts the rollout of `commit`: no node takes it any more.
    pub async fn abort(&self, mark: &Mark) -> Result<()> {
        let key = self.rollout_key(&mark.commit, "aborted");
        self.put_json(&key, mark, None).await
    }

    /// Resumes: clears the halt switch and the pause of `commit`, and forgives the failures
    /// counted so far by `commit` and by the commit that set the halt. Returns the halt cleared.
    pub async fn resume(&self, commit: &CommitId) -> Result<Option<Mark>> {
        let halt = self.halt_mark().await?;
        // The commit that set the halt is forgiven too, or its next report would set it again.
        let mut forgive = vec![*commit];
        forgive.extend(halt.as_ref().map(|h| h.commit).filter(|c| c != commit));
        for commit in &forgive {
            let view = self.rollout(commit).await?;
            let failures = view.reports.values().filter(|r| r.outcome.is_failure()).count() as u32;
            let forgiven = self.rollout_key(commit, "forgiven");
            self.put_json(&forgiven, &failures, None).await?;
        }
        let paused = self.rollout_key(commit, "paused");
        self.delete(&paused).await?;
        let key = self.key("halt");
        self.delete(&key).await?;
        Ok(halt)
    }

    fn queue_prefix(&self, group: &str) -> String {
        self.key(&format!("reboot/{group}/holders/"))
    }

    /// The reboot slots of `group` (1 unless set).
    pub async fn reboot_slots(&self, group: &str) -> Result<u32> {
        let key = self.key(&format!("reboot/{group}/max"));
        Ok(self.get_json(&key).await?.unwrap_or(1))
    }

    /// Sets the reboot slots of `group`.
    pub async fn set_reboot_slots(&self, group: &str, slots: u32) -> Result<()> {
        let key = self.key(&format!("reboot/{group}/max"));
        self.put_json(&key, &slots, None).await
    }

    /// Puts `node` in the reboot queue of `group` under `lease`, unless it is there already
    /// (then it keeps its place).
    pub async fn enqueue(&self, group: &str, node: &str, commit: &CommitId, lease: i64) -> Result<()> {
        let key = format!("{}{node}", self.queue_prefix(group));
        let entry = QueueEntry { node: node.to_owned(), commit: *commit, since: now(), holds: false };
        self.create_json(&key, &entry, Some(lease)).await?;
        Ok(())
    }

    /// The reboot queue of `group`, oldest first, with who holds a slot.
    pub async fn queue(&self, group: &str) -> Result<Vec<QueueEntry>> {
        let prefix = self.queue_prefix(group);
        let slots = self.reboot_slots(group).await? as usize;
        let options = GetOptions::new().with_prefix().with_sort(SortTarget::Create, SortOrder::Ascend);
        let response = self.range(&prefix, Some(options)).await?;
        response
            .kvs()
            .iter()
            .enumerate()
            .map(|(rank, kv)| {
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                let mut entry: QueueEntry = decode(&key, kv.value())?;
                entry.holds = rank < slots;
                Ok(entry)
            })
            .collect()
    }

    /// Whether `node` holds a reboot slot of `group`; `None` when it is not in the queue (its
    /// lease expired).
    pub async fn holds(&self, group: &str, node: &str) -> Result<Option<bool>> {
        Ok(self.queue(group).await?.into_iter().find(|e| e.node == node).map(|e| e.holds))
    }

    /// Forgets `node` in the rollout of `commit`: it went silent in the middle of its update
    /// (reported `taking`, then its registration expired) and an operator judges it gone. Its
    /// report is removed, so the later waves stop waiting for it, and so are its places in the
    /// reboot queues, so its slot is free before its lease expires. Refused for a registered node
    /// and for any other report (failures are forgiven by `resume`). Returns the report removed
    /// and the groups whose queue it left.
    pub async fn forget(&self, commit: &CommitId, node: &str) -> Result<(Report, Vec<String>)> {
        let view = self.rollout(commit).await?;
        let refuse = |reason: String| FleetError::Refused { what: format!("forgetting {node} in {commit}"), reason };
        let Some(report) = view.reports.get(node) else {
            return Err(refuse("it has not reported on this commit".into()));
        };
        if view.nodes.iter().any(|n| n.node == node) {
            return Err(refuse("it is registered: its agent is alive and reports by itself".into()));
        }
        if report.outcome != Outcome::Taking {
            return Err(refuse(format!(
                "its report is {}: only a node silent in the middle of its update holds the waves back \
                 (failures are forgiven by `rollout resume`)",
                report.outcome
            )));
        }
        let queues = self.key("reboot/");
        let suffix = format!("/holders/{node}");
        let response = self.range(&queues, Some(GetOptions::new().with_prefix().with_keys_only())).await?;
        let mut groups = Vec::new();
        for kv in response.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            if let Some(group) = key.strip_suffix(&suffix).and_then(|k| k.strip_prefix(&queues)) {
                self.delete(&key).await?;
                groups.push(group.to_owned());
            }
        }
        self.delete(&self.rollout_key(commit, &format!("nodes/{node}"))).await?;
        Ok((report.clone(), groups))
    }

    /// Leaves the reboot queue of `group`.
    pub async fn dequeue(&self, group: &str, node: &str) -> Result<()> {
        let key = format!("{}{node}", self.queue_prefix(group));
        self.delete(&key).await
    }
}

/// What a TLS failure while connecting means for the settings, from the client's error text.
/// A member that wants a client certificate and gets none ends the handshake in one of several
/// ways (an alert, a reset, a closed connection), depending on timing: any failure to talk to a
/// reachable member over TLS without a certificate gets the hint.
fn tls_hint(error: &str, access: &EtcdAccess) -> Option<&'static str> {
    let unreachable =
        ["Connection refused", "timed out", "dns error", "failed to lookup"].iter().any(|e| error.contains(e));
    let answered = error.contains("etcdserver:");
    if error.contains("UnknownIssuer") {
        Some("etcd_ca did not sign the members' certificate")
    } else if error.contains("NotValidForName") {
        Some("the members' certificate does not name the host or address of the endpoint")
    } else if ["BadCertificate", "CertificateRequired", "UnknownCA"].iter().any(|alert| error.contains(alert))
        && access.cert.is_some()
    {
        Some("the members refused this client: etcd_cert and etcd_key must be a certificate of their CA")
    } else if access.ca.is_some() && access.cert.is_none() && !unreachable && !answered {
        Some("the members closed the connection: if they run with --client-cert-auth, they want etcd_cert and etcd_key")
    } else {
        None
    }
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| FleetError::BadValue { key: key.to_owned(), reason: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_failures_get_a_hint_naming_the_setting() {
        let access = |cert: bool| EtcdAccess {
            endpoints: vec!["https://e:2379".into()],
            ca: Some("ca.pem".into()),
            cert: cert.then(|| "node.pem".into()),
            key: cert.then(|| "node-key.pem".into()),
            ..EtcdAccess::default()
        };
        let without = access(false);
        // The three ways a member that wants a client certificate was seen to end the handshake.
        for error in [
            "transport error: received fatal alert: BadCertificate",
            "transport error: stream closed because of a broken pipe",
            "operation was canceled: connection closed",
        ] {
            assert!(tls_hint(error, &without).unwrap().contains("they want etcd_cert and etcd_key"), "{error}");
        }
        let unknown = "invalid peer certificate: UnknownIssuer";
        assert!(tls_hint(unknown, &without).unwrap().contains("etcd_ca did not sign"));
        assert!(tls_hint("fatal alert: BadCertificate", &access(true)).unwrap().contains("refused this client"));
        assert_eq!(tls_hint("tcp connect error: Connection refused", &without), None);
        assert_eq!(tls_hint("etcdserver: authentication failed", &without), None);
    }
}
