//! The keep-alive policies replayed: fixed keep-alives, `keep_alive: adaptive` under several
//! idle timeouts (its cap), and `keep_alive: priced` at several prices.

/// Fixed keep-alives replayed, in minutes.
pub const FIXED_MINUTES: [u64; 7] = [1, 2, 5, 10, 20, 30, 60];
/// Idle timeouts (the cap) of the adaptive policies replayed, in minutes.
pub const ADAPTIVE_MINUTES: [u64; 5] = [5, 10, 20, 30, 60];
/// The priced policies replayed: idle timeout (the cap) in minutes, and the price of a warm
/// start in MB·s (`keep_alive_price`).
pub const PRICED: [(u64, u64); 7] = [
    (60, 76_800),
    (60, 96_000),
    (60, 115_200),
    (60, 134_400),
    (60, 153_600),
    (60, 192_000),
    (60, 230_400),
];
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Policy {
    Fixed(u64),
    Adaptive(u64),
    /// Idle timeout in minutes, price of a warm start in MB·s.
    Priced(u64, u64),
}

impl Policy {
    pub fn label(self) -> String {
        match self {
            Policy::Fixed(m) => format!("fixed {m} min"),
            Policy::Adaptive(m) => format!("adaptive (idle_timeout {m} min)"),
            Policy::Priced(m, price) => {
                format!("priced {} (idle_timeout {m} min)", price_label(price))
            }
        }
    }

    /// Where it goes in the tables: fixed, adaptive, priced, each by minutes (and price).
    pub fn order(self) -> (u8, u64, u64) {
        match self {
            Policy::Fixed(m) => (0, m, 0),
            Policy::Adaptive(m) => (1, m, 0),
            Policy::Priced(m, price) => (2, m, price),
        }
    }
}

/// A price of a warm start, in MB·s and as memory × minutes of a 128 MB container.
pub fn price_label(price: u64) -> String {
    format!(
        "{price} MB·s (128 MB × {} min)",
        price as f64 / 128.0 / 60.0
    )
}

/// Every policy, in the order they are queued: fixed, adaptive, then the `priced` list; only
/// those whose label starts with one of `only` when it is given.
pub fn policies(priced: &[(u64, u64)], only: Option<&str>) -> Vec<Policy> {
    let only: Vec<&str> = only.map(|o| o.split(',').collect()).unwrap_or_default();
    FIXED_MINUTES
        .iter()
        .map(|m| Policy::Fixed(*m))
        .chain(ADAPTIVE_MINUTES.iter().map(|m| Policy::Adaptive(*m)))
        .chain(priced.iter().map(|(m, p)| Policy::Priced(*m, *p)))
        .filter(|p| only.is_empty() || only.iter().any(|k| p.label().starts_with(k)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_order_and_the_only_filter() {
        assert_eq!(Policy::Fixed(10).label(), "fixed 10 min");
        assert_eq!(Policy::Adaptive(5).label(), "adaptive (idle_timeout 5 min)");
        assert_eq!(
            Policy::Priced(60, 76_800).label(),
            "priced 76800 MB·s (128 MB × 10 min) (idle_timeout 60 min)"
        );
        assert_eq!(policies(&PRICED, None).len(), 19);
        assert_eq!(
            policies(&PRICED, Some("fixed 10 ,adaptive (idle_timeout 5 ")),
            vec![Policy::Fixed(10), Policy::Adaptive(5)]
        );
        assert_eq!(
            policies(&[(30, 1000)], Some("priced")),
            vec![Policy::Priced(30, 1000)]
        );
        // An empty prefix matches every policy, as before.
        assert_eq!(policies(&PRICED, Some("")).len(), 19);
        assert!(Policy::Fixed(60).order() < Policy::Adaptive(1).order());
    }
}
