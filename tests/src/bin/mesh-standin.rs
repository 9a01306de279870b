//! A stand-in for the `mesh` binary, to test the lab without the real daemon. It honours the
//! same contract: `daemon --state-dir D --socket S --config F --hostname H`, and a CLI
//! `[--host unix://S] <command>` (or `MESH_HOST`) with `info`, `init --advertise-addr IP`,
//! `join-token worker|manager -q`, `join --token T --advertise-addr IP MANAGER:2377`,
//! `node ls [--format json]`, plus `probe IP:PORT` (a TCP round trip to another host).
//!
//! The daemon counts its starts in `D/starts`, keeps its cluster record in `D/cluster.json`,
//! answers one line per connection on the unix socket (CLI) and on 0.0.0.0:2377 (other
//! hosts), and exits with status 3 at start if its config file contains `crash`. If the
//! config contains `tasks` it starts two "tasks" as a real daemon would: `sleep` in a
//! namespace kept as a bind mount under the state directory (`D/netns/task1`), and `sleep`
//! in an anonymous namespace (`unshare -n`); their pids go to `D/tasks`. SIGTERM kills it
//! (the default action).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("daemon") => daemon(&args[1..]),
        _ => cli(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mesh-standin: {e}");
            ExitCode::from(1)
        }
    }
}

type Res<T> = Result<T, String>;

fn flag(args: &[String], name: &str) -> Res<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .ok_or_else(|| format!("missing {name}"))
}

struct Daemon {
    hostname: String,
    state_dir: PathBuf,
    starts: u64,
    /// `{"role": "manager"|"worker", "addr": IP, "members": [{hostname, addr, role, status}]}`
    cluster: Mutex<Value>,
}

impl Daemon {
    fn save(&self, cluster: &Value) {
        let _ = std::fs::write(self.state_dir.join("cluster.json"), cluster.to_string());
    }

    /// One request from the local CLI.
    fn local(&self, line: &str) -> String {
        let mut cluster = self.cluster.lock().unwrap();
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["info"] => json!({
                "hostname": self.hostname,
                "starts": self.starts,
                "pid": std::process::id(),
                "role": cluster["role"],
                "addr": cluster["addr"],
            })
            .to_string(),
            ["init", addr] => {
                if !cluster.is_null() {
                    return "error: already in a cluster".into();
                }
                let me = json!({"hostname": self.hostname, "addr": addr, "role": "manager", "status": "ready"});
                *cluster = json!({"role": "manager", "addr": addr, "members": [me]});
                self.save(&cluster);
                "ok".into()
            }
            ["token", role] if cluster["role"] == "manager" => format!("STANDIN-TOKEN-{role}"),
            ["joined", addr, role] => {
                *cluster = json!({"role": role, "addr": addr});
                self.save(&cluster);
                "ok".into()
            }
            ["nodes"] if cluster["members"].is_array() => cluster["members"].to_string(),
            _ => format!("error: cannot {line:?} here"),
        }
    }

    /// One request from another host.
    fn remote(&self, line: &str) -> String {
        let mut cluster = self.cluster.lock().unwrap();
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["join", hostname, addr, token] if cluster["members"].is_array() => {
                let Some(role) = token.strip_prefix("STANDIN-TOKEN-") else {
                    return "error: bad token".into();
                };
                let member =
                    json!({"hostname": hostname, "addr": addr, "role": role, "status": "ready"});
                cluster["members"]
                    .as_array_mut()
                    .expect("checked above")
                    .push(member);
                self.save(&cluster);
                format!("ok {role}")
            }
            _ => self.hostname.clone(),
        }
    }
}

fn daemon(args: &[String]) -> Res<()> {
    let state_dir = PathBuf::from(flag(args, "--state-dir")?);
    let socket = PathBuf::from(flag(args, "--socket")?);
    let config =
        std::fs::read_to_string(flag(args, "--config")?).map_err(|e| format!("config: {e}"))?;
    if config.contains("crash") {
        eprintln!("mesh-standin: crashing as the config asks");
        std::process::exit(3);
    }
    if config.contains("tasks") {
        start_tasks(&state_dir)?;
    }
    let starts_path = state_dir.join("starts");
    let starts = std::fs::read_to_string(&starts_path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
        + 1;
    std::fs::write(&starts_path, starts.to_string()).map_err(|e| format!("write starts: {e}"))?;
    let cluster = std::fs::read_to_string(state_dir.join("cluster.json"))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(Value::Null);
    let d = Arc::new(Daemon {
        hostname: flag(args, "--hostname")?,
        state_dir,
        starts,
        cluster: Mutex::new(cluster),
    });

    let tcp = TcpListener::bind("0.0.0.0:2377").map_err(|e| format!("bind 2377: {e}"))?;
    let _ = std::fs::remove_file(&socket);
    let unix =
        UnixListener::bind(&socket).map_err(|e| format!("bind {}: {e}", socket.display()))?;
    eprintln!("mesh-standin: {} up (start {starts})", d.hostname);
    let remote = Arc::clone(&d);
    std::thread::spawn(move || {
        for conn in tcp.incoming().flatten() {
            let _ = serve(conn, |line| remote.remote(line));
        }
    });
    for conn in unix.incoming().flatten() {
        let _ = serve(conn, |line| d.local(line));
    }
    Ok(())
}

fn start_tasks(state_dir: &Path) -> Res<()> {
    let ns = mesh_dataplane::netns::Netns::ensure_in(&state_dir.join("netns"), "task1")
        .map_err(|e| format!("{e}"))?;
    let mut in_named = std::process::Command::new("sleep");
    in_named.arg("600");
    ns.enter_on_exec(&mut in_named).map_err(|e| e.to_string())?;
    let in_named = in_named.spawn().map_err(|e| format!("spawn task: {e}"))?;
    let in_anonymous = std::process::Command::new("unshare")
        .args(["-n", "sleep", "600"])
        .spawn()
        .map_err(|e| format!("spawn task: {e}"))?;
    let pids = format!("{} {}", in_named.id(), in_anonymous.id());
    std::fs::write(state_dir.join("tasks"), pids).map_err(|e| format!("write tasks: {e}"))
}

fn serve<S: std::io::Read + Write>(
    conn: S,
    answer: impl Fn(&str) -> String,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let reply = answer(line.trim());
    let conn = reader.get_mut();
    conn.write_all(reply.as_bytes())?;
    conn.write_all(b"\n")
}

fn ask<S: std::io::Read + Write>(conn: S, request: &str) -> Res<String> {
    let mut reader = BufReader::new(conn);
    reader
        .get_mut()
        .write_all(format!("{request}\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut reply = String::new();
    reader.read_line(&mut reply).map_err(|e| e.to_string())?;
    let reply = reply.trim().to_owned();
    if reply.starts_with("error") {
        Err(reply)
    } else {
        Ok(reply)
    }
}

fn ask_daemon(socket: &Path, request: &str) -> Res<String> {
    let conn =
        UnixStream::connect(socket).map_err(|e| format!("connect {}: {e}", socket.display()))?;
    ask(conn, request)
}

fn ask_host(addr: &str, request: &str) -> Res<String> {
    let addr: SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let conn = TcpStream::connect_timeout(&addr, Duration::from_secs(1))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    ask(conn, request)
}

fn cli(mut args: Vec<String>) -> Res<()> {
    let mut host = std::env::var("MESH_HOST").ok();
    if args.first().map(String::as_str) == Some("--host") {
        host = Some(args.get(1).cloned().ok_or("--host needs a value")?);
        args.drain(..2);
    }
    let socket = || -> Res<PathBuf> {
        let host = host.clone().ok_or("no --host or MESH_HOST")?;
        Ok(host
            .strip_prefix("unix://")
            .ok_or("--host must be unix://PATH")?
            .into())
    };
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    let reply = match words.as_slice() {
        ["info", ..] => ask_daemon(&socket()?, "info")?,
        ["init", "--advertise-addr", addr] => ask_daemon(&socket()?, &format!("init {addr}"))?,
        ["join-token", role, "-q"] => ask_daemon(&socket()?, &format!("token {role}"))?,
        ["join", "--token", token, "--advertise-addr", addr, manager] => {
            let info: Value = serde_json::from_str(&ask_daemon(&socket()?, "info")?)
                .map_err(|e| e.to_string())?;
            let hostname = info["hostname"].as_str().unwrap_or("?");
            let answer = ask_host(manager, &format!("join {hostname} {addr} {token}"))?;
            let role = answer.strip_prefix("ok ").ok_or(answer.clone())?;
            ask_daemon(&socket()?, &format!("joined {addr} {role}"))?
        }
        ["node", "ls", ..] => ask_daemon(&socket()?, "nodes")?,
        ["probe", addr] => ask_host(addr, "hello")?,
        _ => return Err(format!("unknown command {words:?}")),
    };
    println!("{reply}");
    Ok(())
}
