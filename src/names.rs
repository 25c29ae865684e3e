//! Server names: the one definition of what the provider names a server, used by `check` (a
//! `name-prefix` that could never pass is refused there), by the create path and by the
//! mutation guard. The API reads a `name` selector as an unescaped regular expression, so a name
//! holds nothing but letters, digits, `-` and `_`.

/// Kamatera's name rule allows 40 characters; the suffix takes 12 (`-` and 11 hex digits).
pub const MAX_NAME_PREFIX: usize = 40 - 12;

fn plain(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

/// Why `prefix` cannot start the provider's server names, if it cannot: the first character
/// that is not allowed, with its column (1-based), or the length.
pub fn prefix_problem(prefix: &str) -> Option<String> {
    if let Some((i, c)) = prefix.chars().enumerate().find(|(_, c)| !plain(*c)) {
        return Some(format!(
            "{c:?} (column {}) is not allowed: a name prefix holds only letters, digits, '-' and '_' (the API reads names as regular expressions)",
            i + 1
        ));
    }
    let len = prefix.chars().count();
    (len > MAX_NAME_PREFIX).then(|| {
        format!("{len} characters is too long: at most {MAX_NAME_PREFIX} (names end in '-' and 11 hex digits, 40 in all)")
    })
}

/// A new server name: `<prefix>-<11 lowercase hex>` (just the hex when the prefix is empty).
pub fn new_server_name(prefix: &str) -> String {
    let hex = format!("{:016x}", rand::random::<u64>());
    let suffix = &hex[..11];
    if prefix.is_empty() {
        suffix.to_string()
    } else {
        format!("{prefix}-{suffix}")
    }
}

/// Whether `name` is one [`new_server_name`] makes for `prefix`: a valid prefix, a dash and 11
/// lowercase hex digits.
pub fn is_server_name(prefix: &str, name: &str) -> bool {
    if prefix_problem(prefix).is_some() {
        return false;
    }
    let hex = if prefix.is_empty() {
        Some(name)
    } else {
        name.strip_prefix(prefix).and_then(|r| r.strip_prefix('-'))
    };
    hex.is_some_and(|h| {
        h.len() == 11
            && h.chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_have_eleven_hex_chars() {
        let n = new_server_name("demo-general");
        let suffix = n.strip_prefix("demo-general-").expect("prefix");
        assert_eq!(suffix.len(), 11);
        assert!(
            suffix
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_eq!(new_server_name("").len(), 11);
        assert_ne!(new_server_name("x"), new_server_name("x"));
    }

    #[test]
    fn every_prefix_check_accepts_is_one_the_guard_accepts() {
        for prefix in ["", "k8s", "A_b-9", &"x".repeat(MAX_NAME_PREFIX)] {
            assert_eq!(prefix_problem(prefix), None, "{prefix}");
            assert!(is_server_name(prefix, &new_server_name(prefix)), "{prefix}");
        }
        for (prefix, shown) in [
            ("a.b", "'.' (column 2)"),
            ("pool(1)", "'(' (column 5)"),
            ("x)", "')' (column 2)"),
            ("a|b", "'|' (column 2)"),
            ("é", "'é' (column 1)"),
            ("a b", "' ' (column 2)"),
        ] {
            let problem = prefix_problem(prefix).expect(prefix);
            assert!(problem.starts_with(shown), "{prefix}: {problem}");
            // The guard refuses such names, so check must refuse the prefix.
            assert!(
                !is_server_name(prefix, &new_server_name(prefix)),
                "{prefix}"
            );
        }
        let long = "x".repeat(MAX_NAME_PREFIX + 1);
        assert!(prefix_problem(&long).is_some_and(|p| p.contains("too long")));
        assert!(!is_server_name(&long, &new_server_name(&long)));
        assert!(!is_server_name("k8s", "k8s-0123456789A"));
        assert!(!is_server_name("k8s", "k8s-0123456789"));
        assert!(!is_server_name("k8s", "k8s0123456789a"));
    }
}
