//! Datonis v3 sandbox: sign-in/sign-out (`/api_sign_in`, `/api_sign_out`) and
//! `/api/v3/key_pairs`.
//!
//! Decisions where the docs are silent:
//! - Errors: `{"success": false, "error": "..."}` with the status (the docs show no error).
//! - Successes answer 200, creates included (the docs show no status).
//! - Auth: no or unknown `X-Auth-Token` → 401; a token unused for longer than
//!   `token_idle_timeout` → 401 "auth token expired" (and it is forgotten). Every
//!   authenticated call restarts the idle clock; that bookkeeping is persisted only along with
//!   other changes, so after a restart a token may expire a little early, never late.
//! - Sign-in takes a JSON body; missing `email`/`password` → 400, wrong ones → 401. Accounts:
//!   key pairs belong to an account, `default` unless signed in with `organisation_key`;
//!   `is_oem=true` with `child_organisation_key` acts on that child account instead
//!   (`is_oem` without it → 400).
//! - 400 for a request that cannot be read: malformed JSON, `key_pair` missing or not an
//!   object, a list parameter of the wrong type or value (`page`/`per` not positive integers,
//!   `order` not asc/desc, unknown `order_by`, `timestamp_format` not int/str, `scope` not
//!   all/any). 422 for a `key_pair` field that fails validation: missing or unknown
//!   `role_key`, missing or invalid `expiry_date`, `enabled` not a boolean or "true"/"false".
//! - Parameters come from the query string and/or a JSON body (the docs send a body with
//!   GET); a body value wins over a query value of the same name. For the list call,
//!   [`DatonisReadings::list_params`] can restrict this to one source (the other is then
//!   ignored). Numbers may be JSON
//!   numbers or strings. `page` is echoed as it came: a string if sent as one (the docs'
//!   `"page": "2"`; query-string values are strings), else a number (default 1).
//! - `expiry_date` in: `dd/mm/yyyy`, day first by default (the docs' "09/09/2016" cannot
//!   tell; Datonis is an Indian service, where day-first is the norm), or month first with
//!   [`DatonisReadings::expiry_date_order`]; an impossible date (`25/12/2026` read month
//!   first) is 422. Also ISO `yyyy-mm-dd`, or a full
//!   RFC 3339 timestamp as the API returns it (taken as the date it falls on in the account's
//!   zone, so a value read back round-trips). Out: midnight of that date in the account's
//!   zone, in UTC, as `YYYY-MM-DDTHH:MM:SS.000Z`. Past dates are accepted.
//! - `order_by`: key_pair_key (or access_key), enabled, expiry_date, created_at, updated_at,
//!   role_name, role_key; `name` means role_name (key pairs have no name, and the docs'
//!   `order_by=name, order=desc` example is in descending role_name order). Without it:
//!   creation order. Ties go by creation order.
//! - `search`: keywords split on spaces and commas, each a case-insensitive substring of
//!   `key_pair_key`; `scope` all (default) or any. `key_pairs` (JSON array, comma-separated
//!   string, or `key_pairs[]=` query values): only those keys. `total_count` counts every
//!   match before paging.
//! - `field_list` (array) / `fields` (comma-separated): only those fields of each key pair;
//!   `pretty=true`: indented JSON; `timestamp_format=str`: `created_at`/`updated_at` as
//!   `yyyy/mm/dd hh:mm:ss` in UTC (as in the docs' examples). These apply to every key-pair
//!   response.
//! - `PUT`: `key_pair` is required (it may be `{}` when `role_key` is sent beside it); a
//!   `role_key` inside `key_pair` wins over one beside it, unless
//!   [`DatonisReadings::update_role_key`] makes the update read only one place (a
//!   `role_key` in the other is ignored); `updated_at` moves on every successful update.
//!   `POST` reads `role_key` from either place. `DELETE` → `{}`.
//! - `enabled` is answered as a boolean, or as `"true"`/`"false"` with
//!   [`DatonisReadings::enabled_in_answers`].
//! - [`DatonisReadings::preexisting_keys`] seeds a fresh default account with unrelated key
//!   pairs; [`DatonisReadings::ignore_page`] makes the list always answer page 1 (a fault).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::{delete, get, post};
use chrono::{DateTime, FixedOffset, NaiveDate};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::http::{ApiError, json_object, json_response, optional_json_object};
use super::readings::{
    DatonisReadings, EnabledFormat, ExpiryDateOrder, ListParamSource, RoleKeyPlacement,
};
use super::state::{Shared, now_ms, random_hex, random_url_safe};
use super::{SandboxConfig, SandboxKey, SandboxProvider};

/// Route literals, matched ignoring case (see `http::normalize_path`).
pub(crate) const PATH_LITERALS: &[&str] =
    &["api", "v3", "key_pairs", "api_sign_in", "api_sign_out"];

/// Route template of `POST` key-pair create.
pub(crate) const CREATE_ROUTE: &str = "/api/v3/key_pairs";
/// Route template of `PUT` key-pair update.
pub(crate) const UPDATE_ROUTE: &str = "/api/v3/key_pairs/{key}";

/// Account of tokens signed in without `organisation_key`.
const DEFAULT_ACCOUNT: &str = "default";
const KEY_LEN: usize = 40;
const TOKEN_LEN: usize = 22;

pub(crate) fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route("/api_sign_in", post(sign_in))
        .route("/api_sign_out", delete(sign_out))
        .route(CREATE_ROUTE, get(list).post(create))
        .route(UPDATE_ROUTE, get(show).put(update).delete(destroy))
}

/// The one Datonis error format; `message` is already sanitised.
pub(crate) fn error_body(headers: &mut HeaderMap, message: &str) -> Body {
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Body::from(json!({"success": false, "error": message}).to_string())
}

// ---------------------------------------------------------------------------------------
// State.

/// Datonis state (persisted).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct DtState {
    /// By auth token.
    tokens: BTreeMap<String, Token>,
    /// By key_pair_key.
    keys: BTreeMap<String, Key>,
    /// Every key secret and auth token ever handed out, deleted ones included, so a test
    /// can search the operator's output for all of them.
    issued: Vec<String>,
    next_seq: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Token {
    email: String,
    account: String,
    last_used_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Key {
    /// `key_pair_key`, also the `access_key`.
    key: String,
    secret: String,
    enabled: bool,
    /// Unix seconds: midnight of the expiry date in the account's zone.
    expiry: i64,
    role_key: String,
    role_name: String,
    account: String,
    created_at: i64,
    updated_at: i64,
    seq: u64,
}

impl DtState {
    /// `POST /_sandbox/sessions/expire`: every auth token stops working.
    pub(crate) fn expire_tokens(&mut self) {
        self.tokens.clear();
    }

    /// `DELETE /_sandbox/keys/{id}`: the key pair disappears as if deleted by someone else.
    pub(crate) fn remove_key(&mut self, key: &str) -> bool {
        self.keys.remove(key).is_some()
    }

    /// Every secret handed out (see `issued`) and every configured password.
    pub(crate) fn issued(&self, config: &SandboxConfig) -> Vec<String> {
        let passwords = config.users.iter().map(|(_, password)| password.clone());
        let mut secrets: Vec<String> = self.issued.iter().cloned().chain(passwords).collect();
        secrets.sort();
        secrets.dedup();
        secrets
    }
}

/// Every key pair, oldest first, for `GET /_sandbox/keys`.
pub(crate) fn sandbox_keys(state: &DtState) -> Vec<SandboxKey> {
    let mut keys: Vec<&Key> = state.keys.values().collect();
    keys.sort_by_key(|key| key.seq);
    keys.into_iter()
        .map(|key| SandboxKey {
            provider: SandboxProvider::Datonis,
            id: key.key.clone(),
            api_key: key.key.clone(),
            secret: key.secret.clone(),
            name: None,
            expires_at: key.expiry,
            verified: None,
            enabled: Some(key.enabled),
            role_key: Some(key.role_key.clone()),
            role_name: Some(key.role_name.clone()),
            owner: key.account.clone(),
            created_at: key.created_at,
            updated_at: key.updated_at,
        })
        .collect()
}

/// Seeds a fresh state with [`DatonisReadings::preexisting_keys`] unrelated key pairs of
/// the default account: created ninety days ago (a minute apart, so `created_at` order is
/// their creation order), with the configured roles in turn, every fourth one disabled, and
/// expiries from three months ago to five months ahead. A state that has ever held a key
/// pair (e.g. loaded from a state file) is left alone.
pub(crate) fn init(state: &mut DtState, config: &SandboxConfig, now_ms: i64) {
    const DAY_SECS: i64 = 86_400;
    if state.next_seq != 0 {
        return;
    }
    let now = now_ms.div_euclid(1000);
    let offset = i64::from(config.utc_offset_minutes) * 60;
    let today = (now + offset).div_euclid(DAY_SECS);
    let fallback = ("0000000000".to_owned(), "Preexisting".to_owned());
    for i in 0..config.datonis_readings.preexisting_keys {
        let n = i64::try_from(i).unwrap_or(i64::MAX);
        let (role_key, role_name) = config
            .roles
            .get(i % config.roles.len().max(1))
            .unwrap_or(&fallback)
            .clone();
        let created_at = now - 90 * DAY_SECS + n.saturating_mul(60);
        state.next_seq += 1;
        let key = Key {
            key: random_hex(KEY_LEN),
            secret: random_hex(KEY_LEN),
            enabled: i % 4 != 0,
            expiry: (today + (n % 9 - 3) * 30) * DAY_SECS - offset,
            role_key,
            role_name,
            account: DEFAULT_ACCOUNT.to_owned(),
            created_at,
            updated_at: created_at,
            seq: state.next_seq,
        };
        state.keys.insert(key.key.clone(), key);
    }
}

/// Checks `X-Auth-Token` and restarts its idle clock; returns the token's account.
fn authenticate(
    state: &mut DtState,
    headers: &HeaderMap,
    now: i64,
    idle_timeout: Duration,
) -> Result<String, ApiError> {
    let token = headers
        .get("x-auth-token")
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
        .filter(|token| !token.is_empty())
        .ok_or_else(|| ApiError::unauthorized("authentication required"))?;
    let entry = state
        .tokens
        .get_mut(token)
        .ok_or_else(|| ApiError::unauthorized("invalid auth token"))?;
    let idle_ms = i64::try_from(idle_timeout.as_millis()).unwrap_or(i64::MAX);
    if now.saturating_sub(entry.last_used_ms) > idle_ms {
        state.tokens.remove(token);
        return Err(ApiError::unauthorized("auth token expired"));
    }
    entry.last_used_ms = now;
    Ok(entry.account.clone())
}

// ---------------------------------------------------------------------------------------
// Parameters.

/// Request parameters merged from the query string and a JSON body (body wins).
struct Params(Map<String, Value>);

impl Params {
    fn parse(query: Option<&str>, body: &[u8]) -> Result<Self, ApiError> {
        Self::parse_from(query, body, ListParamSource::Either)
    }

    /// Parameters from the sources `source` allows; the other source is ignored entirely
    /// (not even checked for being well-formed).
    fn parse_from(
        query: Option<&str>,
        body: &[u8],
        source: ListParamSource,
    ) -> Result<Self, ApiError> {
        let mut map = Map::new();
        if source != ListParamSource::Body {
            Self::add_query(&mut map, query);
        }
        if source != ListParamSource::Query {
            map.extend(optional_json_object(body)?);
        }
        Ok(Params(map))
    }

    fn add_query(map: &mut Map<String, Value>, query: Option<&str>) {
        for (name, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let value = Value::String(value.into_owned());
            match name.strip_suffix("[]") {
                Some(list) => match map.get_mut(list) {
                    Some(Value::Array(items)) => items.push(value),
                    _ => {
                        map.insert(list.to_owned(), Value::Array(vec![value]));
                    }
                },
                None => {
                    map.insert(name.into_owned(), value);
                }
            }
        }
    }

    fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name).filter(|value| !value.is_null())
    }

    /// A positive integer, and the value as given (for echoing).
    fn positive_int(&self, name: &str, default: u64) -> Result<(u64, Value), ApiError> {
        let Some(value) = self.get(name) else {
            return Ok((default, json!(default)));
        };
        let parsed = match value {
            Value::Number(number) => number.as_u64(),
            Value::String(text) => text.trim().parse::<u64>().ok(),
            _ => None,
        };
        match parsed {
            Some(number) if number >= 1 => Ok((number, value.clone())),
            _ => Err(ApiError::bad_request(format!(
                "{name} must be a positive integer"
            ))),
        }
    }

    fn string(&self, name: &str) -> Result<Option<&str>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.trim())),
            Some(_) => Err(ApiError::bad_request(format!("{name} must be a string"))),
        }
    }

    fn flag(&self, name: &str) -> Result<bool, ApiError> {
        match self.get(name) {
            None => Ok(false),
            Some(value) => boolean(value)
                .ok_or_else(|| ApiError::bad_request(format!("{name} must be true or false"))),
        }
    }

    /// A JSON array of strings or a comma-separated string.
    fn list(&self, name: &str) -> Result<Option<Vec<String>>, ApiError> {
        let invalid = || ApiError::bad_request(format!("{name} must be a list of strings"));
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(
                text.split(',')
                    .map(str::trim)
                    .filter(|item| !item.is_empty())
                    .map(str::to_owned)
                    .collect(),
            )),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| {
                    item.as_str()
                        .map(|s| s.trim().to_owned())
                        .ok_or_else(invalid)
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(invalid()),
        }
    }

    /// The account the call acts on: the token's, or the OEM child named by the request.
    fn account(&self, token_account: &str) -> Result<String, ApiError> {
        if !self.flag("is_oem")? {
            return Ok(token_account.to_owned());
        }
        match self.string("child_organisation_key")? {
            Some(child) if !child.is_empty() => Ok(child.to_owned()),
            _ => Err(ApiError::bad_request(
                "child_organisation_key is required when is_oem is true",
            )),
        }
    }
}

/// A boolean, or its string form (the docs send `"enabled": "false"`).
fn boolean(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(flag) => Some(*flag),
        Value::String(text) if text.trim().eq_ignore_ascii_case("true") => Some(true),
        Value::String(text) if text.trim().eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

/// How key pairs are written out in a response.
struct View {
    string_timestamps: bool,
    string_enabled: bool,
    fields: Option<Vec<String>>,
    pretty: bool,
}

impl View {
    fn parse(params: &Params, readings: &DatonisReadings) -> Result<Self, ApiError> {
        let string_timestamps = match params.string("timestamp_format")? {
            None | Some("int") => false,
            Some("str") => true,
            Some(_) => {
                return Err(ApiError::bad_request(
                    "timestamp_format must be \"int\" or \"str\"",
                ));
            }
        };
        let fields = match params.list("field_list")? {
            Some(fields) => Some(fields),
            None => params.list("fields")?,
        };
        Ok(View {
            string_timestamps,
            string_enabled: readings.enabled_in_answers == EnabledFormat::String,
            fields: fields.filter(|fields| !fields.is_empty()),
            pretty: params.flag("pretty")?,
        })
    }

    fn timestamp(&self, secs: i64) -> Value {
        if self.string_timestamps {
            let text = DateTime::from_timestamp(secs, 0)
                .map(|time| time.format("%Y/%m/%d %H:%M:%S").to_string());
            json!(text.unwrap_or_default())
        } else {
            json!(secs)
        }
    }

    fn key_pair(&self, key: &Key) -> Value {
        let mut object = Map::new();
        object.insert("access_key".into(), json!(key.key));
        object.insert("key_pair_key".into(), json!(key.key));
        object.insert("secret_key".into(), json!(key.secret));
        let enabled = if self.string_enabled {
            json!(key.enabled.to_string())
        } else {
            json!(key.enabled)
        };
        object.insert("enabled".into(), enabled);
        object.insert("expiry_date".into(), json!(iso_timestamp(key.expiry)));
        object.insert("created_at".into(), self.timestamp(key.created_at));
        object.insert("updated_at".into(), self.timestamp(key.updated_at));
        object.insert("role_name".into(), json!(key.role_name));
        object.insert("role_key".into(), json!(key.role_key));
        if let Some(fields) = &self.fields {
            object.retain(|name, _| fields.iter().any(|field| field == name));
        }
        Value::Object(object)
    }

    fn respond(&self, value: &Value) -> Response {
        json_response(StatusCode::OK, value, self.pretty)
    }
}

fn iso_timestamp(secs: i64) -> String {
    DateTime::from_timestamp(secs, 0)
        .map(|time| time.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_default()
}

/// Midnight (in the account's zone) of the date `text` names, as unix seconds; see the
/// module docs for the accepted forms.
fn parse_expiry(text: &str, utc_offset_minutes: i32, order: ExpiryDateOrder) -> Option<i64> {
    let text = text.trim();
    let zone = FixedOffset::east_opt(utc_offset_minutes.checked_mul(60)?)?;
    let date = NaiveDate::parse_from_str(text, order.format())
        .or_else(|_| NaiveDate::parse_from_str(text, "%Y-%m-%d"))
        .ok()
        .or_else(|| {
            DateTime::parse_from_rfc3339(text)
                .ok()
                .map(|time| time.with_timezone(&zone).date_naive())
        })?;
    if !(1970..=9999).contains(&chrono::Datelike::year(&date)) {
        return None;
    }
    let midnight_utc = date.and_hms_opt(0, 0, 0)?.and_utc().timestamp();
    Some(midnight_utc - i64::from(utc_offset_minutes) * 60)
}

#[derive(Clone, Copy)]
enum OrderBy {
    Key,
    Enabled,
    Expiry,
    Created,
    Updated,
    RoleName,
    RoleKey,
}

impl OrderBy {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "key_pair_key" | "access_key" => OrderBy::Key,
            "enabled" => OrderBy::Enabled,
            "expiry_date" => OrderBy::Expiry,
            "created_at" => OrderBy::Created,
            "updated_at" => OrderBy::Updated,
            "role_name" | "name" => OrderBy::RoleName,
            "role_key" => OrderBy::RoleKey,
            _ => return None,
        })
    }

    fn compare(self, a: &Key, b: &Key) -> std::cmp::Ordering {
        match self {
            OrderBy::Key => a.key.cmp(&b.key),
            OrderBy::Enabled => a.enabled.cmp(&b.enabled),
            OrderBy::Expiry => a.expiry.cmp(&b.expiry),
            OrderBy::Created => a.created_at.cmp(&b.created_at),
            OrderBy::Updated => a.updated_at.cmp(&b.updated_at),
            OrderBy::RoleName => a.role_name.cmp(&b.role_name),
            OrderBy::RoleKey => a.role_key.cmp(&b.role_key),
        }
    }
}

/// Which key pairs a list call wants, in which order and page.
struct ListQuery {
    page: u64,
    page_echo: Value,
    per: u64,
    order_by: Option<OrderBy>,
    descending: bool,
    keywords: Vec<String>,
    match_all: bool,
    only: Option<Vec<String>>,
}

impl ListQuery {
    fn parse(params: &Params) -> Result<Self, ApiError> {
        let (page, page_echo) = params.positive_int("page", 1)?;
        let (per, _) = params.positive_int("per", 20)?;
        let order_by = match params.string("order_by")? {
            None | Some("") => None,
            Some(name) => Some(
                OrderBy::parse(name)
                    .ok_or_else(|| ApiError::bad_request("order_by is not a known field"))?,
            ),
        };
        let descending = match params.string("order")? {
            None | Some("") => false,
            Some(order) if order.eq_ignore_ascii_case("asc") => false,
            Some(order) if order.eq_ignore_ascii_case("desc") => true,
            Some(_) => return Err(ApiError::bad_request("order must be \"asc\" or \"desc\"")),
        };
        let keywords = params
            .string("search")?
            .unwrap_or("")
            .split([' ', ','])
            .filter(|word| !word.is_empty())
            .map(str::to_lowercase)
            .collect();
        let match_all = match params.string("scope")? {
            None | Some("") => true,
            Some(scope) if scope.eq_ignore_ascii_case("all") => true,
            Some(scope) if scope.eq_ignore_ascii_case("any") => false,
            Some(_) => return Err(ApiError::bad_request("scope must be \"all\" or \"any\"")),
        };
        Ok(ListQuery {
            page,
            page_echo,
            per,
            order_by,
            descending,
            keywords,
            match_all,
            only: params.list("key_pairs")?,
        })
    }

    fn matches(&self, key: &Key) -> bool {
        if let Some(only) = &self.only
            && !only.contains(&key.key)
        {
            return false;
        }
        if self.keywords.is_empty() {
            return true;
        }
        let haystack = key.key.to_lowercase();
        let mut hits = self.keywords.iter().map(|word| haystack.contains(word));
        if self.match_all {
            hits.all(|hit| hit)
        } else {
            hits.any(|hit| hit)
        }
    }

    fn sort(&self, keys: &mut [&Key]) {
        keys.sort_by(|a, b| {
            let primary = match self.order_by {
                Some(order_by) => order_by.compare(a, b),
                None => a.seq.cmp(&b.seq),
            };
            let primary = if self.descending {
                primary.reverse()
            } else {
                primary
            };
            primary.then(a.seq.cmp(&b.seq))
        });
    }

    /// The requested page of `keys` (empty past the end; no overflow on huge values).
    fn page<'a>(&self, keys: Vec<&'a Key>) -> Vec<&'a Key> {
        let skip = (self.page - 1).saturating_mul(self.per);
        keys.into_iter()
            .skip(usize::try_from(skip).unwrap_or(usize::MAX))
            .take(usize::try_from(self.per).unwrap_or(usize::MAX))
            .collect()
    }
}

/// The writable fields of a create or update body.
struct Changes {
    expiry: Option<i64>,
    enabled: Option<bool>,
    role: Option<(String, String)>,
}

impl Changes {
    /// The fields of `key_pair`; `role_key` is read from where `placement` says.
    fn parse(
        params: &Params,
        config: &SandboxConfig,
        placement: RoleKeyPlacement,
    ) -> Result<Self, ApiError> {
        let key_pair = match params.get("key_pair") {
            Some(Value::Object(key_pair)) => key_pair,
            Some(_) => return Err(ApiError::bad_request("key_pair must be an object")),
            None => return Err(ApiError::bad_request("key_pair is required")),
        };
        let field = |name: &str| key_pair.get(name).filter(|value| !value.is_null());
        let role_key = match placement {
            RoleKeyPlacement::Nested => field("role_key"),
            RoleKeyPlacement::TopLevel => params.get("role_key"),
            RoleKeyPlacement::Either => field("role_key").or_else(|| params.get("role_key")),
        };
        let role = match role_key {
            None => None,
            Some(Value::String(role_key)) => Some(
                config
                    .roles
                    .iter()
                    .find(|(key, _)| key == role_key.trim())
                    .cloned()
                    .ok_or_else(|| ApiError::unprocessable("role_key is invalid"))?,
            ),
            Some(_) => return Err(ApiError::unprocessable("role_key must be a string")),
        };
        let expiry = match field("expiry_date") {
            None => None,
            Some(value) => Some(
                value
                    .as_str()
                    .and_then(|text| {
                        parse_expiry(
                            text,
                            config.utc_offset_minutes,
                            config.datonis_readings.expiry_date_order,
                        )
                    })
                    .ok_or_else(|| ApiError::unprocessable("expiry_date is invalid"))?,
            ),
        };
        let enabled = match field("enabled") {
            None => None,
            Some(value) => Some(
                boolean(value)
                    .ok_or_else(|| ApiError::unprocessable("enabled must be true or false"))?,
            ),
        };
        Ok(Changes {
            expiry,
            enabled,
            role,
        })
    }
}

// ---------------------------------------------------------------------------------------
// Handlers.

type ApiResult = Result<Response, ApiError>;

async fn sign_in(State(shared): State<Arc<Shared>>, body: Bytes) -> ApiResult {
    let request = json_object(&body)?;
    let text = |name: &str| request.get(name).and_then(Value::as_str).map(str::trim);
    let (Some(email), Some(password)) = (text("email"), request.get("password")) else {
        return Err(ApiError::bad_request("email and password are required"));
    };
    let password = password
        .as_str()
        .ok_or_else(|| ApiError::bad_request("email and password are required"))?;
    let account = match request.get("organisation_key") {
        None | Some(Value::Null) => DEFAULT_ACCOUNT.to_owned(),
        Some(Value::String(key)) if !key.trim().is_empty() => key.trim().to_owned(),
        Some(_) => {
            return Err(ApiError::bad_request(
                "organisation_key must be a non-empty string",
            ));
        }
    };
    let known = shared
        .config
        .users
        .iter()
        .any(|(user, secret)| user.eq_ignore_ascii_case(email) && secret == password);
    if !known {
        return Err(ApiError::unauthorized("invalid email or password"));
    }
    let email = email.to_owned();
    let now = now_ms();
    shared
        .mutate(|state| {
            let token = random_url_safe(TOKEN_LEN);
            state.datonis.issued.push(token.clone());
            state.datonis.tokens.insert(
                token.clone(),
                Token {
                    email: email.clone(),
                    account,
                    last_used_ms: now,
                },
            );
            let body = json!({"success": true, "auth_token": token, "email": email});
            Ok(json_response(StatusCode::OK, &body, false))
        })
        .await
}

async fn sign_out(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> ApiResult {
    let now = now_ms();
    let idle = shared.config.token_idle_timeout;
    shared
        .mutate(|state| {
            authenticate(&mut state.datonis, &headers, now, idle)?;
            if let Some(token) = headers.get("x-auth-token").and_then(|v| v.to_str().ok()) {
                state.datonis.tokens.remove(token.trim());
            }
            Ok(json_response(
                StatusCode::OK,
                &json!({"success": true}),
                false,
            ))
        })
        .await
}

async fn list(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> ApiResult {
    let readings = &shared.config.datonis_readings;
    let params = Params::parse_from(query.as_deref(), &body, readings.list_params);
    let now = now_ms();
    let idle = shared.config.token_idle_timeout;
    shared.read(|state| {
        let dt = &mut state.datonis;
        let account = authenticate(dt, &headers, now, idle)?;
        let params = params?;
        let account = params.account(&account)?;
        let mut query = ListQuery::parse(&params)?;
        if readings.ignore_page {
            query.page = 1;
            query.page_echo = json!(1);
        }
        let view = View::parse(&params, readings)?;
        let mut keys: Vec<&Key> = dt
            .keys
            .values()
            .filter(|key| key.account == account && query.matches(key))
            .collect();
        query.sort(&mut keys);
        let total_count = keys.len();
        let key_pairs: Vec<Value> = query
            .page(keys)
            .into_iter()
            .map(|key| view.key_pair(key))
            .collect();
        Ok(view.respond(&json!({
            "total_count": total_count,
            "page": query.page_echo,
            "key_pairs": key_pairs,
        })))
    })
}

async fn show(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(key): Path<String>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> ApiResult {
    let params = Params::parse(query.as_deref(), &body);
    let now = now_ms();
    let idle = shared.config.token_idle_timeout;
    shared.read(|state| {
        let dt = &mut state.datonis;
        let account = authenticate(dt, &headers, now, idle)?;
        let params = params?;
        let account = params.account(&account)?;
        let view = View::parse(&params, &shared.config.datonis_readings)?;
        let key = dt
            .keys
            .get(&key)
            .filter(|key| key.account == account)
            .ok_or_else(key_pair_not_found)?;
        Ok(view.respond(&json!({ "key_pair": view.key_pair(key) })))
    })
}

async fn create(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> ApiResult {
    let params = Params::parse(query.as_deref(), &body);
    let now = now_ms();
    let config = &shared.config;
    shared
        .mutate(|state| {
            let dt = &mut state.datonis;
            let account = authenticate(dt, &headers, now, config.token_idle_timeout)?;
            let params = params?;
            let account = params.account(&account)?;
            let view = View::parse(&params, &config.datonis_readings)?;
            let changes = Changes::parse(&params, config, RoleKeyPlacement::Either)?;
            let (role_key, role_name) = changes
                .role
                .ok_or_else(|| ApiError::unprocessable("role_key is required"))?;
            let expiry = changes
                .expiry
                .ok_or_else(|| ApiError::unprocessable("expiry_date is required"))?;
            dt.next_seq += 1;
            let key = Key {
                key: random_hex(KEY_LEN),
                secret: random_hex(KEY_LEN),
                enabled: changes.enabled.unwrap_or(true),
                expiry,
                role_key,
                role_name,
                account,
                created_at: now.div_euclid(1000),
                updated_at: now.div_euclid(1000),
                seq: dt.next_seq,
            };
            let response = view.respond(&json!({ "key_pair": view.key_pair(&key) }));
            dt.issued.push(key.secret.clone());
            dt.keys.insert(key.key.clone(), key);
            Ok(response)
        })
        .await
}

async fn update(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(key): Path<String>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> ApiResult {
    let params = Params::parse(query.as_deref(), &body);
    let now = now_ms();
    let config = &shared.config;
    shared
        .mutate(|state| {
            let dt = &mut state.datonis;
            let account = authenticate(dt, &headers, now, config.token_idle_timeout)?;
            let params = params?;
            let account = params.account(&account)?;
            let view = View::parse(&params, &config.datonis_readings)?;
            let placement = config.datonis_readings.update_role_key;
            let changes = Changes::parse(&params, config, placement)?;
            let key = dt
                .keys
                .get_mut(&key)
                .filter(|key| key.account == account)
                .ok_or_else(key_pair_not_found)?;
            if let Some(expiry) = changes.expiry {
                key.expiry = expiry;
            }
            if let Some(enabled) = changes.enabled {
                key.enabled = enabled;
            }
            if let Some((role_key, role_name)) = changes.role {
                key.role_key = role_key;
                key.role_name = role_name;
            }
            key.updated_at = now.div_euclid(1000);
            Ok(view.respond(&json!({ "key_pair": view.key_pair(key) })))
        })
        .await
}

async fn destroy(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(key): Path<String>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> ApiResult {
    let params = Params::parse(query.as_deref(), &body);
    let now = now_ms();
    let idle = shared.config.token_idle_timeout;
    shared
        .mutate(|state| {
            let dt = &mut state.datonis;
            let account = authenticate(dt, &headers, now, idle)?;
            let params = params?;
            let account = params.account(&account)?;
            let view = View::parse(&params, &shared.config.datonis_readings)?;
            if dt.keys.get(&key).is_none_or(|k| k.account != account) {
                return Err(key_pair_not_found());
            }
            dt.keys.remove(&key);
            Ok(view.respond(&json!({})))
        })
        .await
}

fn key_pair_not_found() -> ApiError {
    ApiError::not_found("key_pair not found")
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: ExpiryDateOrder = ExpiryDateOrder::DayFirst;
    const MONTH: ExpiryDateOrder = ExpiryDateOrder::MonthFirst;

    #[test]
    fn expiry_is_midnight_of_the_account_zone() {
        // The docs' example: an account on India time.
        let secs = parse_expiry("09/09/2016", 330, DAY).map(iso_timestamp);
        assert_eq!(secs.as_deref(), Some("2016-09-08T18:30:00.000Z"));
        let secs = parse_expiry("2016-09-09", 0, DAY).map(iso_timestamp);
        assert_eq!(secs.as_deref(), Some("2016-09-09T00:00:00.000Z"));
        // Day first: 01/02 is the 1st of February.
        let secs = parse_expiry("01/02/2020", 0, DAY).map(iso_timestamp);
        assert_eq!(secs.as_deref(), Some("2020-02-01T00:00:00.000Z"));
        // A returned value round-trips.
        let secs = parse_expiry("2016-09-08T18:30:00.000Z", 330, DAY).map(iso_timestamp);
        assert_eq!(secs.as_deref(), Some("2016-09-08T18:30:00.000Z"));
        assert_eq!(parse_expiry("31/02/2016", 0, DAY), None);
        assert_eq!(parse_expiry("garbage", 0, DAY), None);
        assert_eq!(parse_expiry("01/01/99999", 0, DAY), None);
    }

    #[test]
    fn expiry_month_first_reads_month_then_day_and_refuses_impossible_dates() {
        let secs = parse_expiry("01/02/2020", 0, MONTH).map(iso_timestamp);
        assert_eq!(secs.as_deref(), Some("2020-01-02T00:00:00.000Z"));
        let secs = parse_expiry("12/25/2026", 330, MONTH).map(iso_timestamp);
        assert_eq!(secs.as_deref(), Some("2026-12-24T18:30:00.000Z"));
        assert_eq!(parse_expiry("25/12/2026", 0, MONTH), None);
        assert_eq!(parse_expiry("12/25/2026", 0, DAY), None);
        // ISO dates mean the same in both readings.
        assert_eq!(
            parse_expiry("2026-03-05", 0, MONTH),
            parse_expiry("2026-03-05", 0, DAY)
        );
    }

    #[test]
    fn params_from_one_source_ignore_the_other() {
        let body = br#"{"page": "3"}"#;
        let query = Some("page=2&per=5");
        let both = Params::parse_from(query, body, ListParamSource::Either).expect("either");
        assert_eq!(both.get("page"), Some(&json!("3")));
        assert_eq!(both.get("per"), Some(&json!("5")));
        let only_body = Params::parse_from(query, body, ListParamSource::Body).expect("body");
        assert_eq!(only_body.get("page"), Some(&json!("3")));
        assert_eq!(only_body.get("per"), None);
        let only_query = Params::parse_from(query, b"{not json", ListParamSource::Query)
            .expect("a broken body is ignored too");
        assert_eq!(only_query.get("page"), Some(&json!("2")));
    }

    #[test]
    fn preexisting_keys_are_seeded_once_into_a_fresh_default_account() {
        let mut config = SandboxConfig::datonis();
        config.datonis_readings.preexisting_keys = 45;
        let mut state = DtState::default();
        let now = 1_800_000_000_000;
        init(&mut state, &config, now);
        assert_eq!(state.keys.len(), 45);
        assert!(state.keys.values().all(|k| k.account == DEFAULT_ACCOUNT));
        let roles: std::collections::HashSet<_> =
            state.keys.values().map(|k| k.role_key.clone()).collect();
        assert_eq!(roles.len(), config.roles.len());
        assert!(state.keys.values().any(|k| !k.enabled));
        assert!(
            state
                .keys
                .values()
                .all(|k| k.created_at < now / 1000 - 86_400)
        );
        // Not again (a restart with a state file keeps what is there).
        init(&mut state, &config, now);
        assert_eq!(state.keys.len(), 45);
    }
}
