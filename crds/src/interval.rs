//! Durations as people write them in Kubernetes objects: `100ms`, `2s`.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written as a whole number of milliseconds or seconds (`100ms`, `2s`): the forms VRRP timers
/// are specified in, and exact, unlike fractions of a second. Zero is allowed (`0s`) where a field says so.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Interval(pub Duration);

/// Why a string is not an [`Interval`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a duration: write a whole number of milliseconds or seconds, like 100ms or 2s")]
pub struct IntervalError(pub String);

impl Interval {
    /// An interval of `ms` milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        Self(Duration::from_millis(ms))
    }

    /// An interval of `s` seconds.
    pub const fn from_secs(s: u64) -> Self {
        Self(Duration::from_secs(s))
    }

    /// The interval in whole milliseconds.
    pub fn as_millis(&self) -> u64 {
        u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX)
    }
}

impl FromStr for Interval {
    type Err = IntervalError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || IntervalError(s.to_string());
        let (digits, per_unit) = if let Some(d) = s.strip_suffix("ms") {
            (d, 1)
        } else if let Some(d) = s.strip_suffix('s') {
            (d, 1000)
        } else {
            return Err(err());
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.len() > 12 {
            return Err(err());
        }
        let n: u64 = digits.parse().map_err(|_| err())?;
        Ok(Self::from_millis(n * per_unit))
    }
}

impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.as_millis();
        if ms.is_multiple_of(1000) { write!(f, "{}s", ms / 1000) } else { write!(f, "{ms}ms") }
    }
}

impl From<Interval> for Duration {
    fn from(i: Interval) -> Self {
        i.0
    }
}

impl Serialize for Interval {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Interval {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Cow::<'de, str>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Interval {
    fn schema_name() -> Cow<'static, str> {
        "Interval".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "maxLength": 16,
            "x-kubernetes-validations": [{
                "rule": "self.matches('^[0-9]{1,12}(ms|s)$')",
                "message": "must be a whole number of milliseconds or seconds, like 100ms or 2s",
            }],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_the_two_forms() {
        for (text, ms, back) in [
            ("100ms", 100, "100ms"),
            ("2s", 2000, "2s"),
            ("1500ms", 1500, "1500ms"),
            ("2000ms", 2000, "2s"),
            ("0s", 0, "0s"),
        ] {
            let i: Interval = text.parse().unwrap();
            assert_eq!(i.as_millis(), ms, "{text}");
            assert_eq!(i.to_string(), back, "{text}");
        }
    }

    #[test]
    fn rejects_what_the_schema_rejects() {
        for bad in ["", "s", "ms", "1.5s", "1m", "10", "-1s", " 1s", "1 s", "1000000000000s", "1h"] {
            assert_eq!(bad.parse::<Interval>(), Err(IntervalError(bad.to_string())), "{bad:?}");
        }
    }

    #[test]
    fn round_trips_through_json() {
        let i = Interval::from_millis(250);
        let json = serde_json::to_string(&i).unwrap();
        assert_eq!(json, "\"250ms\"");
        assert_eq!(serde_json::from_str::<Interval>(&json).unwrap(), i);
        let err = serde_json::from_str::<Interval>("\"1.5s\"").unwrap_err().to_string();
        assert!(err.contains("like 100ms or 2s"), "{err}");
    }
}
