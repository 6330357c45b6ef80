//! Rollout policies: how one release reaches the fleet. The origin publishes one per commit beside
//! the summary (`rollouts/<commit>.json`), signed with the repository's key
//! (`rollouts/<commit>.json.sig`, the format of every osdeploy signature file).
//!
//! A node finds its wave from (node id, commit) alone: a blake3 hash of both gives it a position
//! in [0, 1); canaries are the nodes named in the policy and those whose position is below the
//! canary fraction; wave `i` (from 1) holds the positions below `waves[i-1]` not taken earlier.
//! The same node lands in a different part of the fleet for every commit, so no node is always
//! first.

use ed25519_dalek::SigningKey;
use osdeploy_store::fsutil::atomic_write;
use osdeploy_store::{CommitId, Repo, layout};
use osdeploy_transport::TransportError;
use osdeploy_transport::client::Client;
use osdeploy_transport::remote::Remote;
use osdeploy_transport::sign::MAX_SIGNATURES;
use osdeploy_transport::summary::trusted_keys;
use serde::{Deserialize, Serialize};

use crate::FleetError;

/// The policy format this build writes and reads.
pub const POLICY_FORMAT: u32 = 1;

/// Policies larger than this are refused before they are parsed.
pub const MAX_POLICY_BYTES: u64 = 1 << 20;

/// What an operator writes (`osdeploy rollout publish --policy FILE`, TOML):
///
/// ```toml
/// canary_nodes = ["node-17"]   # by node id
/// canary_fraction = 0.01       # and/or a fraction of the fleet
/// waves = [0.1, 0.5, 1.0]      # cumulative fractions; the last is 1.0
/// soak_seconds = 1800          # quiet time after a wave before the next opens
/// failure_threshold = 2        # failed nodes that halt the rollout everywhere
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// Nodes that take the release first, by node id.
    #[serde(default)]
    pub canary_nodes: Vec<String>,
    /// The fraction of the fleet (0 to 1) that joins the named canaries.
    #[serde(default)]
    pub canary_fraction: f64,
    /// Cumulative fractions of the fleet, increasing, the last 1.0.
    #[serde(default = "all_at_once")]
    pub waves: Vec<f64>,
    /// Seconds a wave must run without failures before the next opens.
    #[serde(default)]
    pub soak_seconds: u64,
    /// Failed nodes (health checks failed or rolled back) that halt the rollout.
    #[serde(default = "one")]
    pub failure_threshold: u32,
}

fn all_at_once() -> Vec<f64> {
    vec![1.0]
}

fn one() -> u32 {
    1
}

impl Default for PolicySpec {
    /// No canaries, one wave, halted by the first failure: what a node does when its origin
    /// publishes no policy.
    fn default() -> Self {
        PolicySpec {
            canary_nodes: Vec::new(),
            canary_fraction: 0.0,
            waves: all_at_once(),
            soak_seconds: 0,
            failure_threshold: 1,
        }
    }
}

impl PolicySpec {
    /// Why the policy cannot be used, if it cannot.
    pub fn problem(&self) -> Option<String> {
        if !(0.0..=1.0).contains(&self.canary_fraction) {
            return Some(format!("canary_fraction {} is not between 0 and 1", self.canary_fraction));
        }
        if self.waves.is_empty() {
            return Some("waves is empty; use [1.0] for one wave".into());
        }
        if self.waves.windows(2).any(|w| w[0] >= w[1]) || self.waves.iter().any(|w| !(*w > 0.0 && *w <= 1.0)) {
            return Some(format!("waves {:?} are not increasing fractions in (0, 1]", self.waves));
        }
        if self.waves.last() != Some(&1.0) {
            return Some(format!("the last wave is {} but must be 1.0 (the whole fleet)", self.waves.last().unwrap()));
        }
        if self.failure_threshold == 0 {
            return Some("failure_threshold must be at least 1".into());
        }
        if let Some(name) = self.canary_nodes.iter().find(|n| !valid_node_id(n)) {
            return Some(format!("canary node {name:?} is not a node id"));
        }
        None
    }
}

/// A node id: 1 to 128 characters of letters, digits, `.`, `_`, `-` (it names etcd keys).
pub fn valid_node_id(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// A published policy: the spec bound to its commit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutPolicy {
    /// [`POLICY_FORMAT`].
    pub format: u32,
    /// The release this policy is for (a policy signed for one commit is refused for another).
    pub commit: CommitId,
    /// The rules.
    #[serde(flatten)]
    pub spec: PolicySpec,
}

/// Where a node stands in a rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Wave {
    /// Takes the release first.
    Canary,
    /// Wave `n` (1 is the first after the canaries).
    Wave(u32),
}

impl Wave {
    /// 0 for canaries, `n` for wave `n`: waves open in this order.
    pub fn rank(self) -> u32 {
        match self {
            Wave::Canary => 0,
            Wave::Wave(n) => n,
        }
    }
}

impl std::fmt::Display for Wave {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Wave::Canary => f.write_str("canary"),
            Wave::Wave(n) => write!(f, "wave {n}"),
        }
    }
}

/// The node's position in [0, 1) for `commit`: the first 8 bytes of blake3(commit ‖ node id).
pub fn position(node: &str, commit: &CommitId) -> f64 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(commit.to_string().as_bytes());
    hasher.update(b"\0");
    hasher.update(node.as_bytes());
    let bytes: [u8; 8] = hasher.finalize().as_bytes()[..8].try_into().expect("8 bytes");
    (u64::from_be_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

impl RolloutPolicy {
    /// The policy `spec` for `commit`, checked.
    pub fn new(commit: CommitId, spec: PolicySpec) -> Result<RolloutPolicy, FleetError> {
        if let Some(problem) = spec.problem() {
            return Err(FleetError::Policy { what: format!("the rollout policy for {commit}"), problem });
        }
        Ok(RolloutPolicy { format: POLICY_FORMAT, commit, spec })
    }

    /// The wave of node `node`.
    pub fn wave_of(&self, node: &str) -> Wave {
        let at = position(node, &self.commit);
        if self.spec.canary_nodes.iter().any(|n| n == node) || at < self.spec.canary_fraction {
            return Wave::Canary;
        }
        let index = self.spec.waves.iter().position(|w| at < *w).unwrap_or(self.spec.waves.len() - 1);
        Wave::Wave(index as u32 + 1)
    }

    /// The published bytes (what the signature covers).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("a policy serialises");
        bytes.push(b'\n');
        bytes
    }

    /// Parses published bytes; `what` names them in errors.
    pub fn parse(bytes: &[u8], what: &str) -> Result<RolloutPolicy, FleetError> {
        let bad = |problem: String| FleetError::Policy { what: what.to_owned(), problem };
        let policy: RolloutPolicy = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if policy.format != POLICY_FORMAT {
            return Err(bad(format!("format {} is not the supported format {POLICY_FORMAT}", policy.format)));
        }
        if let Some(problem) = policy.spec.problem() {
            return Err(bad(problem));
        }
        Ok(policy)
    }
}

/// Writes `policy` and its signature by `key` into the archive repository `repo` (the origin):
/// the policy first, then the signature, each replaced atomically.
pub fn publish(repo: &Repo, policy: &RolloutPolicy, key: &SigningKey) -> Result<(), FleetError> {
    let root = repo.path();
    let dir = root.join(layout::ROLLOUTS);
    std::fs::create_dir_all(&dir).map_err(|error| FleetError::Io { path: dir.clone(), error })?;
    let tmp = root.join(layout::TMP);
    let bytes = policy.to_bytes();
    let signature = format!("{}\n", osdeploy_transport::sign::signature_line(key, &bytes));
    let path = root.join(layout::rollout_policy(&policy.commit));
    atomic_write(&path, &tmp, &bytes)?;
    atomic_write(&root.join(layout::rollout_signature(&policy.commit)), &tmp, signature.as_bytes())?;
    Ok(())
}

/// Fetches the policy for `commit` from `remote`, checked against the remote's keys (unless the
/// remote is insecure). `None` when the origin published none.
pub async fn fetch(client: &Client, remote: &Remote, commit: &CommitId) -> Result<Option<RolloutPolicy>, FleetError> {
    let what = format!("the rollout policy of {commit} from remote {}", remote.name);
    let bytes = match client.get(&layout::rollout_policy(commit), MAX_POLICY_BYTES).await {
        Ok(bytes) => bytes,
        Err(e) if e.is_absent() => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if !remote.insecure {
        let signature = layout::rollout_signature(commit);
        let signatures = client.get(&signature, MAX_SIGNATURES).await.map_err(|e| match e {
            e if e.is_absent() => FleetError::Policy { what: what.clone(), problem: "is not signed".into() },
            e => e.into(),
        })?;
        if !osdeploy_transport::sign::verify(&bytes, &signatures, &trusted_keys(remote)?) {
            return Err(FleetError::Policy {
                what,
                problem: format!("is not signed by a key remote {} trusts", remote.name),
            });
        }
    }
    let policy = RolloutPolicy::parse(&bytes, &what)?;
    if policy.commit != *commit {
        return Err(FleetError::Policy {
            what,
            problem: format!("is the policy of another commit, {}", policy.commit),
        });
    }
    Ok(Some(policy))
}

impl From<TransportError> for FleetError {
    fn from(e: TransportError) -> Self {
        FleetError::Transport(Box::new(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use osdeploy_store::ObjectId;

    fn commit(n: u8) -> CommitId {
        CommitId(ObjectId::of(&[n]))
    }

    #[test]
    fn waves_are_deterministic_and_follow_the_fractions() {
        let spec = PolicySpec {
            canary_nodes: vec!["node-7".into()],
            canary_fraction: 0.05,
            waves: vec![0.25, 1.0],
            ..PolicySpec::default()
        };
        let policy = RolloutPolicy::new(commit(1), spec).unwrap();
        let nodes: Vec<String> = (0..10_000).map(|i| format!("node-{i}")).collect();
        let mut counts = [0usize; 3];
        for node in &nodes {
            let wave = policy.wave_of(node);
            assert_eq!(wave, policy.wave_of(node), "the same answer every time");
            counts[wave.rank() as usize] += 1;
        }
        assert_eq!(policy.wave_of("node-7"), Wave::Canary);
        // 5 % canaries, 20 % more in wave 1 (positions 0.05..0.25), the rest in wave 2.
        assert!((400..600).contains(&counts[0]), "{counts:?}");
        assert!((1_800..2_200).contains(&counts[1]), "{counts:?}");
        assert!((7_300..7_700).contains(&counts[2]), "{counts:?}");
        // Another commit shuffles the fleet: not the same canaries.
        let other = RolloutPolicy::new(commit(2), policy.spec.clone()).unwrap();
        let same = nodes.iter().filter(|n| policy.wave_of(n) == Wave::Canary && other.wave_of(n) == Wave::Canary);
        assert!(same.count() < 60);
    }

    #[test]
    fn bad_policies_are_refused_with_the_reason() {
        for (spec, expected) in [
            (PolicySpec { canary_fraction: 1.5, ..Default::default() }, "canary_fraction"),
            (PolicySpec { waves: vec![], ..Default::default() }, "empty"),
            (PolicySpec { waves: vec![0.5, 0.4, 1.0], ..Default::default() }, "increasing"),
            (PolicySpec { waves: vec![0.5], ..Default::default() }, "must be 1.0"),
            (PolicySpec { failure_threshold: 0, ..Default::default() }, "at least 1"),
            (PolicySpec { canary_nodes: vec!["a/b".into()], ..Default::default() }, "not a node id"),
        ] {
            let err = RolloutPolicy::new(commit(1), spec).unwrap_err().to_string();
            assert!(err.contains(expected) && err.contains(&commit(1).to_string()), "{err}");
        }
        let good = RolloutPolicy::new(commit(1), PolicySpec::default()).unwrap();
        let bytes = good.to_bytes();
        assert_eq!(RolloutPolicy::parse(&bytes, "p").unwrap(), good);
        let future = String::from_utf8(bytes).unwrap().replace("\"format\": 1", "\"format\": 9");
        assert!(RolloutPolicy::parse(future.as_bytes(), "p").unwrap_err().to_string().contains("format 9"));
    }
}
