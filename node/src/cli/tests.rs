//! The CLI's output formats, filters and help, in memory.

use clap::CommandFactory;
use mesh_proto::{
    Network, NetworkAttachment, NetworkSpec, NetworkView, NodeRole, NodeStatus, NodeView,
    PortConfig, Service, ServiceSpec, ServiceView, Task, TaskSpec, TaskState, TaskStatus, TaskView,
};
use serde_json::json;

use super::Cli;
use super::filter::TaskFilter;
use super::format::{self, Format, MAX_TEMPLATE, Row, RowKind};
use super::network::{NETWORK_ROWS, network_row};
use super::output::{NODE_ROWS, node_row, print_version};
use super::service_view::{SERVICE_ROWS, TASK_ROWS, service_row, task_row};
use crate::version::BuildInfo;

const LONG_ID: &str = "0123456789abcdef0123456789";

fn service() -> ServiceView {
    ServiceView {
        service: Some(Service {
            id: LONG_ID.into(),
            spec: Some(ServiceSpec {
                name: "web".into(),
                replicas: 3,
                task: Some(TaskSpec {
                    command: vec!["mesh".into(), "whoami".into()],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ports: vec![PortConfig {
                target_port: 80,
                published_port: 8080,
                ..Default::default()
            }],
            ..Default::default()
        }),
        running: 2,
        desired: 3,
        problems: vec![],
    }
}

fn task(name: &str, node: &str, desired: TaskState, state: TaskState) -> TaskView {
    let mut t = Task {
        id: format!("{name}-{LONG_ID}"),
        name: name.into(),
        service_name: "web".into(),
        node_id: format!("id-{node}"),
        networks: vec![NetworkAttachment {
            addr: "10.0.1.5/24".into(),
            ..Default::default()
        }],
        status: Some(TaskStatus {
            err: if state == TaskState::Failed {
                "exit 1".into()
            } else {
                String::new()
            },
            ..Default::default()
        }),
        ..Default::default()
    };
    t.set_desired_state(desired);
    t.status.as_mut().unwrap().set_state(state);
    TaskView {
        task: Some(t),
        node_hostname: node.into(),
    }
}

fn network() -> NetworkView {
    NetworkView {
        network: Some(Network {
            id: LONG_ID.into(),
            spec: Some(NetworkSpec {
                name: "appnet".into(),
                driver: "overlay".into(),
                attachable: true,
                ..Default::default()
            }),
            subnet: "10.0.1.0/24".into(),
            vni: 4097,
            ..Default::default()
        }),
        peers: vec![],
        tasks: 2,
    }
}

fn node(id: &str, hostname: &str) -> NodeView {
    let mut n = NodeView {
        id: id.into(),
        hostname: hostname.into(),
        addr: "192.168.1.10".into(),
        manager_status: "leader".into(),
        ..Default::default()
    };
    n.set_role(NodeRole::Manager);
    n.set_status(NodeStatus::Ready);
    n
}

/// What `text` prints for `rows`, or the error line.
fn render(kind: &RowKind, text: &str, rows: &[Row]) -> Result<String, String> {
    let format = Format::parse(text, Some(kind)).map_err(|e| format!("{e:#}"))?;
    let mut out = Vec::new();
    format::write_rows(&mut out, kind, &format, rows).map_err(|e| format!("{e:#}"))?;
    Ok(String::from_utf8(out).unwrap())
}

#[test]
fn service_rows_render_templates() {
    let rows = vec![service_row(&service(), false)];
    assert_eq!(render(&SERVICE_ROWS, "{{.Name}}", &rows).unwrap(), "web\n");
    assert_eq!(
        render(&SERVICE_ROWS, "{{.ID}} {{.Replicas}} {{.Mode}}", &rows).unwrap(),
        "0123456789ab 2/3 replicated\n"
    );
    assert_eq!(
        render(&SERVICE_ROWS, "{{.Ports}}|{{.Command}}", &rows).unwrap(),
        "*:8080->80/tcp|mesh whoami\n"
    );
    let full = vec![service_row(&service(), true)];
    assert_eq!(
        render(&SERVICE_ROWS, "{{.ID}}", &full).unwrap(),
        format!("{LONG_ID}\n")
    );
}

#[test]
fn json_of_a_row_has_every_field() {
    let rows = vec![service_row(&service(), false)];
    let out = render(&SERVICE_ROWS, "{{json .}}", &rows).unwrap();
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        v,
        json!({"ID": "0123456789ab", "Name": "web", "Mode": "replicated", "Replicas": "2/3",
               "Ports": "*:8080->80/tcp", "Command": "mesh whoami"})
    );
    assert_eq!(
        render(&SERVICE_ROWS, "{{json .Name}}", &rows).unwrap(),
        "\"web\"\n"
    );
}

#[test]
fn task_rows_render_templates() {
    let rows = vec![
        task_row(
            &task("web.1", "node1", TaskState::Running, TaskState::Running),
            false,
        ),
        task_row(
            &task("web.2", "node2", TaskState::Shutdown, TaskState::Failed),
            false,
        ),
    ];
    assert_eq!(
        render(
            &TASK_ROWS,
            "{{.Name}} {{.Node}} {{.DesiredState}} {{.CurrentState}} {{.Error}}",
            &rows
        )
        .unwrap(),
        "web.1 node1 running running \nweb.2 node2 shutdown failed exit 1\n"
    );
    assert_eq!(
        render(
            &TASK_ROWS,
            "{{.ID}}|{{.Service}}|{{.Addresses}}",
            &rows[..1]
        )
        .unwrap(),
        "web.1-012345|web|10.0.1.5/24\n"
    );
}

#[test]
fn network_and_node_rows_render_templates() {
    let rows = vec![network_row(&network(), false)];
    assert_eq!(
        render(
            &NETWORK_ROWS,
            "{{.ID}} {{.Name}} {{.Driver}} {{.Scope}} {{.Subnet}} {{.VNI}} {{.Tasks}} {{.Attachable}}",
            &rows
        )
        .unwrap(),
        "0123456789ab appnet overlay swarm 10.0.1.0/24 4097 2 true\n"
    );
    let rows = vec![
        node_row(&node("n1", "node1"), "n1"),
        node_row(&node("n2", "node2"), "n1"),
    ];
    assert_eq!(
        render(
            &NODE_ROWS,
            "{{.ID}} {{.Self}} {{.Hostname}} {{.Status}} {{.Role}} {{.ManagerStatus}}",
            &rows
        )
        .unwrap(),
        "n1 true node1 ready manager leader\nn2 false node2 ready manager leader\n"
    );
}

#[test]
fn table_templates_get_a_header_and_aligned_columns() {
    let rows = vec![
        task_row(
            &task("web.1", "node1", TaskState::Running, TaskState::Running),
            false,
        ),
        task_row(
            &task("web.10", "n2", TaskState::Running, TaskState::Running),
            false,
        ),
    ];
    // As typed in a shell's single quotes: a backslash and a t.
    let out = render(
        &TASK_ROWS,
        r"table {{.Name}}\t{{.Node}}\t{{.DesiredState}}",
        &rows,
    );
    assert_eq!(
        out.unwrap(),
        "NAME     NODE    DESIRED STATE\n\
         web.1    node1   running\n\
         web.10   n2      running\n"
    );
    let rows = vec![network_row(&network(), false)];
    assert_eq!(
        render(&NETWORK_ROWS, r"table {{.ID}}\t{{.Name}}", &rows).unwrap(),
        "NETWORK ID     NAME\n0123456789ab   appnet\n"
    );
}

#[test]
fn the_default_table_is_the_builtin_one() {
    let rows = vec![service_row(&service(), false)];
    assert_eq!(
        render(&SERVICE_ROWS, "table", &rows).unwrap(),
        "ID             NAME   MODE         REPLICAS   PORTS\n\
         0123456789ab   web    replicated   2/3        *:8080->80/tcp\n"
    );
    let rows = vec![task_row(
        &task("web.1", "node1", TaskState::Running, TaskState::Running),
        false,
    )];
    let out = render(&TASK_ROWS, "table", &rows).unwrap();
    assert!(
        out.starts_with(
            "ID             NAME    NODE    DESIRED STATE   CURRENT STATE   ADDRESSES     ERROR\n"
        ),
        "{out}"
    );
    assert!(matches!(
        Format::parse("json", Some(&TASK_ROWS)),
        Ok(Format::Json)
    ));
}

#[test]
fn quiet_prints_ids_one_a_line() {
    let rows = vec![
        task_row(
            &task("web.1", "node1", TaskState::Running, TaskState::Running),
            false,
        ),
        task_row(
            &task("web.2", "node2", TaskState::Running, TaskState::Running),
            true,
        ),
    ];
    let mut out = Vec::new();
    format::write_ids(&mut out, &TASK_ROWS, &rows).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        format!("web.1-012345\nweb.2-{LONG_ID}\n")
    );
}

#[test]
fn bad_templates_fail_with_one_line() {
    for (text, expect) in [
        ("{{.Name", "is not a valid template: a `{{` is never closed"),
        ("{{.Name}} {{.ID", "a `{{` is never closed"),
        (
            "{{.Nope}}",
            "no field \"Nope\"; the fields are ID, Name, Mode",
        ),
        ("table {{.Nope}}", "no field \"Nope\""),
        ("{{nofunc .Name}}", "is not a valid template"),
    ] {
        let err = render(&SERVICE_ROWS, text, &[]).unwrap_err();
        assert!(err.contains(expect), "{text}: {err}");
        assert!(!err.contains('\n'), "{text}: {err}");
    }
    let long = format!("{{{{.Name}}}}{}", " ".repeat(MAX_TEMPLATE));
    let err = render(&SERVICE_ROWS, &long, &[]).unwrap_err();
    assert!(err.contains("at most 4096"), "{err}");
    // Inspect prints documents: no table.
    assert!(Format::parse("table", None).is_err());
    assert!(Format::parse("table {{.name}}", None).is_err());
}

#[test]
fn inspect_templates_see_the_json_document() {
    let docs = vec![json!({"name": "web", "ports": [{"published": 8080}], "replicas": 3})];
    let print = |text: &str| {
        let format = Format::parse(text, None).unwrap();
        let mut out = Vec::new();
        format::write_docs(&mut out, &format, &docs).unwrap();
        String::from_utf8(out).unwrap()
    };
    assert_eq!(print("{{.name}} {{.replicas}}"), "web 3\n");
    assert_eq!(print("{{json .ports}}"), "[{\"published\":8080}]\n");
    assert_eq!(print("{{range .ports}}{{.published}}{{end}}"), "8080\n");
    assert_eq!(
        print("json"),
        format!("{}\n", serde_json::to_string_pretty(&docs).unwrap())
    );
}

#[test]
fn version_prints_the_client_and_the_server_that_answered() {
    let client = BuildInfo::this_binary();
    let server = BuildInfo {
        version: "9.9.9".into(),
        git_commit: "0123abc".into(),
        os: "linux".into(),
        arch: "aarch64".into(),
        ..client.clone()
    };
    let print = |text: &str, server: Option<&BuildInfo>| {
        let format = if text == "table" {
            Format::Table
        } else {
            Format::parse(text, None).unwrap()
        };
        let mut out = Vec::new();
        print_version(&mut out, &format, &client, server).unwrap();
        String::from_utf8(out).unwrap()
    };
    let version = env!("CARGO_PKG_VERSION");
    let table = print("table", Some(&server));
    let (c, s) = table.split_once("\n\nServer:\n").expect("a Server section");
    assert!(c.starts_with("Client:\n"), "{table}");
    assert!(
        c.contains(&format!(" Version:      {version}\n")),
        "{table}"
    );
    assert!(c.contains(" API version:  1\n"), "{table}");
    assert!(c.contains(&format!(" Rust version: {}\n", client.rust_version)));
    assert!(s.contains(" Version:      9.9.9\n"), "{table}");
    assert!(s.contains(" Git commit:   0123abc\n"), "{table}");
    assert!(s.ends_with(" OS/Arch:      linux/aarch64\n"), "{table}");
    // No daemon: the client's part only.
    let alone = print("table", None);
    assert!(!alone.contains("Server"), "{alone}");
    assert!(alone.starts_with("Client:\n"), "{alone}");

    let v: serde_json::Value = serde_json::from_str(&print("json", Some(&server))).unwrap();
    assert_eq!(v["Client"]["Version"], version);
    assert_eq!(v["Client"]["ApiVersion"], "1");
    assert_eq!(v["Server"]["Version"], "9.9.9");
    assert_eq!(v["Server"]["GitCommit"], "0123abc");
    let v: serde_json::Value = serde_json::from_str(&print("json", None)).unwrap();
    assert!(v["Server"].is_null(), "{v}");
    assert_eq!(
        print("{{.Client.Version}}", Some(&server)),
        format!("{version}\n")
    );
    assert_eq!(
        print(
            "{{.Server.Version}} {{.Server.Os}}/{{.Server.Arch}}",
            Some(&server)
        ),
        "9.9.9 linux/aarch64\n"
    );
}

fn filtered(items: &[&str], tasks: &[TaskView]) -> Vec<String> {
    let items: Vec<String> = items.iter().map(|s| s.to_string()).collect();
    let f = TaskFilter::parse(&items).unwrap();
    tasks
        .iter()
        .filter(|t| f.matches(t))
        .map(|t| t.task.as_ref().unwrap().name.clone())
        .collect()
}

#[test]
fn task_filters() {
    let tasks = vec![
        task("web.1", "node1", TaskState::Running, TaskState::Running),
        task("web.2", "node2", TaskState::Shutdown, TaskState::Failed),
        task("web.3", "node2", TaskState::Running, TaskState::Pending),
        task("api.1", "node1", TaskState::New, TaskState::Pending),
    ];
    assert_eq!(filtered(&[], &tasks).len(), 4);
    assert_eq!(
        filtered(&["desired-state=running"], &tasks),
        ["web.1", "web.3"]
    );
    assert_eq!(filtered(&["desired-state=shutdown"], &tasks), ["web.2"]);
    assert_eq!(filtered(&["desired-state=accepted"], &tasks), ["api.1"]);
    // Values of one key are alternatives...
    assert_eq!(
        filtered(
            &["desired-state=shutdown", "desired-state=accepted"],
            &tasks
        ),
        ["web.2", "api.1"]
    );
    // ... keys must all match.
    assert_eq!(
        filtered(&["desired-state=running", "node=node2"], &tasks),
        ["web.3"]
    );
    assert_eq!(filtered(&["node=id-node1"], &tasks), ["web.1", "api.1"]);
    assert_eq!(filtered(&["name=web.2"], &tasks), ["web.2"]);
    assert_eq!(filtered(&["name=api"], &tasks), ["api.1"]);
    assert_eq!(filtered(&["id=web.3-"], &tasks), ["web.3"]);
    for bad in ["desired-state=gone", "colour=red", "node"] {
        let err = TaskFilter::parse(&[bad.to_string()]).unwrap_err();
        assert!(err.to_string().starts_with("--filter: "), "{bad}: {err}");
    }
}

/// Every argument of every command says what it is for in `--help`.
#[test]
fn every_argument_has_help() {
    fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if matches!(id, "help" | "version") || arg.is_hide_set() {
                continue;
            }
            if arg.get_help().is_none() && arg.get_long_help().is_none() {
                missing.push(format!("{path} {id}"));
            }
        }
        for sub in cmd.get_subcommands() {
            if sub.is_hide_set() {
                continue;
            }
            walk(sub, &format!("{path} {}", sub.get_name()), missing);
        }
    }
    let mut missing = Vec::new();
    walk(&Cli::command(), "mesh", &mut missing);
    assert!(missing.is_empty(), "arguments without help: {missing:#?}");
}
