//! A real etcd cluster for tests: members of Debian's `etcd` on loopback ports, each with a data
//! directory of its own, stopped on drop. Members can be killed and restarted. A secure cluster
//! serves TLS to clients that show a certificate of its CA and has authentication on: a `root`
//! user for the test and an `osdeploy` user whose role may read and write `/osdeploy/` only.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
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
    secure: Option<Pki>,
    /// Authentication is on: etcdctl logs in as root.
    auth: bool,
}

/// The files of a secure cluster (PEM), made with openssl.
pub struct Pki {
    /// The CA that signed every certificate.
    pub ca: PathBuf,
    /// The members' certificate (IP 127.0.0.1) and key.
    server: (PathBuf, PathBuf),
    /// A client certificate (CN osdeploy-node) and its key, for agents and `rollout`.
    pub client: (PathBuf, PathBuf),
    /// A file holding the `osdeploy` user's password.
    pub password_file: PathBuf,
}

const ROOT: &str = "root:root-password";

fn openssl(args: &[&str], dir: &Path) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl is required");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl Pki {
    /// A CA, the members' certificate and a client certificate under `dir`.
    fn make(dir: &Path) -> Pki {
        fs::create_dir_all(dir).unwrap();
        let key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
        let ca = ["-x509", "-days", "2", "-subj", "/CN=osdeploy test CA", "-keyout", "ca-key.pem", "-out", "ca.pem"];
        openssl(&[&["req"], &key[..], &ca[..]].concat(), dir);
        for (name, cn, usage) in
            [("server", "etcd", "serverAuth,clientAuth"), ("client", "osdeploy-node", "clientAuth")]
        {
            let ext = format!("subjectAltName=IP:127.0.0.1\nextendedKeyUsage={usage}\n");
            fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
            let (keyout, csr) = (format!("{name}-key.pem"), format!("{name}.csr"));
            let subject = format!("/CN={cn}");
            openssl(&[&["req"], &key[..], &["-subj", &subject, "-keyout", &keyout, "-out", &csr]].concat(), dir);
            let ext = format!("{name}.ext");
            let out = format!("{name}.pem");
            openssl(
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca-key.pem",
                    "-CAcreateserial",
                    "-days",
                    "2",
                ]
                .into_iter()
                .chain(["-extfile", &ext, "-out", &out])
                .collect::<Vec<_>>(),
                dir,
            );
        }
        fs::write(dir.join("password"), "fleet-password\n").unwrap();
        Pki {
            ca: dir.join("ca.pem"),
            server: (dir.join("server.pem"), dir.join("server-key.pem")),
            client: (dir.join("client.pem"), dir.join("client-key.pem")),
            password_file: dir.join("password"),
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl EtcdCluster {
    /// Starts `size` members under `dir` and waits until the cluster answers.
    pub fn start(dir: &Path, size: usize) -> EtcdCluster {
        Self::start_with(dir, size, None)
    }

    /// Starts `size` members serving TLS with client certificates, then turns authentication on
    /// (users `root` and `osdeploy`, the latter's role limited to `/osdeploy/`).
    pub fn start_secure(dir: &Path, size: usize) -> EtcdCluster {
        let mut cluster = Self::start_with(dir, size, Some(Pki::make(&dir.join("pki"))));
        let password = fs::read_to_string(&cluster.secure().unwrap().password_file).unwrap();
        for args in [vec!["user", "add", ROOT, "--interactive=false"], vec!["auth", "enable"]] {
            let out = cluster.etcdctl(&cluster.endpoints(), &args);
            assert!(out.status.success(), "etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        cluster.auth = true;
        for args in [
            vec!["role", "add", "fleet"],
            vec!["role", "grant-permission", "fleet", "--prefix=true", "readwrite", "/osdeploy/"],
            vec!["user", "add", &format!("osdeploy:{}", password.trim_end()), "--interactive=false"],
            vec!["user", "grant-role", "osdeploy", "fleet"],
        ] {
            let out = cluster.etcdctl(&cluster.endpoints(), &args);
            assert!(out.status.success(), "etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        cluster
    }

    /// The secure cluster's files (`None`: plain HTTP, no authentication).
    pub fn secure(&self) -> Option<&Pki> {
        self.secure.as_ref()
    }

    fn start_with(dir: &Path, size: usize, secure: Option<Pki>) -> EtcdCluster {
        let scheme = if secure.is_some() { "https" } else { "http" };
        let members: Vec<Member> = (1..=size)
            .map(|i| Member {
                name: format!("m{i}"),
                client_url: format!("{scheme}://127.0.0.1:{}", free_port()),
                peer_url: format!("http://127.0.0.1:{}", free_port()),
                data: dir.join(format!("m{i}")),
                child: None,
            })
            .collect();
        let initial_cluster =
            members.iter().map(|m| format!("{}={}", m.name, m.peer_url)).collect::<Vec<_>>().join(",");
        fs::create_dir_all(dir).unwrap();
        let mut cluster = EtcdCluster { members, initial_cluster, log_dir: dir.to_owned(), secure, auth: false };
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
        let mut command = Command::new("etcd");
        if let Some(pki) = &self.secure {
            command.arg("--cert-file").arg(&pki.server.0).arg("--key-file").arg(&pki.server.1);
            command.arg("--trusted-ca-file").arg(&pki.ca).arg("--client-cert-auth");
        }
        let child = command
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
            let out = self.etcdctl(endpoints, &["--command-timeout=2s", "endpoint", "health"]);
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

    /// `etcdctl` for `endpoints`, as `root` with the client certificate on a secure cluster.
    fn etcdctl(&self, endpoints: &[String], args: &[&str]) -> Output {
        let mut command = Command::new("etcdctl");
        command.env("ETCDCTL_API", "3").args(["--endpoints", &endpoints.join(",")]);
        if let Some(pki) = &self.secure {
            command.arg("--cacert").arg(&pki.ca).arg("--cert").arg(&pki.client.0).arg("--key").arg(&pki.client.1);
        }
        if self.auth {
            command.args(["--user", ROOT]);
        }
        command.args(args).output().expect("etcdctl is required (Debian: etcd-client)")
    }

    /// `etcdctl get --prefix KEY` as (key, value) lines.
    pub fn get_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        let out = self.etcdctl(&self.endpoints(), &["get", "--prefix", prefix]);
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
