//! Fleet rollouts end to end, on real parts: a three-member etcd cluster on loopback ports, an
//! origin served by `osdeploy serve` (signed summary, signed rollout policies), and five nodes
//! whose sysroots share a loop-mounted btrfs (state-file bootloader), each with a real
//! `osdeploy agent` process. A node's reboot command is `osdeploy boot-check`, which plays the
//! bootloader: the node "reboots" into whatever its bootloader would boot.
//!
//! Release 2 rolls out canary → wave 1 → wave 2 with at most one node in its reboot at a time;
//! release 3 fails its health check on the canary, which goes back by itself and halts the
//! fleet; the other nodes stay on release 2 until `osdeploy rollout resume`, after which a fixed
//! release 4 reaches every node. The merged timeline of the agents is printed and checked.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::etcd::EtcdCluster;
use crate::support::*;
use serde_json::Value;

const NODES: usize = 5;

/// A node: its sysroot, configuration and agent process (killed on drop).
struct FleetNode {
    name: String,
    sysroot: PathBuf,
    config: PathBuf,
    agent: Option<Child>,
    /// Where its agent serves its metrics.
    metrics: String,
}

impl FleetNode {
    fn osd(&self) -> Command {
        osd_at(&self.sysroot, &self.config)
    }

    /// Starts the agent (logging to CONFIG/agent.log); with `crash_at`, it aborts at that step.
    fn start_agent(&mut self, crash_at: Option<&str>) {
        let log = fs::OpenOptions::new().create(true).append(true).open(self.config.join("agent.log")).unwrap();
        let mut cmd = self.osd();
        if let Some(step) = crash_at {
            cmd.env("OSDEPLOY_CRASH_AT", step);
        }
        self.agent = Some(cmd.arg("agent").stdout(Stdio::null()).stderr(log).spawn().unwrap());
    }

    /// Sends the agent SIGHUP: it polls at once.
    fn wake_agent(&self) {
        let pid = self.agent.as_ref().expect("a running agent").id().to_string();
        assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    }

    /// Kills the agent (SIGKILL) and waits for it.
    fn kill_agent(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            let _ = agent.kill();
            let _ = agent.wait();
        }
    }

    /// The commit of the slot the node booted last.
    fn booted_commit(&self) -> String {
        let status = json(&ok(self.osd().args(["status", "--json"])));
        let slot = status["booted"].as_str().unwrap_or("none").to_owned();
        status["slots"][&slot]["commit"].as_str().unwrap_or_default().to_owned()
    }

    /// The agent's timeline: (milliseconds, event, commit).
    fn timeline(&self) -> Vec<(u64, String, String)> {
        let Ok(bytes) = fs::read(self.sysroot.join("osdeploy/agent.json")) else { return Vec::new() };
        let state: Value = serde_json::from_slice(&bytes).unwrap();
        state["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["at_ms"].as_u64().unwrap(),
                    e["event"].as_str().unwrap().to_owned(),
                    e["commit"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    /// The agent's metrics (OpenMetrics text), fetched with a plain HTTP/1.0 request.
    fn metrics(&self) -> String {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&self.metrics).unwrap();
        stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: agent\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"), "{response}");
        response
    }

    fn has_event(&self, event: &str, commit: &str) -> bool {
        self.timeline().iter().any(|(_, e, c)| e == event && c == commit)
    }
}

impl Drop for FleetNode {
    fn drop(&mut self) {
        self.kill_agent();
    }
}

/// Everything, dropped in order: agents, server, etcd, the filesystem, the directory.
struct Fleet {
    nodes: Vec<FleetNode>,
    server: Server,
    etcd: EtcdCluster,
    _fs: LoopFs,
    tmp: tempfile::TempDir,
}

impl Fleet {
    fn origin(&self) -> PathBuf {
        self.tmp.path().join("origin")
    }

    fn key(&self) -> PathBuf {
        self.tmp.path().join("signing")
    }

    /// Commits release `version` (its /etc/os-release says so; a version containing "broken"
    /// fails the nodes' health check), publishes `policy` and signs: the policy is in place
    /// before the signed summary makes the commit visible.
    fn release(&self, version: &str, policy: &str) -> String {
        let tree = self.tmp.path().join("tree");
        fs::write(tree.join("etc/os-release"), format!("NAME=fleet-sample\nVERSION={version}\n")).unwrap();
        let seed = version.bytes().fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        write_random(&tree.join("usr/lib/librelease.so"), 200_000, seed);
        let commit = ok(osdeploy(&self.origin()).args(["commit", "-b", "stable", "--version", version]).arg(&tree))
            .trim()
            .to_owned();
        let policy_file = self.tmp.path().join("policy.toml");
        fs::write(&policy_file, policy).unwrap();
        ok(osdeploy(&self.origin())
            .args(["rollout", "publish", &commit, "--policy"])
            .arg(&policy_file)
            .arg("--key")
            .arg(self.key()));
        ok(osdeploy(&self.origin()).arg("sign").arg("--key").arg(self.key()));
        commit
    }

    fn rollout(&self, args: &[&str]) -> String {
        ok(&mut self.rollout_command(args))
    }

    /// `osdeploy rollout ARGS` with flags naming etcd (and on a secure cluster, the CA, the
    /// client certificate and the `osdeploy` user).
    fn rollout_command(&self, args: &[&str]) -> Command {
        let mut cmd = osdeploy(&self.origin());
        cmd.arg("rollout").args(args);
        for endpoint in self.etcd.endpoints() {
            cmd.arg("--etcd").arg(endpoint);
        }
        if let Some(pki) = self.etcd.secure() {
            cmd.arg("--etcd-ca")
                .arg(&pki.ca)
                .arg("--etcd-cert")
                .arg(&pki.client.0)
                .arg("--etcd-key")
                .arg(&pki.client.1);
            cmd.args(["--etcd-user", "osdeploy", "--etcd-password-file"]).arg(&pki.password_file);
        }
        cmd
    }

    fn status(&self, commit: &str) -> Value {
        json(&self.rollout(&["status", commit, "--json"]))
    }

    /// Waits until `done` holds (checked every 200 ms), at most `limit`; panics with the timeline.
    fn wait_for(&self, what: &str, limit: Duration, done: impl Fn(&Fleet) -> bool) {
        let started = Instant::now();
        while !done(self) {
            if started.elapsed() > limit {
                panic!("{what}: not within {limit:?}\n{}\n{}", self.timeline(), self.log_tails());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The last lines of every agent's log.
    fn log_tails(&self) -> String {
        let tail = |node: &FleetNode| {
            let log = fs::read_to_string(node.config.join("agent.log")).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            lines[lines.len().saturating_sub(12)..].join("\n")
        };
        self.nodes.iter().map(|n| format!("--- {} agent log:\n{}", n.name, tail(n))).collect::<Vec<_>>().join("\n")
    }

    /// Every agent's timeline, merged, one line per event.
    fn timeline(&self) -> String {
        let mut all: Vec<(u64, String, String, String)> = self
            .nodes
            .iter()
            .flat_map(|n| n.timeline().into_iter().map(|(at, e, c)| (at, n.name.clone(), e, c)))
            .collect();
        all.sort();
        let start = all.first().map_or(0, |e| e.0);
        all.iter()
            .map(|(at, node, event, commit)| {
                format!(
                    "{:>8.3} s  {node}  {event:<14} {}",
                    (at - start) as f64 / 1000.0,
                    &commit[..commit.len().min(12)]
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Each node's [slot-acquired, releasing] interval for `commit` (recorded after the slot was
    /// taken and before it is given back), checked not to overlap (one reboot slot): returns them
    /// sorted.
    fn reboot_windows(&self, commit: &str) -> Vec<(u64, u64, String)> {
        let mut windows: Vec<(u64, u64, String)> = Vec::new();
        for node in &self.nodes {
            let timeline = node.timeline();
            let at = |event: &str| timeline.iter().find(|(_, e, c)| e == event && c == commit).map(|(t, _, _)| *t);
            if let (Some(from), Some(to)) = (at("slot-acquired"), at("releasing")) {
                windows.push((from, to, node.name.clone()));
            }
        }
        windows.sort();
        for pair in windows.windows(2) {
            assert!(
                pair[1].0 >= pair[0].1,
                "{} got a reboot slot before {} gave its slot back:\n{}",
                pair[1].2,
                pair[0].2,
                self.timeline()
            );
        }
        windows
    }
}

/// An origin with release 1, `nodes` nodes on it (agents not started yet, polling every `poll`
/// seconds), an etcd of `members`.
fn set_up(nodes: usize, members: usize, reboot_ttl: u64, poll: u64) -> Fleet {
    set_up_with(nodes, members, reboot_ttl, poll, false)
}

/// [`set_up`]; with `secure`, etcd serves TLS to client certificates and has authentication on,
/// and each node's `[fleet]` names the CA, its certificate and the `osdeploy` user.
fn set_up_with(nodes: usize, members: usize, reboot_ttl: u64, poll: u64, secure: bool) -> Fleet {
    require_root();
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let etcd_dir = tmp.path().join("etcd");
    let etcd =
        if secure { EtcdCluster::start_secure(&etcd_dir, members) } else { EtcdCluster::start(&etcd_dir, members) };
    let fs_ = LoopFs::new("btrfs", 1200);
    let origin = tmp.path().join("origin");
    ok(osdeploy(&origin).args(["init", "--mode", "archive"]));
    ok(osdeploy(&origin).args(["key", "generate"]).arg(tmp.path().join("signing")));
    let tree = tmp.path().join("tree");
    make_sample_tree(&tree);
    fs::create_dir_all(tree.join("usr/lib")).unwrap();
    fs::create_dir_all(tree.join("etc")).unwrap();
    let server = osdeploy_serve(&origin);
    let mut fleet = Fleet { nodes: Vec::new(), server, etcd, _fs: fs_, tmp };
    let first = fleet.release("1", "");
    let endpoints: Vec<String> = fleet.etcd.endpoints().iter().map(|e| format!("{e:?}")).collect();
    let access = match fleet.etcd.secure() {
        Some(pki) => format!(
            "etcd_ca = {:?}\netcd_cert = {:?}\netcd_key = {:?}\netcd_user = \"osdeploy\"\netcd_password_file = {:?}\n",
            pki.ca, pki.client.0, pki.client.1, pki.password_file
        ),
        None => String::new(),
    };
    for i in 1..=nodes {
        let name = format!("node{i}");
        let sysroot = fleet._fs.mount.join(&name);
        let config = fleet.tmp.path().join(&name);
        fs::create_dir_all(config.join("health.d")).unwrap();
        write_script(&config.join("health.d/10-not-broken"), "case \"$OSDEPLOY_VERSION\" in *broken*) exit 1;; esac");
        let metrics =
            format!("127.0.0.1:{}", std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port());
        let reboot = config.join("reboot");
        write_script(
            &reboot,
            &format!(
                "exec {} --sysroot {} --config-dir {} boot-check > /dev/null",
                env!("CARGO_BIN_EXE_osdeploy"),
                sysroot.display(),
                config.display()
            ),
        );
        fs::write(
            config.join("config.toml"),
            format!(
                "[fleet]\netcd = [{}]\nnode_id = \"{name}\"\npoll_seconds = {poll}\npoll_jitter_seconds = 0\n\
                 node_ttl_seconds = 5\nreboot_ttl_seconds = {reboot_ttl}\nreboot_command = [\"{}\"]\nreboot_timeout_seconds = 30\n\
                 metrics_listen = \"{metrics}\"\n{access}",
                endpoints.join(", "),
                reboot.display()
            ),
        )
        .unwrap();
        let node = FleetNode { name, sysroot, config, agent: None, metrics };
        ok(node.osd().args(["init-sysroot", "--bootloader", "file"]));
        ok(node
            .osd()
            .args(["remote", "add", "origin", &fleet.server.url, "--key"])
            .arg(fleet.tmp.path().join("signing.pub")));
        ok(node.osd().args(["pull", "origin", "stable"]));
        ok(node.osd().arg("switch"));
        ok(node.osd().arg("boot-check"));
        ok(node.osd().arg("mark-good"));
        assert_eq!(node.booted_commit(), first);
        fleet.nodes.push(node);
    }
    fleet
}

#[test]
fn releases_roll_out_in_waves_one_reboot_at_a_time_and_a_failure_halts_the_fleet() {
    let mut fleet = set_up(NODES, 3, 60, 1);
    fleet.nodes.iter_mut().for_each(|n| n.start_agent(None));
    let limit = Duration::from_secs(240);

    // Release 2: canary node1, then half of the rest, then everybody.
    let second =
        fleet.release("2", "canary_nodes = [\"node1\"]\nwaves = [0.5, 1.0]\nsoak_seconds = 3\nfailure_threshold = 1\n");
    // An etcd member dies as the rollout starts: the other two keep the quorum, the rollout goes on.
    fleet.etcd.kill_member(2);
    fleet.wait_for("every node on release 2", limit, |f| f.nodes.iter().all(|n| n.booted_commit() == second));
    fleet.wait_for("every agent done with release 2", limit, |f| {
        f.nodes.iter().all(|n| n.has_event("slot-released", &second))
    });
    let windows = fleet.reboot_windows(&second);
    assert_eq!(windows.len(), NODES, "{}", fleet.timeline());
    assert_eq!(windows[0].2, "node1", "the canary reboots first:\n{}", fleet.timeline());
    let status = fleet.status(&second);
    let wave_of = |node: &str| -> String {
        status["lines"].as_array().unwrap().iter().find(|l| l["node"] == node).unwrap()["wave"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(wave_of("node1"), "canary");
    let taking = |node: &FleetNode| node.timeline().iter().find(|(_, e, c)| e == "taking" && c == &second).unwrap().0;
    let released =
        |node: &FleetNode| node.timeline().iter().find(|(_, e, c)| e == "reported" && c == &second).unwrap().0;
    for wave in ["wave 1", "wave 2"] {
        let earlier: Vec<&FleetNode> = fleet.nodes.iter().filter(|n| wave_of(&n.name).as_str() < wave).collect();
        let done = earlier.iter().map(|n| released(n)).max().unwrap();
        for node in fleet.nodes.iter().filter(|n| wave_of(&n.name) == wave) {
            // Soak 3 s after the earlier waves' last report (whole seconds in etcd: at least 2 s).
            assert!(
                taking(node) >= done + 1500,
                "{} ({wave}) did not wait for the soak:\n{}",
                node.name,
                fleet.timeline()
            );
        }
    }
    assert_eq!(status["failures"], 0);
    fleet.etcd.start_member(2);
    let metrics = fleet.nodes[0].metrics();
    for line in [
        format!("osdeploy_booted{{commit=\"{second}\",version=\"2\"}} 1"),
        "osdeploy_updates_total{outcome=\"updated\"} 1".to_owned(),
        "osdeploy_fleet_halted 0".to_owned(),
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} is not in node1's metrics:\n{metrics}");
    }

    // Release 3 is broken: its health check fails on the canary, node2.
    let third = fleet.release("3-broken", "canary_nodes = [\"node2\"]\nwaves = [1.0]\nfailure_threshold = 1\n");
    let canary = &fleet.nodes[1];
    fleet.wait_for("the canary back on release 2", limit, |_| canary.has_event("slot-released", &third));
    assert_eq!(canary.booted_commit(), second, "the canary went back by itself");
    for event in ["health-failed", "rolling-back", "rebooting-back", "booted", "reported"] {
        assert!(canary.has_event(event, &third), "{event}:\n{}", fleet.timeline());
    }
    let status = fleet.status(&third);
    assert!(status["halt"]["reason"].as_str().unwrap().contains("threshold is 1"), "{status}");
    assert_eq!(status["reports"]["node2"]["outcome"], "rolled-back", "{status}");
    // The others stay on release 2: a few polls later, none has taken release 3.
    std::thread::sleep(Duration::from_secs(4));
    for node in &fleet.nodes {
        assert_eq!(node.booted_commit(), second, "{} moved during the halt", node.name);
        if node.name != "node2" {
            assert!(!node.has_event("taking", &third), "{} took release 3 during the halt", node.name);
        }
    }

    // A fixed release 4 waits for the halt to be cleared, then reaches everybody.
    let fourth = fleet.release("4", "canary_nodes = [\"node3\"]\nwaves = [1.0]\nfailure_threshold = 1\n");
    std::thread::sleep(Duration::from_secs(4));
    assert!(fleet.nodes.iter().all(|n| !n.has_event("taking", &fourth)), "release 4 started while halted");
    let out = fleet.rollout(&["resume", &fourth]);
    assert!(out.contains("halt cleared"), "{out}");
    fleet.wait_for("every node on release 4", limit, |f| f.nodes.iter().all(|n| n.booted_commit() == fourth));
    fleet.wait_for("every agent done with release 4", limit, |f| {
        f.nodes.iter().all(|n| n.has_event("slot-released", &fourth))
    });
    let windows = fleet.reboot_windows(&fourth);
    assert_eq!(windows[0].2, "node3", "the canary of release 4 first:\n{}", fleet.timeline());
    let status = fleet.status(&fourth);
    assert!(status["halt"].is_null() && status["failures"] == 0, "{status}");
    let queue = &status["reboot_queues"]["default"];
    assert_eq!(queue.as_array().map(Vec::len), Some(0), "every slot given back: {status}");
    println!("whole timeline:\n{}", fleet.timeline());
}

/// Steps of an update at which the agent is killed (`OSDEPLOY_CRASH_AT=agent:STEP`, a SIGABRT
/// right after the step is recorded); after each, a restarted agent finishes the update.
const GOOD_STEPS: [&str; 10] = [
    "taking",
    "switched",
    "queued",
    "slot-acquired",
    "drained",
    "rebooting",
    "booted",
    "reported",
    "undrained",
    "releasing",
];
const BROKEN_STEPS: [&str; 3] = ["health-failed", "rolling-back", "rebooting-back"];

#[test]
fn an_agent_killed_at_any_step_resumes_and_finishes_the_update() {
    let mut fleet = set_up(1, 1, 60, 1);
    let limit = Duration::from_secs(120);
    let cases = GOOD_STEPS.iter().map(|s| (*s, false)).chain(BROKEN_STEPS.iter().map(|s| (*s, true)));
    let mut previous = fleet.nodes[0].booted_commit();
    for (n, (step, broken)) in cases.enumerate() {
        let version = if broken { format!("{n}-broken") } else { n.to_string() };
        let commit = fleet.release(&version, "failure_threshold = 100\n");
        let node = &mut fleet.nodes[0];
        node.start_agent(Some(&format!("agent:{step}")));
        let started = Instant::now();
        let status = loop {
            if let Some(status) = node.agent.as_mut().unwrap().try_wait().unwrap() {
                break status;
            }
            assert!(started.elapsed() < limit, "the agent never reached {step} for release {version}");
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(!status.success(), "the agent stopped by itself before {step}: {status}");
        node.agent = None;
        assert!(node.has_event(step, &commit), "killed at {step} before recording it");
        node.start_agent(None);
        let node = &fleet.nodes[0];
        fleet.wait_for(&format!("release {version} done after a kill at {step}"), limit, |_| {
            node.timeline().iter().any(|(_, e, c)| e == "slot-released" && c == &commit)
        });
        let expected = if broken { previous.clone() } else { commit.clone() };
        assert_eq!(node.booted_commit(), expected, "killed at {step}, release {version}");
        let status = fleet.status(&commit);
        let outcome = if broken { "rolled-back" } else { "updated" };
        assert_eq!(status["reports"]["node1"]["outcome"], outcome, "killed at {step}: {status}");
        assert_eq!(status["reboot_queues"]["default"], serde_json::json!([]), "killed at {step}: {status}");
        fleet.nodes[0].kill_agent();
        if !broken {
            previous = commit;
        }
    }
}

#[test]
fn agents_wait_for_etcd_refuse_bad_policies_and_a_dead_holder_frees_its_slot() {
    let mut fleet = set_up(2, 3, 10, 1);
    let limit = Duration::from_secs(120);
    fleet.nodes.iter_mut().for_each(|n| n.start_agent(None));

    // A policy that is not signed by the origin's key, then one that does not parse: refused,
    // named in the log, nothing taken.
    let unsigned = fleet.release("2", "");
    fs::remove_file(fleet.origin().join(format!("rollouts/{unsigned}.json.sig"))).unwrap();
    let corrupt = fleet.release("3", "");
    fs::write(fleet.origin().join(format!("rollouts/{corrupt}.json")), "{\"format\": 1, \"commit\": 7}").unwrap();
    fleet.wait_for("the corrupt policy refused in the log", limit, |f| {
        f.nodes.iter().all(|n| fs::read_to_string(n.config.join("agent.log")).unwrap().contains("rollout policy of"))
    });
    std::thread::sleep(Duration::from_secs(3));
    for node in &fleet.nodes {
        let log = fs::read_to_string(node.config.join("agent.log")).unwrap();
        assert!(log.contains(&format!("the rollout policy of {corrupt} from remote origin")), "{log}");
        assert!(!node.has_event("taking", &corrupt), "{}", fleet.timeline());
    }

    // etcd entirely down: a good release waits; nobody reboots without a slot.
    for i in 0..3 {
        fleet.etcd.kill_member(i);
    }
    let good = fleet.release("4", "canary_nodes = [\"node1\"]\nwaves = [1.0]\n");
    std::thread::sleep(Duration::from_secs(6));
    assert!(fleet.nodes.iter().all(|n| !n.has_event("taking", &good)), "{}", fleet.timeline());
    for i in 0..3 {
        fleet.etcd.start_member(i);
    }
    fleet.wait_for("both nodes on release 4 once etcd is back", limit, |f| {
        f.nodes.iter().all(|n| n.has_event("slot-released", &good))
    });
    assert!(fleet.nodes.iter().all(|n| n.booted_commit() == good));

    // node1 dies holding its reboot slot (its reboot command kills its agent); node2, of the same
    // wave, queues behind it: the slot is freed when node1's lease expires (10 s), and node2 goes on.
    fleet.nodes.iter_mut().for_each(FleetNode::kill_agent);
    write_script(&fleet.nodes[0].config.join("reboot"), "kill -9 $PPID");
    fleet.nodes[0].start_agent(None);
    let next = fleet.release("5", "waves = [1.0]\n");
    fleet.wait_for("node1 dead while holding its slot", limit, |f| {
        f.nodes[0].has_event("rebooting", &next) && f.nodes[0].agent.as_ref().is_some()
    });
    let node1 = &mut fleet.nodes[0];
    let started = Instant::now();
    while node1.agent.as_mut().unwrap().try_wait().unwrap().is_none() {
        assert!(started.elapsed() < limit, "node1's agent did not die");
        std::thread::sleep(Duration::from_millis(100));
    }
    node1.agent = None;
    fleet.nodes[1].start_agent(None);
    let died = fleet.nodes[0].timeline().iter().find(|(_, e, c)| e == "rebooting" && c == &next).unwrap().0;
    fleet.wait_for("node2 on release 5", limit, |f| f.nodes[1].has_event("slot-released", &next));
    let acquired = fleet.nodes[1].timeline().iter().find(|(_, e, c)| e == "slot-acquired" && c == &next).unwrap().0;
    let waited = acquired.saturating_sub(died);
    assert!(
        (5_000..=25_000).contains(&waited),
        "node2 got the slot {waited} ms after node1 died:\n{}",
        fleet.timeline()
    );
    println!("node2 got the dead node's slot {:.1} s after it died (lease TTL 10 s)", waited as f64 / 1000.0);
}

#[test]
fn operators_pause_resume_and_abort_a_rollout_and_sighup_polls_at_once() {
    // Agents that poll once an hour: only SIGHUP (and, once waiting, the 10 s retry) makes them look.
    let mut fleet = set_up(2, 1, 60, 3600);
    fleet.nodes.iter_mut().for_each(|n| n.start_agent(None));
    let limit = Duration::from_secs(120);
    std::thread::sleep(Duration::from_secs(2));

    // Paused before any node saw it: a woken agent waits.
    let second = fleet.release("2", "waves = [1.0]\n");
    let out = fleet.rollout(&["pause", &second, "--reason", "waiting for the change window"]);
    assert!(out.contains("paused"), "{out}");
    fleet.nodes.iter().for_each(FleetNode::wake_agent);
    fleet.wait_for("both agents saw the pause", limit, |f| {
        f.nodes
            .iter()
            .all(|n| fs::read_to_string(n.config.join("agent.log")).unwrap().contains("the rollout is paused"))
    });
    assert!(fleet.nodes.iter().all(|n| !n.has_event("taking", &second)), "{}", fleet.timeline());
    let status = fleet.status(&second);
    assert_eq!(status["paused"]["reason"], "waiting for the change window", "{status}");

    // Resumed: the waiting agents take it at their next retry.
    fleet.rollout(&["resume", &second]);
    fleet.wait_for("both nodes on release 2 after the resume", limit, |f| {
        f.nodes.iter().all(|n| n.has_event("slot-released", &second))
    });
    assert!(fleet.nodes.iter().all(|n| n.booted_commit() == second));

    // Aborted: a woken agent refuses it for good and stays on release 2.
    let third = fleet.release("3", "waves = [1.0]\n");
    fleet.rollout(&["abort", &third, "--reason", "bad build"]);
    fleet.nodes.iter().for_each(FleetNode::wake_agent);
    fleet.wait_for("both agents refused release 3", limit, |f| f.nodes.iter().all(|n| n.has_event("refused", &third)));
    assert!(fleet.nodes.iter().all(|n| n.booted_commit() == second && !n.has_event("taking", &third)));
    let status = fleet.status(&third);
    assert_eq!(status["aborted"]["reason"], "bad build", "{status}");

    // The canary goes silent in the middle of its update (its reboot command kills its agent):
    // wave 1 waits for it, also once its registration expired, until an operator forgets it —
    // which also frees its reboot slot long before its 60 s lease would.
    let fourth = fleet.release("4", "canary_nodes = [\"node1\"]\nwaves = [1.0]\n");
    write_script(&fleet.nodes[0].config.join("reboot"), "kill -9 $PPID");
    fleet.nodes.iter().for_each(FleetNode::wake_agent);
    fleet.wait_for("node1 silent in its reboot", limit, |f| {
        f.nodes[0].has_event("rebooting", &fourth) && f.status(&fourth)["lines"][0]["alive"] == false
    });
    let refused = fails(&mut fleet.rollout_command(&["forget", &fourth, "node2"]));
    assert!(refused.contains("has not reported"), "{refused}");
    let log = || fs::read_to_string(fleet.nodes[1].config.join("agent.log")).unwrap();
    fleet.wait_for("node2 waiting for the silent canary", limit, |_| {
        log().contains("waits for 1 node(s) of earlier waves: node1")
    });
    assert!(!fleet.nodes[1].has_event("taking", &fourth), "{}", fleet.timeline());
    let out = fleet.rollout(&["forget", &fourth, "node1"]);
    assert!(out.contains("forgot node1") && out.contains("left the reboot queue of group default"), "{out}");
    let status = fleet.status(&fourth);
    let queue = status["reboot_queues"]["default"].as_array().cloned().unwrap_or_default();
    assert!(queue.iter().all(|e| e["node"] != "node1"), "node1 still queued, its lease alive: {status}");
    assert!(status["reports"]["node1"].is_null(), "{status}");
    fleet.wait_for("node2 on release 4 without node1", limit, |f| f.nodes[1].has_event("slot-released", &fourth));
    assert_eq!(fleet.nodes[1].booted_commit(), fourth);
}

#[test]
fn agents_and_operators_reach_an_etcd_that_wants_tls_client_certificates_and_a_user() {
    // etcd serves TLS only to certificates of its CA, and authentication is on: the `osdeploy`
    // user's role may read and write `/osdeploy/` and nothing else.
    let mut fleet = set_up_with(2, 1, 60, 1, true);
    let limit = Duration::from_secs(120);
    fleet.nodes.iter_mut().for_each(|n| n.start_agent(None));
    let second = fleet.release("2", "canary_nodes = [\"node1\"]\nwaves = [1.0]\n");
    fleet.wait_for("both nodes done with release 2", limit, |f| {
        f.nodes.iter().all(|n| n.has_event("slot-released", &second))
    });
    assert!(fleet.nodes.iter().all(|n| n.booted_commit() == second), "{}", fleet.timeline());
    let keys = fleet.etcd.get_prefix(&format!("/osdeploy/rollouts/{second}/nodes/"));
    assert_eq!(keys.len(), 2, "both reports, written as the osdeploy user: {keys:?}");

    // An operator gets in with the flags, or with the node's [fleet] settings alone.
    let status = fleet.status(&second);
    assert_eq!(status["reports"]["node1"]["outcome"], "updated", "{status}");
    let status = json(&ok(fleet.nodes[1].osd().args(["rollout", "status", &second, "--json"])));
    assert_eq!(status["reports"]["node2"]["outcome"], "updated", "{status}");

    // A wrong password, no client certificate, a CA that did not sign the members' certificate,
    // a prefix outside the user's role: refused, and the error says which.
    let pki = fleet.etcd.secure().unwrap();
    let wrong = fleet.tmp.path().join("wrong-password");
    fs::write(&wrong, "guess\n").unwrap();
    let endpoint = fleet.etcd.endpoints()[0].clone();
    let path = |p: &Path| p.to_str().unwrap().to_owned();
    let (ca, cert, key, password, wrong) =
        (path(&pki.ca), path(&pki.client.0), path(&pki.client.1), path(&pki.password_file), path(&wrong));
    let flags = |ca: &str, identity: bool, password: &str| {
        let mut flags = vec!["--etcd-ca", ca, "--etcd-user", "osdeploy", "--etcd-password-file", password];
        if identity {
            flags.extend(["--etcd-cert", &cert, "--etcd-key", &key]);
        }
        flags.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let elsewhere = [flags(&ca, true, &password), vec!["--prefix".into(), "/elsewhere".into()]].concat();
    let cases = [
        (flags(&ca, true, &wrong), "authentication failed"),
        (flags(&ca, false, &password), "they want etcd_cert and etcd_key"),
        (flags(&cert, true, &password), "etcd_ca did not sign the members' certificate"),
        (elsewhere, "permission denied"),
    ];
    for (flags, expected) in cases {
        let err = fails(osdeploy(&fleet.origin()).args(["rollout", "slots", "--etcd", &endpoint]).args(&flags));
        assert!(err.contains(expected), "{flags:?}: {err}");
        println!("refused as expected: {}", err.trim());
    }
}

#[test]
fn a_node_on_which_the_release_failed_before_reports_it_and_holds_no_wave_back() {
    let mut fleet = set_up(2, 1, 60, 1);
    let limit = Duration::from_secs(120);
    let second = fleet.release("2", "canary_nodes = [\"node2\"]\nwaves = [1.0]\nfailure_threshold = 2\n");
    // Before any agent runs, an operator tried release 2 on node2 by hand and went back: node2
    // holds it in a bad slot.
    let node2 = &fleet.nodes[1];
    for step in [&["pull", "origin", "stable"][..], &["switch"], &["boot-check"], &["rollback"], &["boot-check"]] {
        ok(node2.osd().args(step));
    }
    assert_ne!(node2.booted_commit(), second);
    fleet.nodes.iter_mut().for_each(|n| n.start_agent(None));
    // node2, the canary, refuses release 2 and says why; node1, of wave 1, does not wait for it.
    fleet.wait_for("node1 on release 2", limit, |f| f.nodes[0].has_event("slot-released", &second));
    assert!(fleet.nodes[1].has_event("refused", &second), "{}", fleet.timeline());
    assert!(!fleet.nodes[1].has_event("taking", &second), "{}", fleet.timeline());
    let status = fleet.status(&second);
    let report = &status["reports"]["node2"];
    assert_eq!(report["outcome"], "rolled-back", "{status}");
    assert!(report["message"].as_str().unwrap().contains("went bad on this node before"), "{status}");
    assert_eq!(status["failures"], 1, "{status}");
}

#[test]
fn the_daemonset_manifest_validates_against_the_kubernetes_api_schemas() {
    // No cluster can run here; the official API schemas (kubernetes-validate, installed by
    // scripts/install-deps.sh) catch misspelt fields and wrong types, strictly.
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("dist/kubernetes/osdeploy-agent.yaml");
    let validate = |file: &Path, version: &str| {
        Command::new("kubernetes-validate")
            .args(["--strict", "--kubernetes-version", version])
            .arg(file)
            .output()
            .expect("kubernetes-validate is required (scripts/install-deps.sh installs it)")
    };
    for version in ["1.29.0", "1.37.0"] {
        let out = validate(&manifest, version);
        let said = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && said.contains("passed for resource daemonset/osdeploy-agent"), "{said}");
    }
    // The validator does catch a misspelt field.
    let tmp = tempfile::tempdir().unwrap();
    let broken = tmp.path().join("broken.yaml");
    let text = fs::read_to_string(&manifest).unwrap();
    assert!(text.contains("hostPID: true"), "the DaemonSet runs in the host's PID namespace");
    fs::write(&broken, text.replace("hostPID: true", "hostPid: true")).unwrap();
    let out = validate(&broken, "1.37.0");
    assert!(!out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_switched_node_waits_for_its_maintenance_window_before_it_queues_and_reboots() {
    let mut fleet = set_up(1, 1, 60, 1);
    let limit = Duration::from_secs(120);
    // A one-minute window tomorrow (UTC): closed for the whole test.
    let days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    let today =
        (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() / 86_400) as usize;
    let tomorrow = days[(today + 4) % 7];
    let config = fleet.nodes[0].config.join("config.toml");
    let open = fs::read_to_string(&config).unwrap();
    let window =
        format!("\n[[fleet.maintenance_window]]\ndays = [\"{tomorrow}\"]\nstart = \"00:00\"\nend = \"00:01\"\n");
    fs::write(&config, open.clone() + &window).unwrap();
    let second = fleet.release("2", "");
    fleet.nodes[0].start_agent(None);
    let log = |f: &Fleet| fs::read_to_string(f.nodes[0].config.join("agent.log")).unwrap();
    fleet.wait_for("the node held outside its window", limit, |f| log(f).contains("outside the maintenance windows"));
    let node = &fleet.nodes[0];
    assert!(node.has_event("switched", &second), "{}", fleet.timeline());
    assert!(!node.has_event("queued", &second) && !node.has_event("rebooting", &second), "{}", fleet.timeline());
    // Without the window (the agent reads config.toml when it starts), it goes on.
    fleet.nodes[0].kill_agent();
    fs::write(&config, open).unwrap();
    fleet.nodes[0].start_agent(None);
    fleet.wait_for("the node done with release 2", limit, |f| f.nodes[0].has_event("slot-released", &second));
    assert_eq!(fleet.nodes[0].booted_commit(), second);
}
