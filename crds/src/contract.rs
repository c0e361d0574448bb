//! The names the operator writes and the agents read: labels, finalizers, Lease names and field managers.
//! Defined here once, so that the two binaries cannot drift apart (a renamed label on one side would leave
//! every member unselected and no test of either side alone would notice).

/// Label on every member and heartbeat Lease: the cluster it belongs to.
pub const CLUSTER_LABEL: &str = "kubeha.io/cluster";
/// Label on every member and heartbeat Lease: the node whose agent runs it (agents select their members by
/// it).
pub const NODE_LABEL: &str = "kubeha.io/node";
/// Finalizer on every member: removed by the agent once it has released the VIP, so that deleting a member
/// never leaves the address behind (docs/adr/0003).
pub const RELEASE_FINALIZER: &str = "kubeha.io/vip-release";
/// The operator's finalizer on clusters: members are released before the cluster goes.
pub const CLEANUP_FINALIZER: &str = "kubeha.io/cleanup";
/// The prefix of a member's heartbeat Lease name.
pub const HEARTBEAT_PREFIX: &str = "kubeha-member-";
/// The prefix of a cluster's VIP Lease name (election mode Lease).
pub const VIP_LEASE_PREFIX: &str = "kubeha-vip-";
/// The field manager of everything the operator writes.
pub const OPERATOR_MANAGER: &str = "kubeha-operator";
/// The field manager of what an agent's VIP part writes (the member status but the proxy's fields, the
/// heartbeat Lease).
pub const AGENT_MANAGER: &str = "kubeha-agent";
/// The field manager of what an agent's proxy part writes (proxyBackends, proxyError, proxyHeartbeatTime).
pub const AGENT_PROXY_MANAGER: &str = "kubeha-agent-proxy";

/// The name of a member's heartbeat Lease (in the agents' namespace), renewed by its agent.
pub fn heartbeat_lease(member: &str) -> String {
    format!("{HEARTBEAT_PREFIX}{member}")
}

/// The name of a cluster's VIP Lease (election mode Lease), held by the agent whose node holds the VIP.
pub fn vip_lease(cluster: &str) -> String {
    format!("{VIP_LEASE_PREFIX}{cluster}")
}

/// The member a heartbeat Lease belongs to, from the Lease's name; `None` for any other Lease.
pub fn member_of_heartbeat(lease: &str) -> Option<&str> {
    lease.strip_prefix(HEARTBEAT_PREFIX).filter(|m| !m.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_lease_names_its_member_and_other_leases_name_none() {
        assert_eq!(member_of_heartbeat(&heartbeat_lease("control-plane-n1")), Some("control-plane-n1"));
        assert_eq!(member_of_heartbeat("kubeha-operator"), None);
        assert_eq!(member_of_heartbeat("kubeha-member-"), None);
    }
}
