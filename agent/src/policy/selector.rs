//! Label selectors as NetworkPolicy uses them (`metav1.LabelSelector`):
//! `matchLabels` and `matchExpressions` (In, NotIn, Exists, DoesNotExist),
//! all ANDed; an empty selector selects everything.
use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;

use super::model::{Labels, PolicyError};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// One `matchExpressions` entry.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    pub values: BTreeSet<String>,
}

impl Requirement {
    pub fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            Operator::In => value.is_some_and(|v| self.values.contains(v)),
            // As apimachinery: a missing key satisfies NotIn.
            Operator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LabelSelector {
    pub match_labels: BTreeMap<String, String>,
    pub match_expressions: Vec<Requirement>,
}

impl LabelSelector {
    /// The empty selector: selects everything.
    pub fn everything() -> Self {
        Self::default()
    }

    /// `matchLabels` only.
    pub fn labels<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        LabelSelector {
            match_labels: pairs.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            match_expressions: Vec::new(),
        }
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }

    /// From the API's form. Rejects what the API server would: an unknown
    /// operator, In/NotIn without values, Exists/DoesNotExist with values.
    pub fn from_k8s(selector: &meta::LabelSelector) -> Result<Self, PolicyError> {
        let mut match_expressions = Vec::new();
        for e in selector.match_expressions.iter().flatten() {
            let operator = match e.operator.as_str() {
                "In" => Operator::In,
                "NotIn" => Operator::NotIn,
                "Exists" => Operator::Exists,
                "DoesNotExist" => Operator::DoesNotExist,
                other => {
                    return Err(PolicyError::Selector {
                        key: e.key.clone(),
                        reason: format!("unknown operator {other:?}"),
                    })
                }
            };
            let values: BTreeSet<String> = e.values.iter().flatten().cloned().collect();
            let needs_values = matches!(operator, Operator::In | Operator::NotIn);
            if needs_values == values.is_empty() {
                let reason = if needs_values {
                    format!("{operator:?} needs values")
                } else {
                    format!("{operator:?} takes no values")
                };
                return Err(PolicyError::Selector { key: e.key.clone(), reason });
            }
            match_expressions.push(Requirement { key: e.key.clone(), operator, values });
        }
        Ok(LabelSelector { match_labels: selector.match_labels.clone().unwrap_or_default(), match_expressions })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn req(key: &str, operator: Operator, values: &[&str]) -> Requirement {
        Requirement { key: key.into(), operator, values: values.iter().map(|v| v.to_string()).collect() }
    }

    #[test]
    fn requirements_table() {
        use Operator::*;
        let ab = labels(&[("pod", "a"), ("tier", "web")]);
        let none = labels(&[]);
        #[rustfmt::skip]
        let rows = [
            (req("pod", In, &["a", "b"]), &ab, true),
            (req("pod", In, &["b"]), &ab, false),
            (req("pod", In, &["a"]), &none, false),
            (req("pod", NotIn, &["b"]), &ab, true),
            (req("pod", NotIn, &["a"]), &ab, false),
            (req("pod", NotIn, &["a"]), &none, true),
            (req("tier", Exists, &[]), &ab, true),
            (req("x", Exists, &[]), &ab, false),
            (req("x", DoesNotExist, &[]), &ab, true),
            (req("tier", DoesNotExist, &[]), &ab, false),
        ];
        for (i, (r, l, want)) in rows.iter().enumerate() {
            assert_eq!(r.matches(l), *want, "row {i}: {r:?} on {l:?}");
        }
    }

    #[test]
    fn empty_selects_all_and_everything_is_anded() {
        assert!(LabelSelector::everything().matches(&labels(&[])));
        assert!(LabelSelector::everything().matches(&labels(&[("pod", "a")])));
        let mut s = LabelSelector::labels([("pod", "a")]);
        assert!(s.matches(&labels(&[("pod", "a"), ("x", "1")])));
        assert!(!s.matches(&labels(&[("pod", "b")])));
        s.match_expressions.push(req("x", Operator::Exists, &[]));
        assert!(s.matches(&labels(&[("pod", "a"), ("x", "1")])));
        assert!(!s.matches(&labels(&[("pod", "a")])));
    }

    #[test]
    fn from_k8s_rejects_what_the_api_rejects() {
        let sel = |op: &str, values: Option<Vec<&str>>| meta::LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![meta::LabelSelectorRequirement {
                key: "k".into(),
                operator: op.into(),
                values: values.map(|v| v.into_iter().map(String::from).collect()),
            }]),
        };
        assert!(LabelSelector::from_k8s(&sel("In", Some(vec!["v"]))).is_ok());
        assert!(LabelSelector::from_k8s(&sel("Exists", None)).is_ok());
        for bad in
            [sel("In", None), sel("NotIn", Some(vec![])), sel("Exists", Some(vec!["v"])), sel("Gt", Some(vec!["1"]))]
        {
            let err = LabelSelector::from_k8s(&bad).unwrap_err();
            assert!(err.to_string().contains("selector key \"k\""), "{err}");
        }
    }
}
