//! The shared table of member validation cases (`crds/cases/member.yaml`): the specs that both the API
//! server's CEL rules and the agent's check of a file must accept or reject, naming the same field. The
//! agent's unit tests run it through `kubeha-agent check`'s validation; `e2e/tests/api.rs` through the real
//! API server's dry-run. Built only with the `cases` feature (the tests'), never into a binary.

use serde::Deserialize;
use serde_json::Value;

/// Which check a case is for, when a rule can live on one side only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// Only the agent's check of a file.
    File,
    /// Only the API server.
    Api,
}

/// One case: a member spec and what both checks must say of it.
#[derive(Clone, Debug)]
pub struct Case {
    /// What the case is, for failure messages.
    pub name: String,
    /// The member spec: the base with the case's changes merged in.
    pub spec: Value,
    /// The field both must name (`vrrp.advertInterval`, `health[0].weight`); `None`: both accept.
    pub rejected: Option<String>,
    /// Set when only one side checks this, for the reason the table gives.
    pub only: Option<Side>,
}

#[derive(Deserialize)]
struct Table {
    base: Value,
    cases: Vec<Row>,
}

#[derive(Deserialize)]
struct Row {
    name: String,
    set: Value,
    #[serde(default)]
    rejected: Option<String>,
    #[serde(default)]
    only: Option<Side>,
    #[serde(default)]
    #[allow(dead_code, reason = "the table's reason for `only`, read by people")]
    why: Option<String>,
}

/// The cases of `crds/cases/member.yaml`.
///
/// # Panics
///
/// When the table is not valid YAML of its shape: a test of this crate reads it.
pub fn member_cases() -> Vec<Case> {
    let table: Table =
        serde_norway::from_str(include_str!("../cases/member.yaml")).expect("crds/cases/member.yaml is a case table");
    table
        .cases
        .into_iter()
        .map(|row| {
            let mut spec = table.base.clone();
            merge(&mut spec, &row.set);
            Case { name: row.name, spec, rejected: row.rejected, only: row.only }
        })
        .collect()
}

/// RFC 7386 JSON merge patch: objects merge key by key, `null` removes a key, anything else replaces.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(changes) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    if let Value::Object(fields) = target {
        for (key, change) in changes {
            if change.is_null() {
                fields.remove(key);
            } else {
                merge(fields.entry(key.clone()).or_insert(Value::Null), change);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_table_reads_and_each_case_changes_the_base() {
        let cases = member_cases();
        assert!(cases.len() >= 40, "{}", cases.len());
        let base = &cases[0].spec;
        assert!(cases[1..].iter().all(|c| c.spec != *base), "a case that changes nothing tests nothing");
        let mut names: Vec<&str> = cases.iter().map(|c| c.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), cases.len(), "case names are unique");
    }

    #[test]
    fn a_merge_patch_merges_objects_removes_nulls_and_replaces_the_rest() {
        let mut v = json!({"a": 1, "b": {"c": 2, "d": 3}, "e": [1]});
        merge(&mut v, &json!({"b": {"c": null, "x": 4}, "e": [2], "a": null}));
        assert_eq!(v, json!({"b": {"d": 3, "x": 4}, "e": [2]}));
    }
}
