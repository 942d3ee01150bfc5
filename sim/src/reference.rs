//! Reference implementations the invariants hold the core to, written independently of
//! it: a second opinion that shares none of its code.

/// MQTT matching written independently of the core, on raw strings.
pub fn naive_match(filter: &str, name: &str) -> bool {
    let f: Vec<&str> = filter.split('.').collect();
    let n: Vec<&str> = name.split('.').collect();
    if name.starts_with('$') && (f[0] == "+" || f[0] == "#") {
        return false;
    }
    fn go(f: &[&str], n: &[&str]) -> bool {
        match (f.first(), n.first()) {
            (Some(&"#"), _) => true,
            (None, None) => true,
            (Some(&"+"), Some(_)) => go(&f[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&f[1..], &n[1..]),
            _ => false,
        }
    }
    go(&f, &n)
}
