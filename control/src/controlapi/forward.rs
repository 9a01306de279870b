//! Relaying a control call to the leader: hop counting (no forwarding loops), the time
//! after which the original sender gave up (so a request held up in a broken connection is
//! never acted on after its sender reported a failure), and errors that name the target.

use std::time::Duration;

use mesh_common::auth::Caller;
use mesh_common::time::now_ms;
use tonic::{Request, Status};

const HOPS_KEY: &str = "mesh-hops";
const MAX_HOPS: u32 = 3;
const DEADLINE_KEY: &str = "mesh-give-up-at-ms";

/// A copy of `req` for the next hop, refusing forwarding loops. It carries the time after
/// which its sender has given up on it (the earliest of its own and that of the hop
/// before).
pub fn forward<T>(
    req: Request<T>,
    deadline: Duration,
    caller: &Caller,
) -> Result<Request<T>, Status> {
    let hops = req
        .metadata()
        .get(HOPS_KEY)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(0);
    if hops >= MAX_HOPS {
        return Err(Status::unavailable(
            "request forwarded too many times: the managers do not agree on a leader",
        ));
    }
    let mine = now_ms() + deadline.as_millis() as i64;
    let until = give_up_at(&req).map_or(mine, |earlier| earlier.min(mine));
    let mut out = Request::new(req.into_inner());
    out.metadata_mut().insert(HOPS_KEY, (hops + 1).into());
    out.metadata_mut().insert(DEADLINE_KEY, until.into());
    // The next hop sees this node's certificate: name who is really asking,
    // so a worker's request relayed by a manager is still a worker's.
    if let Some(node_id) = caller.node_id()
        && let Ok(v) = node_id.parse()
    {
        out.metadata_mut()
            .insert(crate::server::ON_BEHALF_OF_KEY, v);
    }
    Ok(out)
}

/// When the sender of a forwarded request gives up on it (unix ms).
fn give_up_at<T>(req: &Request<T>) -> Option<i64> {
    req.metadata()
        .get(DEADLINE_KEY)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Refuses a forwarded request whose sender already gave up on it.
pub fn check_deadline<T>(req: &Request<T>) -> Result<(), Status> {
    match give_up_at(req) {
        Some(at) if now_ms() > at => Err(Status::deadline_exceeded(
            "the request arrived after its sender gave up on it: not applied",
        )),
        _ => Ok(()),
    }
}

/// A forwarded call that did not reach its target gets a message naming it; statuses the
/// target itself answered pass through unchanged.
pub fn forward_failed(target: &str, status: Status) -> Status {
    if std::error::Error::source(&status).is_none() {
        return status;
    }
    Status::unavailable(format!(
        "cannot reach the manager at {target} ({}): if it just failed, a new leader is being elected; retry shortly",
        status.message()
    ))
}

/// A forwarded call with no answer in time. A write may still be applied later (it may be
/// queued at the leader): say so rather than claim it failed.
pub fn forward_timed_out(target: &str, deadline: Duration) -> Status {
    Status::unavailable(format!(
        "the manager at {target} did not answer within {:.0}s (unreachable?); a change requested may still be applied: check before retrying",
        deadline.as_secs_f64()
    ))
}

/// How long a forwarded call may take: the leader's own write timeout plus a margin, so its
/// no-quorum answer arrives before this gives up.
pub fn forward_deadline(raft: &crate::config::RaftConfig) -> Duration {
    raft.write_timeout() + Duration::from_secs(1)
}
