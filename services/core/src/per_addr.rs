//! Open connections per client address, against a limit: one address must
//! not hold every place. The HTTP listener counts TCP peers with it; the
//! gateway counts WebSockets by client address (the forwarded one behind a
//! trusted proxy). A place is held by an [`AddrSlot`] and given back when
//! it drops.

use ipnet::IpNet;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

type Open = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// Places per address: at most `max` each (0: no limit).
#[derive(Debug)]
pub struct PerAddr {
    max: usize,
    exempt: Vec<IpNet>,
    open: Open,
}

/// Whether an address got a place.
#[derive(Debug)]
pub enum Taken {
    /// Counted: the slot holds the place until it drops.
    Slot(AddrSlot),
    /// Not counted (no limit, or an exempt address).
    Free,
    /// The address is at its limit.
    Full,
}

impl PerAddr {
    /// At most `max` places per address (0: no limit); addresses in
    /// `exempt` (trusted proxies, whose clients all share their address)
    /// are not counted.
    pub fn new(max: usize, exempt: Vec<IpNet>) -> Self {
        Self {
            max,
            exempt,
            open: Arc::default(),
        }
    }

    /// One more place for `ip`.
    pub fn take(&self, ip: IpAddr) -> Taken {
        if self.max == 0 || self.exempt.iter().any(|n| n.contains(&ip)) {
            return Taken::Free;
        }
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max {
            return Taken::Full;
        }
        *n += 1;
        Taken::Slot(AddrSlot {
            ip,
            open: self.open.clone(),
        })
    }

    /// Addresses holding at least one place.
    pub fn addresses(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// One place under an address's limit; given back on drop.
#[derive(Debug)]
pub struct AddrSlot {
    ip: IpAddr,
    open: Open,
}

impl Drop for AddrSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_max_places_and_a_dropped_slot_gives_one_back() {
        let a: IpAddr = "203.0.113.1".parse().unwrap();
        let b: IpAddr = "203.0.113.2".parse().unwrap();
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let per = PerAddr::new(2, vec!["10.0.0.0/8".parse().unwrap()]);
        let first = per.take(a);
        assert!(matches!(first, Taken::Slot(_)));
        let other = per.take(b);
        assert!(matches!(other, Taken::Slot(_)));
        assert!(matches!(per.take(proxy), Taken::Free));
        assert_eq!(per.addresses(), 2);
        drop((first, other));
        assert_eq!(per.addresses(), 0, "dropped slots give their places back");
    }

    #[test]
    fn past_the_limit_an_address_is_full_until_a_slot_drops() {
        let a: IpAddr = "203.0.113.1".parse().unwrap();
        let per = PerAddr::new(2, Vec::new());
        let held = [per.take(a), per.take(a)];
        assert!(matches!(per.take(a), Taken::Full));
        assert_eq!(per.addresses(), 1);
        drop(held);
        assert!(matches!(per.take(a), Taken::Slot(_)));
        assert!(matches!(PerAddr::new(0, Vec::new()).take(a), Taken::Free));
    }
}
