//! Whether a node may take a commit now: a pure function of the policy, what etcd says about the
//! rollout and the clock, so that every node decides the same way and a test can check each rule.
//!
//! The rules, in order:
//! 1. the halt switch stops every new update; an abort stops this commit for good; a pause stops
//!    it until resumed;
//! 2. when the failures reported for the commit reach the policy's threshold, the rollout halts;
//! 3. canaries go at once;
//! 4. a node of wave `n` goes when every live node of the same branch in an earlier wave has
//!    reported `updated` (or failed — failures are counted by rule 2) or, without any report,
//!    runs the commit already (installed with it); a node that reported `taking` has not shown
//!    that the release works until it reports again, even once it booted the commit; no node of an earlier wave is silent in the middle of its update (reported `taking`, then
//!    its registration expired), and the last of those reports is at least `soak_seconds` old
//!    (the rollout's start stands in when the earlier waves are empty).

use serde::Serialize;

use crate::cluster::{Outcome, RolloutView};
use crate::policy::{RolloutPolicy, Wave};

/// What a node may do with a commit now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "decision", rename_all = "kebab-case")]
pub enum Decision {
    /// Take it.
    Go {
        /// The node's wave.
        wave: Wave,
    },
    /// Not yet.
    Wait {
        /// The node's wave.
        wave: Wave,
        /// Why, for the log.
        reason: String,
    },
    /// The failures reached the threshold: set the halt switch and wait.
    Halt {
        /// Failures counted.
        failures: u32,
        /// The threshold.
        threshold: u32,
    },
    /// An operator aborted this commit: never take it.
    Never {
        /// Why.
        reason: String,
    },
}

/// Decides for node `node` following `branch` (`REMOTE/BRANCH`) at time `now`.
pub fn decide(policy: &RolloutPolicy, node: &str, branch: &str, view: &RolloutView, now: i64) -> Decision {
    let wave = policy.wave_of(node);
    if let Some(aborted) = &view.aborted {
        return Decision::Never { reason: format!("the rollout of {} was aborted: {}", policy.commit, aborted.reason) };
    }
    if let Some(halt) = &view.halt {
        let reason = format!(
            "the fleet's rollouts are halted (commit {}: {}); `osdeploy rollout resume`",
            halt.commit, halt.reason
        );
        return Decision::Wait { wave, reason };
    }
    if let Some(paused) = &view.paused {
        return Decision::Wait { wave, reason: format!("the rollout is paused: {}", paused.reason) };
    }
    let failures = view.failures();
    if failures >= policy.spec.failure_threshold {
        return Decision::Halt { failures, threshold: policy.spec.failure_threshold };
    }
    if wave == Wave::Canary {
        return Decision::Go { wave };
    }
    let earlier: Vec<&str> = view
        .nodes
        .iter()
        .filter(|n| n.node != node && n.branch == branch && policy.wave_of(&n.node).rank() < wave.rank())
        .map(|n| n.node.as_str())
        .collect();
    let runs_it = |n: &str| view.nodes.iter().any(|r| r.node == n && r.booted == Some(policy.commit));
    let mut pending: Vec<&str> = earlier
        .iter()
        .copied()
        .filter(|n| match view.reports.get(*n) {
            Some(report) => report.outcome == Outcome::Taking,
            None => !runs_it(n),
        })
        .collect();
    // A node of an earlier wave that went silent in the middle of its update (registration
    // expired: dead, or cut off from etcd by the release) holds the later waves back: it has
    // not shown that the release works.
    pending.extend(view.reports.iter().filter_map(|(n, r)| {
        let silent = r.outcome == Outcome::Taking && r.wave.rank() < wave.rank() && !earlier.contains(&n.as_str());
        (silent && n != node).then_some(n.as_str())
    }));
    if !pending.is_empty() {
        let reason = format!("{wave} waits for {} node(s) of earlier waves: {}", pending.len(), pending.join(", "));
        return Decision::Wait { wave, reason };
    }
    let done = earlier.iter().filter_map(|n| view.reports.get(*n)).map(|r| r.at).max();
    let Some(since) = done.or(view.started) else {
        return Decision::Wait { wave, reason: "the rollout has not started".into() };
    };
    let open_at = since + policy.spec.soak_seconds as i64;
    if now < open_at {
        return Decision::Wait { wave, reason: format!("{wave} opens after the soak, in {} s", open_at - now) };
    }
    Decision::Go { wave }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{Mark, NodeRecord, Report};
    use crate::policy::PolicySpec;
    use osdeploy_store::{CommitId, ObjectId};

    fn node(name: &str) -> NodeRecord {
        NodeRecord {
            node: name.into(),
            group: "g".into(),
            branch: "origin/stable".into(),
            booted: None,
            doing: String::new(),
            at: 0,
        }
    }

    fn report(outcome: Outcome, at: i64) -> Report {
        Report { outcome, wave: Wave::Canary, at, message: String::new() }
    }

    #[test]
    fn canaries_then_waves_after_the_soak_and_a_halt_on_failures() {
        let commit = CommitId(ObjectId::of(b"release"));
        let spec = PolicySpec {
            canary_nodes: vec!["n0".into()],
            waves: vec![0.5, 1.0],
            soak_seconds: 60,
            failure_threshold: 1,
            ..PolicySpec::default()
        };
        let policy = RolloutPolicy::new(commit, spec).unwrap();
        let names: Vec<String> = (0..40).map(|i| format!("n{i}")).collect();
        let mut view =
            RolloutView { started: Some(1000), nodes: names.iter().map(|n| node(n)).collect(), ..Default::default() };
        let branch = "origin/stable";
        let in_wave = |w: u32| names.iter().find(|n| policy.wave_of(n) == Wave::Wave(w)).unwrap().clone();
        let (first, second) = (in_wave(1), in_wave(2));
        assert_eq!(decide(&policy, "n0", branch, &view, 1000), Decision::Go { wave: Wave::Canary });
        let waits = decide(&policy, &first, branch, &view, 1000);
        assert!(matches!(&waits, Decision::Wait { reason, .. } if reason.contains("n0")), "{waits:?}");
        view.reports.insert("n0".into(), report(Outcome::Taking, 1010));
        assert!(matches!(decide(&policy, &first, branch, &view, 1010), Decision::Wait { .. }));
        view.reports.insert("n0".into(), report(Outcome::Updated, 1100));
        let soaking = decide(&policy, &first, branch, &view, 1130);
        assert!(matches!(&soaking, Decision::Wait { reason, .. } if reason.contains("in 30 s")), "{soaking:?}");
        assert_eq!(decide(&policy, &first, branch, &view, 1160), Decision::Go { wave: Wave::Wave(1) });
        // A canary that dies in the middle of its update holds the next waves back.
        let mut silent = view.clone();
        silent.nodes.retain(|n| n.node != "n0");
        silent.reports.insert("n0".into(), report(Outcome::Taking, 1100));
        let held = decide(&policy, &first, branch, &silent, 5000);
        assert!(matches!(&held, Decision::Wait { reason, .. } if reason.contains("n0")), "{held:?}");
        // A canary that booted the release but has not judged it yet holds them back too.
        let mut judging = view.clone();
        judging.reports.insert("n0".into(), report(Outcome::Taking, 1100));
        judging.nodes.iter_mut().find(|n| n.node == "n0").unwrap().booted = Some(commit);
        let held = decide(&policy, &first, branch, &judging, 5000);
        assert!(matches!(&held, Decision::Wait { reason, .. } if reason.contains("n0")), "{held:?}");
        // One installed with the release, which never reported, does not.
        judging.reports.remove("n0");
        assert_eq!(decide(&policy, &first, branch, &judging, 5000), Decision::Go { wave: Wave::Wave(1) });
        // Wave 2 waits for every node of wave 1 too.
        assert!(matches!(decide(&policy, &second, branch, &view, 5000), Decision::Wait { .. }));
        // A node of another branch does not hold anyone back.
        view.nodes.push(NodeRecord { branch: "origin/testing".into(), ..node("other") });
        for n in names.iter().filter(|n| policy.wave_of(n).rank() == 1) {
            view.reports.insert(n.clone(), report(Outcome::Updated, 2000));
        }
        assert_eq!(decide(&policy, &second, branch, &view, 2060), Decision::Go { wave: Wave::Wave(2) });
        // A failure reaches the threshold: halt.
        view.reports.insert(first.clone(), report(Outcome::RolledBack, 2100));
        assert_eq!(decide(&policy, &second, branch, &view, 2200), Decision::Halt { failures: 1, threshold: 1 });
        // Set, the halt stops everyone, canaries too, until a resume forgives and clears it.
        let mark = Mark { commit, reason: "1 failure".into(), at: 2200 };
        view.halt = Some(mark.clone());
        assert!(
            matches!(decide(&policy, "n0", branch, &view, 2300), Decision::Wait { reason, .. } if reason.contains("halted"))
        );
        view.halt = None;
        view.forgiven = 1;
        assert_eq!(decide(&policy, &second, branch, &view, 2300), Decision::Go { wave: Wave::Wave(2) });
        view.paused = Some(mark.clone());
        assert!(
            matches!(decide(&policy, &second, branch, &view, 2300), Decision::Wait { reason, .. } if reason.contains("paused"))
        );
        view.aborted = Some(mark);
        assert!(matches!(decide(&policy, &second, branch, &view, 2300), Decision::Never { .. }));
    }
}
