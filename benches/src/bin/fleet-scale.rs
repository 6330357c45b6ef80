//! The fleet's coordination at scale: N simulated agents (tokio tasks, no sysroots) run the
//! agent's coordination loop against a real etcd — register, read the rollout, ask the gate, join
//! the reboot queue, wait for a slot, "reboot" (a fixed sleep), report, leave — and the run
//! reports the time to roll the whole fleet, etcd requests per node, the slot wait (p50, p99) and
//! the most nodes ever holding a slot at once (checked against the group's slots).
//!
//! `benches/harness/fleet-scale.sh` starts a three-member etcd and runs this; by hand:
//! `fleet-scale --etcd http://127.0.0.1:2379 --nodes 1000 --slots 50 --reboot-seconds 10`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use osdeploy_fleet::access::EtcdAccess;
use osdeploy_fleet::cluster::{Cluster, NodeRecord, Outcome, Report, now};
use osdeploy_fleet::gate::{Decision, decide};
use osdeploy_fleet::policy::{PolicySpec, RolloutPolicy};
use osdeploy_store::{CommitId, ObjectId};

/// The run's settings.
struct Settings {
    endpoints: Vec<String>,
    nodes: usize,
    slots: u32,
    reboot: Duration,
    poll: Duration,
    soak: u64,
}

/// What every agent adds up.
#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    holding: AtomicUsize,
    peak_holding: AtomicUsize,
}

/// etcd requests each Cluster call makes.
const ROLLOUT_READS: u64 = 3;
const QUEUE_READS: u64 = 2;

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned().unwrap_or_else(|| default.to_owned())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let settings = Settings {
        endpoints: arg(&args, "--etcd", "http://127.0.0.1:2379").split(',').map(str::to_owned).collect(),
        nodes: arg(&args, "--nodes", "1000").parse().expect("--nodes N"),
        slots: arg(&args, "--slots", "50").parse().expect("--slots N"),
        reboot: Duration::from_secs_f64(arg(&args, "--reboot-seconds", "10").parse().expect("--reboot-seconds S")),
        poll: Duration::from_secs_f64(arg(&args, "--poll-seconds", "5").parse().expect("--poll-seconds S")),
        soak: arg(&args, "--soak-seconds", "10").parse().expect("--soak-seconds S"),
    };
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    runtime.block_on(run(settings));
}

async fn run(settings: Settings) {
    let prefix = format!("/osdeploy-scale-{}", std::process::id());
    let access = EtcdAccess { endpoints: settings.endpoints.clone(), ..EtcdAccess::default() };
    let cluster = Cluster::connect(&access, &prefix, Duration::from_secs(10)).await.expect("etcd");
    let commit = CommitId(ObjectId::of(prefix.as_bytes()));
    let spec = PolicySpec {
        canary_fraction: 0.01,
        waves: vec![0.1, 0.5, 1.0],
        soak_seconds: settings.soak,
        failure_threshold: 5,
        ..PolicySpec::default()
    };
    let policy = Arc::new(RolloutPolicy::new(commit, spec).expect("a valid policy"));
    cluster.set_reboot_slots("default", settings.slots).await.expect("setting the slots");
    let tally = Arc::new(Tally::default());
    // Everybody registers first (a fleet that exists before the release does).
    let mut leases = Vec::new();
    for i in 0..settings.nodes {
        let lease = cluster.grant_lease(3600).await.expect("a lease");
        let record = NodeRecord {
            node: format!("node-{i:04}"),
            group: "default".into(),
            branch: "origin/stable".into(),
            booted: None,
            doing: "idle".into(),
            at: now(),
        };
        cluster.register(&record, lease).await.expect("registering");
        leases.push(lease);
    }
    tally.requests.fetch_add(2 * settings.nodes as u64, Ordering::Relaxed);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, lease) in leases.into_iter().enumerate() {
        let (cluster, policy, tally) = (cluster.clone(), policy.clone(), tally.clone());
        let (poll, reboot) = (settings.poll, settings.reboot);
        // Spread the first polls over one interval, as the jitter does.
        let offset = poll.mul_f64(i as f64 / settings.nodes as f64);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(offset).await;
            agent(&cluster, &policy, &format!("node-{i:04}"), lease, poll, reboot, &tally).await
        }));
    }
    let mut waits = Vec::new();
    for task in tasks {
        waits.push(task.await.expect("an agent task"));
    }
    let total = started.elapsed();
    waits.sort_by(f64::total_cmp);
    let pct = |p: f64| waits[((waits.len() - 1) as f64 * p).round() as usize];
    let requests = tally.requests.load(Ordering::Relaxed) as f64 / settings.nodes as f64;
    let peak = tally.peak_holding.load(Ordering::Relaxed);
    println!(
        "{} agents, {} slots, reboot {:?}, poll {:?}, soak {} s, policy 1 % canaries + waves [0.1, 0.5, 1.0]",
        settings.nodes, settings.slots, settings.reboot, settings.poll, settings.soak
    );
    println!("whole fleet updated in {:.1} s", total.as_secs_f64());
    println!("etcd requests per node: {requests:.1} (mean)");
    println!("slot wait: p50 {:.1} s, p99 {:.1} s, max {:.1} s", pct(0.5), pct(0.99), pct(1.0));
    println!("most nodes holding a slot at once: {peak} (slots: {})", settings.slots);
    assert!(peak <= settings.slots as usize, "the semaphore let {peak} nodes hold {} slots", settings.slots);
}

/// One simulated agent; returns the seconds it waited for its slot.
async fn agent(
    cluster: &Cluster,
    policy: &RolloutPolicy,
    node: &str,
    lease: i64,
    poll: Duration,
    reboot: Duration,
    tally: &Tally,
) -> f64 {
    let commit = policy.commit;
    let count = |n: u64| tally.requests.fetch_add(n, Ordering::Relaxed);
    let wave = loop {
        let view = retry(|| cluster.rollout(&commit)).await;
        count(ROLLOUT_READS);
        match decide(policy, node, "origin/stable", &view, now()) {
            Decision::Go { wave } => break wave,
            Decision::Wait { .. } => {
                if view.started.is_none() {
                    retry(|| cluster.mark_started(policy)).await;
                    count(2);
                }
                tokio::time::sleep(poll).await;
            }
            other => panic!("{node}: unexpected decision {other:?}"),
        }
    };
    let report = |outcome: Outcome| Report { outcome, wave, at: now(), message: String::new() };
    let taking = report(Outcome::Taking);
    retry(|| cluster.report(&commit, node, &taking)).await;
    retry(|| cluster.enqueue("default", node, &commit, lease)).await;
    count(2);
    let queued = Instant::now();
    loop {
        let holds = retry(|| cluster.holds("default", node)).await;
        count(QUEUE_READS);
        if holds == Some(true) {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let waited = queued.elapsed().as_secs_f64();
    let holding = tally.holding.fetch_add(1, Ordering::SeqCst) + 1;
    tally.peak_holding.fetch_max(holding, Ordering::SeqCst);
    tokio::time::sleep(reboot).await;
    let updated = report(Outcome::Updated);
    retry(|| cluster.report(&commit, node, &updated)).await;
    tally.holding.fetch_sub(1, Ordering::SeqCst);
    retry(|| cluster.dequeue("default", node)).await;
    count(2);
    waited
}

/// Retries an etcd call until it succeeds (a loaded etcd may time out now and then).
async fn retry<T, F: std::future::Future<Output = osdeploy_fleet::Result<T>>>(mut call: impl FnMut() -> F) -> T {
    loop {
        match call().await {
            Ok(value) => return value,
            Err(e) => {
                eprintln!("{e}; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}
