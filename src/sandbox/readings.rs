//! Readings of the points the Datonis docs leave open, as sandbox modes.
//!
//! The docs can be read more than one way (see the provider client's "Open points in the
//! Datonis docs"). The default [`DatonisReadings`] accepts every reading at once, as the
//! sandbox always did; each field narrows the sandbox to one strict reading, so a test can
//! prove that a client works against a provider that happens to implement that one.
//! [`DatonisReadings::strict_profiles`] lists strict combinations for tests to loop over.

use serde::{Deserialize, Serialize};

/// Where the list call (`GET /api/v3/key_pairs`) reads its parameters from (`page`, `per`,
/// `order_by`, `order`, `timestamp_format`, `search`, ...). The docs' curl examples send
/// them as a JSON body on GET; a GET body is unusual enough that a server may only read the
/// query string.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, clap::ValueEnum, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum ListParamSource {
    /// The query string only; a body is ignored.
    Query,
    /// The JSON body only; the query string is ignored.
    Body,
    /// Both, a body value winning over a query value of the same name.
    #[default]
    Either,
}

/// Where an update (`PUT /api/v3/key_pairs/{key}`) reads `role_key` from. The docs' update
/// example sends it beside the `key_pair` object, the create example inside it. A
/// `role_key` in the place not read is ignored (no error, no change).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, clap::ValueEnum, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum RoleKeyPlacement {
    /// Inside `key_pair` only.
    Nested,
    /// Beside `key_pair` only (the update example).
    TopLevel,
    /// Either place; inside wins when both are sent.
    #[default]
    Either,
}

/// How `dd/dd/yyyy` in `expiry_date` is read: the docs' `"09/09/2016"` cannot tell.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, clap::ValueEnum, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum ExpiryDateOrder {
    /// `dd/mm/yyyy` (India, where Datonis is made; also Ruby's `Date.parse`).
    #[default]
    DayFirst,
    /// `mm/dd/yyyy` (US style); `25/12/2026` is then an invalid date (422).
    MonthFirst,
}

impl ExpiryDateOrder {
    /// The chrono format of a slash date in this order.
    pub(crate) fn format(self) -> &'static str {
        match self {
            ExpiryDateOrder::DayFirst => "%d/%m/%Y",
            ExpiryDateOrder::MonthFirst => "%m/%d/%Y",
        }
    }
}

/// How `enabled` is written in answers. The docs' answers show booleans, but the update
/// example sends the string `"false"`, so a server may well echo strings.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, clap::ValueEnum, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum EnabledFormat {
    /// `true` / `false`.
    #[default]
    Bool,
    /// `"true"` / `"false"`.
    String,
}

/// How the Datonis sandbox reads the open points of the docs, plus account shapes that
/// stress a client's paging. The default is lenient: every reading accepted, no extra keys,
/// paging honoured.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DatonisReadings {
    /// Where list parameters are read from.
    pub list_params: ListParamSource,
    /// Where an update reads `role_key` from (creates always read both places).
    pub update_role_key: RoleKeyPlacement,
    /// Order of day and month in a `dd/dd/yyyy` `expiry_date`.
    pub expiry_date_order: ExpiryDateOrder,
    /// How `enabled` is written in every answer.
    pub enabled_in_answers: EnabledFormat,
    /// Key pairs the default account holds from the start (created ninety days ago, with
    /// the configured roles in turn and varied expiries and `enabled`), so that listing
    /// needs several pages. Only added to a fresh state (not one loaded from a state file
    /// that already has key pairs).
    pub preexisting_keys: usize,
    /// Fault: the list call ignores `page` and always answers page 1.
    pub ignore_page: bool,
}

impl DatonisReadings {
    /// Every reading accepted (the default).
    pub fn lenient() -> Self {
        Self::default()
    }

    /// Strict combinations, named, for tests to loop over: the first strict reading of the
    /// four open points (list parameters, update `role_key`, date order, `enabled` format),
    /// each point flipped alone, and all four flipped (`body-top-level-month-first-string`),
    /// so every pair of strict values appears in some profile. No pre-existing keys and no
    /// faults.
    pub fn strict_profiles() -> Vec<(&'static str, DatonisReadings)> {
        use EnabledFormat as E;
        use ExpiryDateOrder as D;
        use ListParamSource as L;
        use RoleKeyPlacement as R;
        // The first reading of every point, each point flipped alone, and all flipped:
        // every pair of values of two points appears in some profile.
        let rows = [
            (
                "query-nested-day-first-bool",
                L::Query,
                R::Nested,
                D::DayFirst,
                E::Bool,
            ),
            (
                "body-nested-day-first-bool",
                L::Body,
                R::Nested,
                D::DayFirst,
                E::Bool,
            ),
            (
                "query-top-level-day-first-bool",
                L::Query,
                R::TopLevel,
                D::DayFirst,
                E::Bool,
            ),
            (
                "query-nested-month-first-bool",
                L::Query,
                R::Nested,
                D::MonthFirst,
                E::Bool,
            ),
            (
                "query-nested-day-first-string",
                L::Query,
                R::Nested,
                D::DayFirst,
                E::String,
            ),
            (
                "body-top-level-month-first-string",
                L::Body,
                R::TopLevel,
                D::MonthFirst,
                E::String,
            ),
        ];
        rows.into_iter()
            .map(|(name, list, role, date, enabled)| {
                let readings = DatonisReadings {
                    list_params: list,
                    update_role_key: role,
                    expiry_date_order: date,
                    enabled_in_answers: enabled,
                    ..DatonisReadings::default()
                };
                (name, readings)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn default_is_lenient() {
        let d = DatonisReadings::lenient();
        assert_eq!(d.list_params, ListParamSource::Either);
        assert_eq!(d.update_role_key, RoleKeyPlacement::Either);
        assert_eq!(d.expiry_date_order, ExpiryDateOrder::DayFirst);
        assert_eq!(d.enabled_in_answers, EnabledFormat::Bool);
        assert_eq!(d.preexisting_keys, 0);
        assert!(!d.ignore_page);
    }

    #[test]
    fn strict_profiles_are_strict_and_cover_every_pair() {
        let profiles = DatonisReadings::strict_profiles();
        let names: HashSet<_> = profiles.iter().map(|(n, _)| *n).collect();
        assert_eq!(names.len(), profiles.len(), "names are unique");
        let factors = |r: &DatonisReadings| {
            [
                r.list_params == ListParamSource::Body,
                r.update_role_key == RoleKeyPlacement::TopLevel,
                r.expiry_date_order == ExpiryDateOrder::MonthFirst,
                r.enabled_in_answers == EnabledFormat::String,
            ]
        };
        for (name, r) in &profiles {
            assert_ne!(r.list_params, ListParamSource::Either, "{name}");
            assert_ne!(r.update_role_key, RoleKeyPlacement::Either, "{name}");
            assert_eq!(r.preexisting_keys, 0, "{name}");
            assert!(!r.ignore_page, "{name}");
        }
        for i in 0..4 {
            for j in (i + 1)..4 {
                let seen: HashSet<(bool, bool)> = profiles
                    .iter()
                    .map(|(_, r)| (factors(r)[i], factors(r)[j]))
                    .collect();
                assert_eq!(seen.len(), 4, "factors {i} and {j}");
            }
        }
    }

    #[test]
    fn date_formats() {
        let d = chrono::NaiveDate::from_ymd_opt(2026, 3, 5).expect("date");
        assert_eq!(
            d.format(ExpiryDateOrder::DayFirst.format()).to_string(),
            "05/03/2026"
        );
        assert_eq!(
            d.format(ExpiryDateOrder::MonthFirst.format()).to_string(),
            "03/05/2026"
        );
    }

    #[test]
    fn readings_deserialize_from_partial_json() {
        let r: DatonisReadings = serde_json::from_str(
            r#"{"list_params":"body","update_role_key":"top-level","expiry_date_order":"month-first"}"#,
        )
        .expect("decode");
        assert_eq!(r.list_params, ListParamSource::Body);
        assert_eq!(r.update_role_key, RoleKeyPlacement::TopLevel);
        assert_eq!(r.expiry_date_order, ExpiryDateOrder::MonthFirst);
        assert_eq!(r.enabled_in_answers, EnabledFormat::Bool);
    }
}
