//! Field normalizers: compare desired and actual values as Proxmox means them, so a
//! faithful round-trip (a description that comes back with a trailing newline) is not
//! read as drift.
//!
//! A [`Normalizers`] registry maps a config key to a function from text to its
//! canonical text. This module only compares; it never decides what to write.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

/// Turns a value into its canonical form for comparison.
pub(crate) type Normalizer = Box<dyn Fn(&str) -> Cow<'_, str> + Send + Sync>;

/// Config key → normalizer. Keys without one compare byte for byte.
pub struct Normalizers {
    by_field: BTreeMap<String, Normalizer>,
}

impl fmt::Debug for Normalizers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.by_field.keys()).finish()
    }
}

impl Default for Normalizers {
    /// The normalizers Proxmox needs: `description` without its trailing newlines.
    fn default() -> Self {
        let mut n = Normalizers::none();
        n.register("description", Box::new(description));
        n
    }
}

impl Normalizers {
    /// An empty registry: everything compares byte for byte.
    pub fn none() -> Self {
        Normalizers {
            by_field: BTreeMap::new(),
        }
    }

    /// Adds (or replaces) the normalizer of `field`.
    pub fn register(&mut self, field: &str, f: Normalizer) {
        self.by_field.insert(field.to_owned(), f);
    }

    /// The canonical form of `value` for `field`.
    pub fn normalize<'a>(&self, field: &str, value: &'a str) -> Cow<'a, str> {
        match self.by_field.get(field) {
            Some(f) => f(value),
            None => Cow::Borrowed(value),
        }
    }

    /// Whether `desired` and `actual` mean the same for `field`; an absent actual
    /// value equals only a desired value that normalizes to empty.
    pub fn equal(&self, field: &str, desired: &str, actual: Option<&str>) -> bool {
        self.normalize(field, desired) == self.normalize(field, actual.unwrap_or(""))
    }
}

/// Proxmox stores a description as a comment block and returns it with a trailing
/// newline; trailing newlines (and a `\r` before one) carry no meaning.
pub(crate) fn description(value: &str) -> Cow<'_, str> {
    Cow::Borrowed(value.trim_end_matches(['\n', '\r']))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn description_trailing_newline_is_not_drift() {
        let n = Normalizers::default();
        assert!(n.equal("description", "web", Some("web\n")));
        assert!(n.equal("description", "web\n", Some("web")));
        assert!(n.equal("description", "line1\nline2", Some("line1\nline2\n")));
        assert!(!n.equal("description", "web", Some("web2\n")));
        assert!(
            !n.equal("description", "web", Some(" web\n")),
            "leading space is content"
        );
        assert!(n.equal("description", "", None));
        assert!(!n.equal("description", "web", None));
    }

    #[test]
    fn unregistered_fields_compare_exactly() {
        let n = Normalizers::default();
        assert!(!n.equal("onboot", "1", Some("true")));
        assert!(n.equal("onboot", "1", Some("1")));
    }

    #[test]
    fn a_synthetic_boolean_coercion_plugs_in() {
        let mut n = Normalizers::default();
        n.register(
            "onboot",
            Box::new(|v: &str| {
                Cow::Borrowed(match v.trim().to_ascii_lowercase().as_str() {
                    "1" | "true" | "yes" | "on" => "1",
                    "0" | "false" | "no" | "off" | "" => "0",
                    _ => return Cow::Owned(v.to_owned()),
                })
            }),
        );
        assert!(n.equal("onboot", "1", Some("true")));
        assert!(n.equal("onboot", "yes", Some("1")));
        assert!(n.equal("onboot", "0", None));
        assert!(!n.equal("onboot", "1", Some("off")));
        assert!(!n.equal("onboot", "1", Some("maybe")));
        // The defaults stay in place beside it.
        assert!(n.equal("description", "x", Some("x\n")));
    }
}
