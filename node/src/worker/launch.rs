//! What a task's process is started with: its command (`mesh ...` meaning this binary), its
//! environment, its namespace, its `/etc/hosts` and `/etc/resolv.conf`, and its restart
//! policy, from the task the leader assigned.

use std::path::{Path, PathBuf};
use std::time::Duration;

use mesh_proto::Task;

use crate::runtime;

/// Where a task runs: this node (`node_id`, `hostname`), the task's namespace at `netns`,
/// what `mesh` in a command stands for, and the longest wait between restarts of a task that
/// keeps failing.
pub struct Host<'a> {
    pub node_id: &'a str,
    pub hostname: &'a str,
    pub netns: &'a Path,
    pub shim_binary: &'a Path,
    pub backoff_max: Duration,
}

/// The launch spec of `t` on `host`.
pub fn launch_spec(t: &Task, host: &Host<'_>) -> Result<runtime::TaskSpec, String> {
    let Host {
        node_id,
        hostname,
        netns,
        shim_binary,
        backoff_max,
    } = *host;
    let spec = t.spec.clone().unwrap_or_default();
    let mut argv = spec.command.clone();
    // `mesh ...` in a task means this very binary (whoami and friends).
    if argv.first().is_some_and(|a| a == "mesh") {
        argv[0] = shim_binary.display().to_string();
    }
    let mut rs = runtime::TaskSpec::new(t.id.clone(), argv);
    rs.name = t.name.clone();
    rs.env = spec
        .env
        .iter()
        .filter_map(|e| {
            e.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    for (k, v) in [
        ("MESH_TASK_NAME", t.name.as_str()),
        ("MESH_TASK_ID", t.id.as_str()),
        ("MESH_SERVICE_NAME", t.service_name.as_str()),
        ("MESH_SERVICE_ID", t.service_id.as_str()),
        ("MESH_NODE_ID", node_id),
        ("MESH_NODE_HOSTNAME", hostname),
    ] {
        rs.env.push((k.to_string(), v.to_string()));
    }
    if !spec.dir.is_empty() {
        rs.workdir = Some(PathBuf::from(&spec.dir));
    }
    rs.netns = Some(netns.to_path_buf());
    let first_ip = t
        .networks
        .first()
        .and_then(|a| a.addr.split('/').next().map(str::to_string));
    let mut hosts = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost\n");
    if let Some(ip) = first_ip {
        hosts.push_str(&format!(
            "{ip}\t{} {}\n",
            t.name,
            &t.id[..t.id.len().min(12)]
        ));
    }
    rs.hosts = Some(hosts);
    rs.resolv_conf = Some(crate::dns::RESOLV_CONF.to_string());
    rs.health = spec.health.as_ref().map(|h| {
        let (interval, timeout, retries, start_period) = mesh_common::task::health_settings(h);
        runtime::HealthCheck {
            cmd: h.cmd.clone(),
            interval,
            timeout,
            retries,
            start_period,
        }
    });
    let restart = spec.restart.unwrap_or_default();
    rs.restart = runtime::RestartPolicy {
        condition: match restart.condition() {
            mesh_proto::RestartCondition::Any => runtime::RestartCondition::Any,
            mesh_proto::RestartCondition::OnFailure => runtime::RestartCondition::OnFailure,
            mesh_proto::RestartCondition::None => runtime::RestartCondition::None,
        },
        delay: Duration::from_millis(restart.delay_ms),
        max_attempts: restart.max_attempts,
        backoff_max,
    };
    if spec.stop_grace_ms > 0 {
        rs.stop_grace = Duration::from_millis(spec.stop_grace_ms);
    }
    rs.validate().map_err(|e| e.to_string())?;
    Ok(rs)
}
