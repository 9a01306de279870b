//! The conformance suite of load balancers: one set of cases that every [`LoadBalancer`] must
//! pass, run against [`FakeLb`](crate::lb::fake::FakeLb) and against [`NftLb`](crate::lb::NftLb)
//! inside a fresh namespace (the `lb_conformance` integration test).
//!
//! Each case takes a fresh [`Harness`] and says in its name what it proves. Use
//! [`lb_conformance_tests!`](crate::lb_conformance_tests) to get one `#[test]` per case for a
//! harness factory. Flows are put into connection tracking and counted by the harness (on
//! Linux with the `conntrack` tool), so the flush is judged by what it leaves behind.

use std::any::Any;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use crate::lb::{LbChange, LbService, LbTable, LoadBalancer, plan, reconcile};

/// A load balancer under test and its surroundings.
pub struct Harness<L> {
    pub lb: L,
    /// A namespace that exists, holds nothing of ours, and is unique to this harness.
    pub netns: String,
    /// The name of a namespace that does not exist.
    pub missing: String,
    /// Puts into the connection tracking of `netns` a flow whose replies come from the given
    /// backend, as a flow balanced to it would.
    pub add_flow: Box<dyn Fn(Ipv4Addr)>,
    /// How many flows to the given backend the connection tracking of `netns` holds.
    pub flows_to: Box<dyn Fn(Ipv4Addr) -> usize>,
    /// Dropped after `lb`: cleans up whatever the harness made.
    pub guard: Box<dyn Any>,
}

/// One `#[test]` per conformance case, each with a fresh harness from `$factory()`.
#[macro_export]
macro_rules! lb_conformance_tests {
    ($factory:path) => {
        $crate::lb_conformance_tests!(@cases $factory;
            observe_after_apply_returns_what_was_applied,
            an_upsert_replaces_the_backend_set_in_one_change,
            remove_deletes_one_service_and_absent_is_success,
            clear_removes_everything_and_is_idempotent,
            flush_forgets_the_flows_of_the_given_backends_only,
            a_missing_namespace_is_an_error_naming_it
        );
    };
    (@cases $factory:path; $($case:ident),*) => {
        $(
            #[test]
            fn $case() {
                $crate::lb::conformance::$case($factory());
            }
        )*
    };
}

const VIP_A: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 5);
const VIP_B: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 6);

fn backend(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 96, 1, n)
}

fn svc(vip: Ipv4Addr, backends: &[u8]) -> LbService {
    LbService::new(vip, backends.iter().map(|n| backend(*n)))
}

fn table(services: impl IntoIterator<Item = LbService>) -> LbTable {
    services.into_iter().collect()
}

fn observe<L: LoadBalancer>(h: &Harness<L>) -> LbTable {
    h.lb.observe(&h.netns).expect("observe")
}

pub fn observe_after_apply_returns_what_was_applied<L: LoadBalancer>(h: Harness<L>) {
    assert_eq!(
        observe(&h),
        LbTable::new(),
        "a fresh namespace holds nothing"
    );
    let desired = table([svc(VIP_A, &[1, 2, 3]), svc(VIP_B, &[])]);
    let changes = reconcile(&h.lb, &h.netns, &desired).expect("reconcile");
    assert_eq!(
        changes,
        vec![
            LbChange::Upsert(svc(VIP_A, &[1, 2, 3])),
            LbChange::Upsert(svc(VIP_B, &[]))
        ]
    );
    assert_eq!(observe(&h), desired);
    assert_eq!(plan(&desired, &observe(&h)), vec![]);
    assert_eq!(reconcile(&h.lb, &h.netns, &desired).expect("again"), vec![]);
}

pub fn an_upsert_replaces_the_backend_set_in_one_change<L: LoadBalancer>(h: Harness<L>) {
    let before = table([svc(VIP_A, &[1, 2]), svc(VIP_B, &[7])]);
    reconcile(&h.lb, &h.netns, &before).expect("reconcile");
    h.lb.apply(&h.netns, &[LbChange::Upsert(svc(VIP_A, &[2, 3, 4]))])
        .expect("replace");
    assert_eq!(
        observe(&h),
        table([svc(VIP_A, &[2, 3, 4]), svc(VIP_B, &[7])]),
        "the new set exactly, the other service untouched"
    );
    // Down to none (refusing) and back: each is one change.
    for backends in [&[][..], &[5][..]] {
        h.lb.apply(&h.netns, &[LbChange::Upsert(svc(VIP_A, backends))])
            .expect("replace");
        assert_eq!(observe(&h).get(VIP_A), Some(&svc(VIP_A, backends)));
    }
}

pub fn remove_deletes_one_service_and_absent_is_success<L: LoadBalancer>(h: Harness<L>) {
    reconcile(
        &h.lb,
        &h.netns,
        &table([svc(VIP_A, &[1]), svc(VIP_B, &[2])]),
    )
    .expect("reconcile");
    for _ in 0..2 {
        h.lb.apply(&h.netns, &[LbChange::Remove(VIP_A)])
            .expect("remove");
        assert_eq!(observe(&h), table([svc(VIP_B, &[2])]));
    }
    h.lb.apply(&h.netns, &[LbChange::Remove(Ipv4Addr::new(10, 96, 9, 9))])
        .expect("remove a vip never added");
    assert_eq!(observe(&h), table([svc(VIP_B, &[2])]));
}

pub fn clear_removes_everything_and_is_idempotent<L: LoadBalancer>(h: Harness<L>) {
    h.lb.clear(&h.netns).expect("clear an empty namespace");
    reconcile(&h.lb, &h.netns, &table([svc(VIP_A, &[1]), svc(VIP_B, &[])])).expect("reconcile");
    h.lb.clear(&h.netns).expect("clear");
    assert_eq!(observe(&h), LbTable::new());
    h.lb.clear(&h.netns).expect("clear again");
    // Usable again afterwards.
    let desired = table([svc(VIP_B, &[3])]);
    reconcile(&h.lb, &h.netns, &desired).expect("reconcile after clear");
    assert_eq!(observe(&h), desired);
}

pub fn flush_forgets_the_flows_of_the_given_backends_only<L: LoadBalancer>(h: Harness<L>) {
    reconcile(&h.lb, &h.netns, &table([svc(VIP_A, &[1, 2])])).expect("reconcile");
    (h.add_flow)(backend(1));
    (h.add_flow)(backend(2));
    assert_eq!(((h.flows_to)(backend(1)), (h.flows_to)(backend(2))), (1, 1));
    h.lb.flush_conntrack(&h.netns, &BTreeSet::from([backend(1)]))
        .expect("flush");
    assert_eq!(
        ((h.flows_to)(backend(1)), (h.flows_to)(backend(2))),
        (0, 1),
        "only the named backend's flows go"
    );
    h.lb.flush_conntrack(&h.netns, &BTreeSet::from([backend(1), backend(9)]))
        .expect("a flush with nothing to delete is success");
    h.lb.flush_conntrack(&h.netns, &BTreeSet::new())
        .expect("an empty flush");
    assert_eq!((h.flows_to)(backend(2)), 1);
}

pub fn a_missing_namespace_is_an_error_naming_it<L: LoadBalancer>(h: Harness<L>) {
    let m = h.missing.as_str();
    let errors = [
        h.lb.observe(m).err(),
        h.lb.apply(m, &[LbChange::Upsert(svc(VIP_A, &[1]))]).err(),
        h.lb.flush_conntrack(m, &BTreeSet::from([backend(1)])).err(),
        h.lb.clear(m).err(),
    ];
    for err in errors {
        let err = err.expect("refused");
        assert!(err.is_missing_netns(), "{err}");
        assert!(err.to_string().contains(m), "{err}");
    }
}
