//! A real etcd cluster for tests: three members of Debian's `etcd` on loopback ports, each with
//! a data directory of its own, stopped on drop. Members can be killed and restarted.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One member.
struct Member {
    name: String,
    client_url: String,
    peer_url: String,
    data: PathBuf,
    child: Option<Child>,
}

/// A running etcd cluster.
pub struct EtcdCluster {
    members: Vec<Member>,
    initial_cluster: String,
    log_dir: PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl EtcdCluster {
    /// Starts `size` members under `dir` and waits until the cluster answers.
    pub fn start(dir: &Path, size: usize) -> EtcdCluster {
        let members: Vec<Member> = (1..=size)
            .map(|i| Member {
                name: format!("m{i}"),
                client_url: format!("http://127.0.0.1:{}", free_port()),
                peer_url: format!("http://127.0.0.1:{}", free_port()),
                data: dir.join(format!("m{i}")),
                child: None,
            })
            .collect();
        let initial_cluster =
            members.iter().map(|m| format!("{}={}", m.name, m.peer_url)).collect::<Vec<_>>().join(",");
        fs::create_dir_all(dir).unwrap();
        let mut cluster = EtcdCluster { members, initial_cluster, log_dir: dir.to_owned() };
        for i in 0..size {
            cluster.start_member(i);
        }
        cluster.wait_healthy(&cluster.endpoints());
        cluster
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// (Re)starts member `i`.
    pub fn start_member(&mut self, i: usize) {
        let member = &mut self.members[i];
        let log = fs::File::create(self.log_dir.join(format!("{}.log", member.name))).unwrap();
        let state = if member.data.exists() { "existing" } else { "new" };
        let child = Command::new("etcd")
            .args(["--name", &member.name, "--data-dir"])
            .arg(&member.data)
            .args(["--listen-client-urls", &member.client_url, "--advertise-client-urls", &member.client_url])
            .args(["--listen-peer-urls", &member.peer_url, "--initial-advertise-peer-urls", &member.peer_url])
            .args(["--initial-cluster", &self.initial_cluster, "--initial-cluster-state", state])
            .args([
                "--initial-cluster-token",
                "osdeploy-test",
                "--heartbeat-interval",
                "50",
                "--election-timeout",
                "500",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd is required (Debian: etcd-server; .ci/run installs it)");
        member.child = Some(child);
    }

    /// Kills member `i` (SIGKILL).
    pub fn kill_member(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits until every endpoint of `endpoints` reports healthy (60 s at most).
    pub fn wait_healthy(&self, endpoints: &[String]) {
        let started = Instant::now();
        loop {
            let out = Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args(["--endpoints", &endpoints.join(","), "--command-timeout=2s", "endpoint", "health"])
                .output()
                .expect("etcdctl is required (Debian: etcd-client)");
            if out.status.success() {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "etcd did not become healthy: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `etcdctl get --prefix KEY` as (key, value) lines.
    pub fn get_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.endpoints().join(","), "get", "--prefix", prefix])
            .output()
            .unwrap();
        assert!(out.status.success(), "etcdctl get: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let lines: Vec<&str> = text.lines().collect();
        lines.chunks(2).map(|kv| (kv[0].to_owned(), kv.get(1).copied().unwrap_or_default().to_owned())).collect()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill_member(i);
        }
    }
}
