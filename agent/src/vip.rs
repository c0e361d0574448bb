//! The VIP on the interface, through netlink (never by running `ip`).
//!
//! The address is added with a kernel lifetime ([`lifetime_for`]: [`LIFETIME`] at the default timers) and
//! refreshed while this node is master, so the VIP cannot outlive its agent: after a SIGKILL the kernel
//! removes it by itself within the lifetime, instead of leaving it on a dead master for good (what
//! keepalived does).

use std::net::IpAddr;
use std::time::Duration;

use futures::TryStreamExt as _;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, CacheInfo};
use netlink_packet_route::link::LinkAttribute;
use rtnetlink::Handle;

use crate::config::{self, Vip};

/// How long the kernel keeps the VIP without a refresh. Whole seconds are the kernel's unit.
pub const LIFETIME: Duration = Duration::from_secs(2);
/// How often a master refreshes the lifetime: several refreshes per lifetime, so one slow one is harmless.
pub const REFRESH: Duration = Duration::from_millis(400);

/// The lifetime for a virtual router whose backups take over after `master_down` of silence: long enough
/// that a crashed master keeps the VIP until a backup has it. The proxy runs on (its own container) and
/// serves the clients that still arrive; a VIP gone before the takeover would leave them with no host at
/// all (1 s adverts: 2.3 s with the VIP nowhere after an agent SIGKILL, measured before this rule). The
/// kernel counts whole seconds and may drop an address up to a second early, and the last refresh may be
/// [`REFRESH`] before the crash: hence master_down + 1.5 s, rounded up, and never below [`LIFETIME`].
pub fn lifetime_for(master_down: Duration) -> Duration {
    let wanted = (master_down + Duration::from_millis(1500)).as_secs_f64().ceil();
    LIFETIME.max(Duration::from_secs_f64(wanted))
}

/// What can go wrong with the interface or the address.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The netlink socket could not be opened.
    #[error("cannot open a netlink socket: {0}")]
    Socket(std::io::Error),
    /// The configured interface does not exist.
    #[error(
        "interface '{0}' does not exist on this node: set `interface` (spec.interface of a HighAvailabilityCluster) to one it has"
    )]
    NoInterface(String),
    /// No interface was configured, and none (or several) of this node's has an address in the VIP's subnet.
    #[error("{0}")]
    Unresolved(String),
    /// The kernel refused, usually for lack of CAP_NET_ADMIN.
    #[error("netlink {what} failed: {source}{hint}")]
    Netlink {
        /// What was attempted.
        what: &'static str,
        /// The kernel's answer.
        source: rtnetlink::Error,
        /// A hint for the usual cause.
        hint: &'static str,
    },
}

fn netlink(what: &'static str) -> impl FnOnce(rtnetlink::Error) -> NetError {
    move |source| {
        let denied = matches!(&source, rtnetlink::Error::NetlinkError(e) if e.raw_code() == -libc::EPERM);
        let hint = if denied { " (kubeha-agent needs CAP_NET_ADMIN to manage the VIP)" } else { "" };
        NetError::Netlink { what, source, hint }
    }
}

/// The VIP on one interface.
#[derive(Debug, Clone)]
pub struct VipOnLink {
    handle: Handle,
    ifindex: u32,
    vip: Vip,
    lifetime: Duration,
}

impl VipOnLink {
    /// Opens netlink and finds `interface`.
    pub async fn open(interface: &str, vip: Vip) -> Result<Self, NetError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(NetError::Socket)?;
        tokio::spawn(connection);
        let mut links = handle.link().get().match_name(interface.to_string()).execute();
        let ifindex = match links.try_next().await {
            Ok(Some(link)) => link.header.index,
            Ok(None) => return Err(NetError::NoInterface(interface.into())),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => {
                return Err(NetError::NoInterface(interface.into()));
            }
            Err(e) => return Err(netlink("link lookup")(e)),
        };
        Ok(Self { handle, ifindex, vip, lifetime: LIFETIME })
    }

    /// Sets the lifetime of the next additions and refreshes.
    pub fn set_lifetime(&mut self, lifetime: Duration) {
        self.lifetime = lifetime;
    }

    /// The interface's index.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Adds the VIP, or renews its lifetime if it is there.
    pub async fn add(&self) -> Result<(), NetError> {
        let secs = u32::try_from(self.lifetime.as_secs()).unwrap_or(u32::MAX);
        let mut req = self.handle.address().add(self.ifindex, self.vip.address, self.vip.prefix).replace();
        let msg = req.message_mut();
        // No prefix route of its own: the node's primary address already has one, and the VIP must never
        // become what the kernel picks as source for the subnet.
        let mut flags = AddressFlags::Noprefixroute;
        if self.vip.address.is_ipv6() {
            flags |= AddressFlags::Nodad; // taking over must not wait for duplicate address detection
        }
        msg.attributes.push(AddressAttribute::Flags(flags));
        let mut lifetime = CacheInfo::default();
        lifetime.ifa_preferred = secs;
        lifetime.ifa_valid = secs;
        msg.attributes.push(AddressAttribute::CacheInfo(lifetime));
        req.execute().await.map_err(netlink("adding the VIP"))
    }

    /// Removes the VIP if it is there.
    pub async fn remove(&self) -> Result<(), NetError> {
        let Some(msg) = self.find().await? else {
            return Ok(());
        };
        match self.handle.address().del(msg).execute().await {
            Ok(()) => Ok(()),
            // Gone in between (the lifetime ran out): what we wanted.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EADDRNOTAVAIL => Ok(()),
            Err(e) => Err(netlink("removing the VIP")(e)),
        }
    }

    /// Whether the VIP is on the interface.
    pub async fn present(&self) -> Result<bool, NetError> {
        Ok(self.find().await?.is_some())
    }

    async fn find(&self) -> Result<Option<AddressMessage>, NetError> {
        let mut addrs = self.handle.address().get().set_link_index_filter(self.ifindex).execute();
        while let Some(msg) = addrs.try_next().await.map_err(netlink("listing addresses"))? {
            if address_of(&msg) == Some(self.vip.address) {
                return Ok(Some(msg));
            }
        }
        Ok(None)
    }

    /// Every address on the interface, with its prefix and whether it is permanent: what the VIP is checked
    /// against before the driver starts (crate::vipcheck).
    pub async fn on_link(&self) -> Result<Vec<crate::vipcheck::OnLink>, NetError> {
        let mut addrs = self.handle.address().get().set_link_index_filter(self.ifindex).execute();
        let mut out = Vec::new();
        while let Some(msg) = addrs.try_next().await.map_err(netlink("listing addresses"))? {
            out.extend(on_link_of(&msg));
        }
        Ok(out)
    }

    /// The interface's primary address of the VIP's family: what adverts are sent from and compared by.
    pub async fn primary(&self) -> Result<Option<IpAddr>, NetError> {
        let mut addrs = self.handle.address().get().set_link_index_filter(self.ifindex).execute();
        let mut found = None;
        while let Some(msg) = addrs.try_next().await.map_err(netlink("listing addresses"))? {
            let Some(a) = address_of(&msg) else { continue };
            let v6_link_local = matches!(a, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80);
            let has = |flag: AddressFlags| {
                msg.attributes.iter().any(|at| matches!(at, AddressAttribute::Flags(f) if f.contains(flag)))
            };
            // A tentative address (IPv6 duplicate address detection still running) cannot be a source yet: the
            // kernel would send from another address and the pseudo-header checksum would not match it.
            let secondary = has(AddressFlags::Secondary) || has(AddressFlags::Tentative);
            // VRRPv3 over IPv6 is sent from the link-local address (RFC 9568 §5.1.2.1).
            let wanted = a.is_ipv4() == self.vip.address.is_ipv4() && (a.is_ipv4() || v6_link_local);
            if a != self.vip.address && wanted && !secondary && found.is_none() {
                found = Some(a);
            }
        }
        Ok(found)
    }

    /// The interface's MAC address (what gratuitous ARP announces).
    pub async fn mac(&self) -> Result<Option<[u8; 6]>, NetError> {
        let mut links = self.handle.link().get().match_index(self.ifindex).execute();
        let Some(link) = links.try_next().await.map_err(netlink("link lookup"))? else {
            return Ok(None);
        };
        Ok(link.attributes.iter().find_map(|a| match a {
            LinkAttribute::Address(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok(),
            _ => None,
        }))
    }

    /// Whether the interface `name` is up with carrier.
    pub async fn named_link_up(&self, name: &str) -> Result<bool, NetError> {
        let mut links = self.handle.link().get().match_name(name.to_string()).execute();
        let Some(link) = links.try_next().await.map_err(netlink("link state"))? else {
            return Ok(false);
        };
        let carrier = link.attributes.iter().any(|a| matches!(a, LinkAttribute::Carrier(1)));
        Ok(carrier && link.header.flags.contains(netlink_packet_route::link::LinkFlags::Up))
    }
}

fn on_link_of(msg: &AddressMessage) -> Option<crate::vipcheck::OnLink> {
    let address = address_of(msg)?;
    // IFA_F_PERMANENT (0x80) fits the header's 8 bits of flags, which the kernel always fills.
    let permanent = msg.header.flags.contains(AddressHeaderFlags::Permanent);
    Some(crate::vipcheck::OnLink { address, prefix: msg.header.prefix_len, permanent })
}

/// `spec` with its interface: the configured one, or, when it names none, the one interface of this host
/// (in this network namespace) with an address in the VIP's subnet (crate::vipcheck::choose_interface).
/// Listing links and addresses needs no privilege.
pub async fn with_interface(
    spec: &kubeha_crds::HighAvailabilityMemberSpec,
) -> Result<kubeha_crds::HighAvailabilityMemberSpec, NetError> {
    let mut spec = spec.clone();
    let Some(vip) = config::vip(&spec).filter(|_| spec.interface.is_none()) else { return Ok(spec) };
    let (connection, handle, _) = rtnetlink::new_connection().map_err(NetError::Socket)?;
    let connection = tokio::spawn(connection);
    let interfaces = interfaces(&handle).await;
    connection.abort();
    let chosen = crate::vipcheck::choose_interface(vip.address, &interfaces?).map_err(NetError::Unresolved)?;
    tracing::info!(interface = %chosen, vip = %vip.address, "no interface configured: using the one in the VIP's subnet");
    spec.interface = Some(chosen);
    Ok(spec)
}

/// Every interface of this host by name, with its addresses.
async fn interfaces(handle: &Handle) -> Result<Vec<(String, Vec<crate::vipcheck::OnLink>)>, NetError> {
    let mut names = std::collections::BTreeMap::new();
    let mut links = handle.link().get().execute();
    while let Some(link) = links.try_next().await.map_err(netlink("listing links"))? {
        if let Some(name) = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        }) {
            names.insert(link.header.index, (name, Vec::new()));
        }
    }
    let mut addrs = handle.address().get().execute();
    while let Some(msg) = addrs.try_next().await.map_err(netlink("listing addresses"))? {
        if let (Some((_, on)), Some(a)) = (names.get_mut(&msg.header.index), on_link_of(&msg)) {
            on.push(a);
        }
    }
    Ok(names.into_values().collect())
}

/// What [`check_here`] could check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Checked {
    /// The VIP was checked against this interface on this host (the configured one, or the one found).
    Interface(String),
    /// The interface is not on this host (a config checked off its node): nothing to check against.
    NoInterface,
}

/// Checks `spec`'s VIP against its interface on this host, as the driver will before it starts
/// (crate::vipcheck): `kubeha-agent check` and `kubeha-agent bootstrap` refuse what the agent would.
/// Listing addresses needs no privilege.
pub async fn check_here(spec: &kubeha_crds::HighAvailabilityMemberSpec) -> Result<Checked, String> {
    let spec = &with_interface(spec).await.map_err(|e| e.to_string())?;
    let (Some(vip), Some(interface)) = (config::vip(spec), spec.interface.as_deref()) else {
        return Ok(Checked::NoInterface);
    };
    let link = match VipOnLink::open(interface, vip).await {
        Ok(link) => link,
        Err(NetError::NoInterface(_)) => return Ok(Checked::NoInterface),
        Err(e) => return Err(e.to_string()),
    };
    let on_link = link.on_link().await.map_err(|e| e.to_string())?;
    crate::vipcheck::check(vip.address, interface, spec.priority == 255, &on_link)
        .map(|()| Checked::Interface(interface.to_string()))
}

fn address_of(msg: &AddressMessage) -> Option<IpAddr> {
    // IFA_LOCAL is the address of this host on point-to-point links, IFA_ADDRESS otherwise.
    let local = msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    local.or_else(|| {
        msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lifetime_outlasts_the_backups_wait() {
        let ms = Duration::from_millis;
        // 100 ms adverts (master down 0.35 s): the default.
        assert_eq!(lifetime_for(ms(351)), LIFETIME);
        // 1 s adverts (3.26 s): 5 s, so that at least 3.6 s remain after a crash right before a refresh.
        assert_eq!(lifetime_for(ms(3_258)), Duration::from_secs(5));
        for down in [ms(30), ms(351), ms(1_000), ms(3_258), ms(12_000)] {
            let worst = lifetime_for(down) - Duration::from_secs(1) - REFRESH;
            assert!(worst > down, "{down:?}: the VIP may go {worst:?} after a crash");
        }
    }
}
