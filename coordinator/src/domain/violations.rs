//! Field violations collected while parsing a request: every problem is reported at once, each
//! under the proto path of the field (`amount.currency`, `items[3].quantity`).

use std::fmt;

/// One invalid field: its proto path and what is wrong with it, in words a person understands.
///
/// A description never repeats a value that could be secret (a card number, a key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

/// Every violated field of a request; empty means valid.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Violations(pub Vec<FieldViolation>);

impl Violations {
    pub fn new() -> Self {
        Self::default()
    }

    /// Violations holding exactly one field.
    pub fn single(field: impl Into<String>, description: impl Into<String>) -> Self {
        let mut v = Self::new();
        v.push(field, description);
        v
    }

    pub fn push(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation {
            field: field.into(),
            description: description.into(),
        });
    }

    /// Keeps the value of `result`, or records its error under `field` and returns `None`.
    pub fn check<T>(&mut self, field: impl Into<String>, result: Result<T, String>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(description) => {
                self.push(field, description);
                None
            }
        }
    }

    /// Moves every violation of `other` into `self`.
    pub fn append(&mut self, mut other: Violations) {
        self.0.append(&mut other.0);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, FieldViolation> {
        self.0.iter()
    }

    /// The violated fields' names, in order.
    pub fn fields(&self) -> Vec<&str> {
        self.0.iter().map(|v| v.field.as_str()).collect()
    }

    /// `Ok(())` when empty, else `Err(self)`.
    pub fn into_result(self) -> Result<(), Violations> {
        if self.is_empty() { Ok(()) } else { Err(self) }
    }
}

impl<'a> IntoIterator for &'a Violations {
    type Item = &'a FieldViolation;
    type IntoIter = std::slice::Iter<'a, FieldViolation>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl IntoIterator for Violations {
    type Item = FieldViolation;
    type IntoIter = std::vec::IntoIter<FieldViolation>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl fmt::Display for Violations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, v) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", v.field, v.description)?;
        }
        Ok(())
    }
}

impl std::error::Error for Violations {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_and_displays_every_violation() {
        let mut v = Violations::new();
        assert!(v.is_empty());
        assert_eq!(v.check("a", Ok::<_, String>(1)), Some(1));
        assert_eq!(v.check::<()>("b", Err("is bad".into())), None);
        v.push("c", "is worse");
        assert_eq!(v.len(), 2);
        assert_eq!(v.fields(), ["b", "c"]);
        assert_eq!(v.to_string(), "b: is bad; c: is worse");
        assert!(v.clone().into_result().is_err());
        assert!(Violations::new().into_result().is_ok());
        let mut w = Violations::single("d", "x");
        w.append(v);
        assert_eq!(w.fields(), ["d", "b", "c"]);
    }
}
