//! `mesh service logs`: a manager reads each task's output from the node that runs it. The
//! output comes from tasks on other hosts, labelled with its task and node, in the order each
//! task wrote it; `--tail` and `--raw` shape it; `--follow` streams new lines, also of tasks
//! that start later; a dead node's task is reported, not waited for; only managers may read a
//! node's task output. Real `mesh` daemons, one per host namespace; needs root.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_common::channels::ChannelProvider;
use mesh_common::channels::TlsChannels;
use mesh_proto::NodeRole;
use mesh_proto::TaskLogsRequest;
use mesh_proto::logs_client::LogsClient;
use mesh_tests::ops::{CLI_BOUND, mentions, refused};
use mesh_tests::services::{CONVERGE_BOUND, TaskRow, cli_ok, wait, wait_running};
use mesh_tests::{Host, Lab, Poll, grpc};

const SETTLE: Duration = Duration::from_secs(15);

/// A service whose tasks write `hello` on stderr, then `tick 1`, `tick 2`, ... on stdout, five
/// a second.
fn create_talker(host: &Host, name: &str, replicas: usize) {
    let r = replicas.to_string();
    let script = "echo hello >&2; i=0; while :; do i=$((i+1)); echo \"tick $i\"; sleep 0.2; done";
    cli_ok(
        host,
        &[
            "service",
            "create",
            "--name",
            name,
            "--replicas",
            &r,
            "--",
            "sh",
            "-c",
            script,
        ],
        CONVERGE_BOUND,
    )
    .unwrap();
}

/// One printed line: `<task name>.<task id prefix>@<node> | <text>`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Line {
    label: String,
    text: String,
}

fn parse_lines(out: &str) -> Vec<Line> {
    out.lines()
        .filter_map(|l| l.split_once(" | "))
        .map(|(label, text)| Line {
            label: label.trim_end().to_owned(),
            text: text.to_owned(),
        })
        .collect()
}

/// The label `service logs` gives `task`.
fn label(task: &TaskRow) -> String {
    format!(
        "{}.{}@{}",
        task.name,
        &task.id[..task.id.len().min(12)],
        task.node
    )
}

/// The numbers of the `tick N` lines of each label, in the order printed.
fn ticks(lines: &[Line]) -> BTreeMap<String, Vec<u64>> {
    let mut by = BTreeMap::<String, Vec<u64>>::new();
    for l in lines {
        if let Some(n) = l.text.strip_prefix("tick ").and_then(|n| n.parse().ok()) {
            by.entry(l.label.clone()).or_default().push(n);
        }
    }
    by
}

fn consecutive(ns: &[u64]) -> bool {
    ns.windows(2).all(|w| w[1] == w[0] + 1)
}

/// `mesh service logs ARGS` on `host`, which must succeed: (stdout, stderr).
fn logs(host: &Host, args: &[&str]) -> (String, String) {
    let mut argv = vec!["service", "logs"];
    argv.extend_from_slice(args);
    let out = host.cli_with_timeout(&argv, CLI_BOUND).unwrap();
    assert!(out.success(), "{out}");
    (out.stdout, out.stderr)
}

#[test]
fn logs_of_replicas_on_other_hosts_are_labelled_in_order_and_shaped_by_flags() {
    let lab = mesh_tests::cluster(1, 2).unwrap();
    let n1 = lab.host(1);
    create_talker(n1, "talk", 3);
    let tasks = wait_running(&lab, n1, "talk", 3, SETTLE).unwrap();
    let on_workers = tasks.iter().filter(|t| t.node != n1.name()).count();
    assert!(on_workers >= 2, "replicas not spread: {tasks:?}");
    let labels: Vec<String> = tasks.iter().map(label).collect();

    // Every replica's output, from its own node, each task's lines in order from tick 1.
    let (out, err) = wait(
        &lab,
        "10 ticks of every replica in `service logs`",
        SETTLE,
        || {
            let (out, err) = logs(n1, &["talk"]);
            let by = ticks(&parse_lines(&out));
            let ready = labels
                .iter()
                .all(|l| by.get(l).is_some_and(|ns| ns.len() >= 10));
            Ok(if ready {
                Poll::Ready((out, err))
            } else {
                Poll::Pending(format!("ticks by label {by:?}, want labels {labels:?}"))
            })
        },
    )
    .unwrap();
    let lines = parse_lines(&out);
    for (label, ns) in ticks(&lines) {
        assert!(labels.contains(&label), "unknown label {label}: {out}");
        assert!(ns[0] == 1 && consecutive(&ns), "{label}: {ns:?}");
    }
    // stderr lines go to stderr, labelled the same way.
    let hellos = parse_lines(&err);
    assert_eq!(hellos.len(), 3, "{err}");
    assert!(
        hellos
            .iter()
            .all(|l| l.text == "hello" && labels.contains(&l.label)),
        "{err}"
    );

    // --tail: the last N lines of each task (hello is long gone from the last 2).
    let (out, err) = logs(n1, &["talk", "--tail", "2"]);
    let by = ticks(&parse_lines(&out));
    assert_eq!(by.len(), 3, "{out}");
    assert!(
        by.values().all(|ns| ns.len() == 2 && consecutive(ns)),
        "{by:?}"
    );
    assert!(err.is_empty(), "{err}");

    // One task by name, raw (no label), with timestamps.
    let one = tasks.iter().find(|t| t.node != n1.name()).unwrap();
    let (out, _) = logs(n1, &[&one.name, "--raw", "--timestamps", "--tail", "3"]);
    let raw: Vec<&str> = out.lines().collect();
    assert_eq!(raw.len(), 3, "{out}");
    for l in &raw {
        let (time, text) = l.split_once(' ').unwrap();
        assert!(time.ends_with('Z') && text.starts_with("tick "), "{l}");
    }

    // Bad input: one line each, nothing printed to stdout.
    let r = refused(n1, ["service", "logs", "nope"], CLI_BOUND).unwrap();
    assert!(mentions(&r.message, &["nope"]), "{r:?}");
    let r = refused(n1, ["service", "logs", "talk", "--tail", "x"], CLI_BOUND).unwrap();
    assert!(r.message.starts_with("--tail:"), "{r:?}");

    only_managers_read_a_nodes_task_output(&lab, one);

    // A dead node's task is reported on stderr; the others' output still comes, and the
    // command fails because output is missing.
    let dead = lab.host_named(&one.node).unwrap();
    dead.cut().unwrap();
    dead.kill().unwrap();
    let out = wait(
        &lab,
        "`service logs` to report the dead node's task",
        SETTLE,
        || {
            let out = n1.cli_with_timeout(["service", "logs", "talk", "--tail", "1"], CLI_BOUND)?;
            Ok(if !out.success() && out.stderr.contains(&one.name) {
                Poll::Ready(out)
            } else {
                Poll::Pending(out.to_string())
            })
        },
    )
    .unwrap();
    assert!(mentions(&out.stderr, &["down", "did not answer"]), "{out}");
    let printed = ticks(&parse_lines(&out.stdout));
    let alive: Vec<&String> = labels.iter().filter(|l| **l != label(one)).collect();
    assert!(alive.iter().all(|l| printed.contains_key(*l)), "{out}");
}

/// A worker's control port serves task output to a manager's certificate only.
fn only_managers_read_a_nodes_task_output(lab: &Lab, task: &TaskRow) {
    let node = lab.host_named(&task.node).unwrap();
    let worker = lab
        .hosts()
        .iter()
        .find(|h| h.name() != node.name() && h.number() != 1)
        .unwrap();
    let addr = node.control_addr();
    let read_as = |who: &Host| {
        let creds = grpc::credentials(who).unwrap();
        let id = task.id.clone();
        let addr = addr.clone();
        grpc::in_host(lab.host(1), async move || {
            let ch = TlsChannels::new(&creds)
                .unwrap()
                .node_channel(&addr, NodeRole::Worker)
                .unwrap();
            let req = TaskLogsRequest {
                task_id: id,
                follow: false,
                tail: Some(1),
            };
            let mut stream = LogsClient::new(ch).task_logs(req).await?.into_inner();
            let mut records = 0;
            while let Some(b) = stream.message().await? {
                records += b.records.len();
            }
            Ok::<_, tonic::Status>(records)
        })
        .unwrap()
    };
    assert_eq!(read_as(lab.host(1)).unwrap(), 1);
    let denied = read_as(worker).unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
}

/// `mesh service logs -f` running in the background, its stdout gathered line by line.
struct Follower {
    child: Child,
    lines: Arc<Mutex<Vec<Line>>>,
}

impl Follower {
    fn start(host: &Host, target: &str) -> Follower {
        let mut cmd = host.command("mesh").unwrap();
        cmd.args(["service", "logs", "--follow", "--tail", "0", target])
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().extend(parse_lines(&l));
            }
        });
        Follower { child, lines }
    }

    fn ticks(&self) -> BTreeMap<String, Vec<u64>> {
        ticks(&self.lines.lock().unwrap())
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn follow_streams_new_lines_and_tasks_that_start_later() {
    let lab = mesh_tests::cluster(1, 2).unwrap();
    let n1 = lab.host(1);
    create_talker(n1, "talk", 2);
    let first = wait_running(&lab, n1, "talk", 2, SETTLE).unwrap();
    let follower = Follower::start(n1, "talk");
    let want: Vec<String> = first.iter().map(label).collect();
    wait(
        &lab,
        "5 new ticks of both replicas in the follow",
        SETTLE,
        || {
            let by = follower.ticks();
            Ok(
                if want
                    .iter()
                    .all(|l| by.get(l).is_some_and(|ns| ns.len() >= 5))
                {
                    Poll::Ready(())
                } else {
                    Poll::Pending(format!("{by:?}"))
                },
            )
        },
    )
    .unwrap();

    // A replica that starts after the follow began is followed too.
    cli_ok(n1, &["service", "scale", "talk=3"], CONVERGE_BOUND).unwrap();
    let all = wait_running(&lab, n1, "talk", 3, SETTLE).unwrap();
    let new = all
        .iter()
        .find(|t| !first.iter().any(|f| f.id == t.id))
        .unwrap();
    wait(
        &lab,
        "ticks of the new replica in the follow",
        SETTLE,
        || {
            let by = follower.ticks();
            Ok(by.get(&label(new)).is_some_and(|ns| ns.len() >= 5))
        },
    )
    .unwrap();

    // Every task's lines arrived in order, none twice; the first replicas' from where the
    // follow began (--tail 0), the new one's from its start.
    let by = follower.ticks();
    for (l, ns) in &by {
        assert!(consecutive(ns), "{l}: {ns:?}");
    }
    assert_eq!(by[&label(new)][0], 1, "{by:?}");
}
