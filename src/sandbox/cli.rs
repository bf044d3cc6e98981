//! `keypair-operator sandbox` arguments and their value parsers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::{
    DEFAULT_DATONIS_EMAIL, DEFAULT_DATONIS_PASSWORD, DEFAULT_DATONIS_ROLES, DEFAULT_SESSION_TOKEN,
    DatonisReadings, Dialect, EnabledFormat, ExpiryDateOrder, ListParamSource, NewCodeAuth,
    PathCase, RoleKeyPlacement, SandboxConfig, SandboxError, SandboxProvider, ThreatWindsReadings,
    UnverifiedCheck, VerifyAuth,
};

/// Most pre-existing Datonis key pairs `--datonis-preexisting-keys` accepts.
const MAX_PREEXISTING_KEYS: usize = 100_000;

/// Arguments of `keypair-operator sandbox`: serve a fake-but-faithful provider API.
/// Durations are written like `90s`, `30m`, `24h`, `1h30m`, `500ms` or `2d` (bare numbers
/// are seconds).
#[derive(clap::Args, Debug, Clone)]
pub struct SandboxArgs {
    /// Provider API to serve.
    #[arg(long, value_enum)]
    pub provider: SandboxProvider,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// ThreatWinds documentation dialect: `current` (200, x-error headers) or `detailed`
    /// (202, JSON error bodies).
    #[arg(long, value_enum, default_value_t = Dialect::Current)]
    pub dialect: Dialect,
    /// ThreatWinds: bearer token of a verified session that exists from the start
    /// (repeatable; default: the built-in sandbox token).
    #[arg(long = "session-token", value_name = "TOKEN")]
    pub session_tokens: Vec<String>,
    /// ThreatWinds session lifetime (also what `PUT /session/extend` grants).
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_duration)]
    pub session_ttl: Duration,
    /// ThreatWinds verification code lifetime.
    #[arg(long, value_name = "DURATION", default_value = "15m", value_parser = parse_duration)]
    pub code_ttl: Duration,
    /// Datonis account `email:password` (repeatable; default sandbox@datonis.test:sandbox).
    #[arg(long = "user", value_name = "EMAIL:PASSWORD", value_parser = parse_user)]
    pub users: Vec<(String, String)>,
    /// Datonis auth tokens expire after this much inactivity.
    #[arg(long, value_name = "DURATION", default_value = "30m", value_parser = parse_duration)]
    pub token_idle_timeout: Duration,
    /// Datonis account time zone as an offset from UTC (`+05:30`, `-03:00`, `Z`).
    #[arg(
        long = "utc-offset",
        value_name = "OFFSET",
        default_value = "+05:30",
        allow_hyphen_values = true,
        value_parser = parse_utc_offset
    )]
    pub utc_offset_minutes: i32,
    /// Datonis role `role_key:role_name` (repeatable; default: the docs' three roles).
    #[arg(long = "role", value_name = "KEY:NAME", value_parser = parse_role)]
    pub roles: Vec<(String, String)>,
    /// Load state from this file at start and persist it there after every change.
    #[arg(long, value_name = "PATH")]
    pub state_file: Option<PathBuf>,
    /// ThreatWinds "New Verification Code" `Authorization` form: `bearer` (`Bearer <token>`
    /// only), `raw` (the bare token only, as the detailed page's example) or `either`.
    #[arg(long, value_enum, default_value_t = NewCodeAuth::Either)]
    pub new_code_auth: NewCodeAuth,
    /// ThreatWinds check (`GET /keypair`) of an unverified key pair: `allowed` (200,
    /// `verified: false`) or `unauthorized` (401).
    #[arg(long, value_enum, default_value_t = UnverifiedCheck::Allowed)]
    pub unverified_check: UnverifiedCheck,
    /// ThreatWinds route literals: `any-case` (`/KeyPair/verification` works) or
    /// `lowercase` (only `/keypair/...`).
    #[arg(long, value_enum, default_value_t = PathCase::AnyCase)]
    pub path_case: PathCase,
    /// ThreatWinds `PUT /keypair/verification`: `ignored` (no session needed) or `session`
    /// (a verified session owning the key).
    #[arg(long, value_enum, default_value_t = VerifyAuth::Ignored)]
    pub verify_auth: VerifyAuth,
    /// Datonis: where the list call reads `page`, `per`, ... from.
    #[arg(long, value_enum, default_value_t = ListParamSource::Either)]
    pub datonis_list_params: ListParamSource,
    /// Datonis: where an update reads `role_key` from (inside or beside `key_pair`).
    #[arg(long, value_enum, default_value_t = RoleKeyPlacement::Either)]
    pub datonis_update_role_key: RoleKeyPlacement,
    /// Datonis: how a `dd/dd/yyyy` `expiry_date` is read.
    #[arg(long, value_enum, default_value_t = ExpiryDateOrder::DayFirst)]
    pub datonis_date_order: ExpiryDateOrder,
    /// Datonis: how `enabled` is written in answers.
    #[arg(long, value_enum, default_value_t = EnabledFormat::Bool)]
    pub datonis_enabled: EnabledFormat,
    /// Datonis: key pairs the default account holds from the start (unrelated to any client).
    #[arg(long, value_name = "COUNT", default_value_t = 0)]
    pub datonis_preexisting_keys: usize,
    /// Datonis fault: the list call ignores `page` and always answers page 1.
    #[arg(long)]
    pub datonis_ignore_page: bool,
}

impl SandboxArgs {
    /// Checks the arguments and turns them into a configuration and the listen address.
    pub fn into_config(self) -> Result<(SandboxConfig, SocketAddr), SandboxError> {
        let invalid = |message: &str| Err(SandboxError::InvalidConfig(message.to_owned()));
        for (name, duration) in [
            ("--session-ttl", self.session_ttl),
            ("--code-ttl", self.code_ttl),
            ("--token-idle-timeout", self.token_idle_timeout),
        ] {
            if duration.is_zero() {
                return invalid(&format!("{name} must be longer than zero"));
            }
        }
        if self
            .session_tokens
            .iter()
            .any(|token| token.is_empty() || !token.chars().all(|c| c.is_ascii_graphic()))
        {
            return invalid("--session-token must be non-empty printable ASCII without spaces");
        }
        if has_duplicates(
            self.users
                .iter()
                .map(|(email, _)| email.to_ascii_lowercase()),
        ) {
            return invalid("--user given twice for the same e-mail");
        }
        if has_duplicates(self.roles.iter().map(|(key, _)| key.clone())) {
            return invalid("--role given twice for the same role key");
        }
        if self.datonis_preexisting_keys > MAX_PREEXISTING_KEYS {
            return invalid(&format!(
                "--datonis-preexisting-keys must be at most {MAX_PREEXISTING_KEYS}"
            ));
        }
        let session_tokens = if self.session_tokens.is_empty() {
            vec![DEFAULT_SESSION_TOKEN.to_owned()]
        } else {
            self.session_tokens
        };
        let users = if self.users.is_empty() {
            vec![(
                DEFAULT_DATONIS_EMAIL.to_owned(),
                DEFAULT_DATONIS_PASSWORD.to_owned(),
            )]
        } else {
            self.users
        };
        let roles = if self.roles.is_empty() {
            DEFAULT_DATONIS_ROLES
                .iter()
                .map(|(key, name)| ((*key).to_owned(), (*name).to_owned()))
                .collect()
        } else {
            self.roles
        };
        let config = SandboxConfig {
            provider: self.provider,
            dialect: self.dialect,
            session_tokens,
            session_ttl: self.session_ttl,
            code_ttl: self.code_ttl,
            users,
            token_idle_timeout: self.token_idle_timeout,
            utc_offset_minutes: self.utc_offset_minutes,
            roles,
            state_file: self.state_file,
            threatwinds_readings: ThreatWindsReadings {
                new_code_auth: self.new_code_auth,
                unverified_check: self.unverified_check,
                path_case: self.path_case,
                verify_auth: self.verify_auth,
            },
            datonis_readings: DatonisReadings {
                list_params: self.datonis_list_params,
                update_role_key: self.datonis_update_role_key,
                expiry_date_order: self.datonis_date_order,
                enabled_in_answers: self.datonis_enabled,
                preexisting_keys: self.datonis_preexisting_keys,
                ignore_page: self.datonis_ignore_page,
            },
        };
        Ok((config, self.listen))
    }
}

fn has_duplicates(items: impl Iterator<Item = String>) -> bool {
    let mut seen = std::collections::HashSet::new();
    items.into_iter().any(|item| !seen.insert(item))
}

/// Parses `90s`, `30m`, `24h`, `2d`, `500ms`, `1h30m`; a bare number is seconds.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let invalid = || format!("invalid duration {text:?} (use e.g. 90s, 30m, 24h, 1h30m, 500ms)");
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let number: u64 = rest[..digits].parse().map_err(|_| invalid())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit_millis: u64 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(invalid()),
        };
        rest = &rest[unit_len..];
        let millis = number.checked_mul(unit_millis).ok_or_else(invalid)?;
        total = total
            .checked_add(Duration::from_millis(millis))
            .ok_or_else(invalid)?;
    }
    Ok(total)
}

/// Parses `+05:30`, `-03:00`, `+0530`, `+5`, `Z` or `UTC` into minutes east of UTC.
pub(crate) fn parse_utc_offset(text: &str) -> Result<i32, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("z") || text.eq_ignore_ascii_case("utc") {
        return Ok(0);
    }
    let invalid = || format!("invalid UTC offset {text:?} (use e.g. +05:30, -03:00, Z)");
    let (sign, rest) = match text.split_at_checked(1) {
        Some(("+", rest)) => (1, rest),
        Some(("-", rest)) => (-1, rest),
        _ => return Err(invalid()),
    };
    let (hours, minutes) = match rest.split_once(':') {
        Some((hours, minutes)) => (hours, minutes),
        None if rest.len() == 4 => rest.split_at_checked(2).ok_or_else(invalid)?,
        None => (rest, "0"),
    };
    let hours: i32 = hours.parse().map_err(|_| invalid())?;
    let minutes: i32 = minutes.parse().map_err(|_| invalid())?;
    if !(0..=14).contains(&hours) || !(0..60).contains(&minutes) || hours * 60 + minutes > 14 * 60 {
        return Err(invalid());
    }
    Ok(sign * (hours * 60 + minutes))
}

/// `a:b` with both sides non-empty; splits at the first `:` (passwords may hold more).
fn parse_pair(text: &str, what: &str) -> Result<(String, String), String> {
    match text.split_once(':') {
        Some((left, right)) if !left.trim().is_empty() && !right.is_empty() => {
            Ok((left.trim().to_owned(), right.to_owned()))
        }
        _ => Err(format!("expected {what}")),
    }
}

fn parse_user(text: &str) -> Result<(String, String), String> {
    parse_pair(text, "EMAIL:PASSWORD")
}

fn parse_role(text: &str) -> Result<(String, String), String> {
    parse_pair(text, "ROLE_KEY:ROLE_NAME")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("15"), Ok(Duration::from_secs(15)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }

    #[test]
    fn offsets() {
        assert_eq!(parse_utc_offset("+05:30"), Ok(330));
        assert_eq!(parse_utc_offset("-03:00"), Ok(-180));
        assert_eq!(parse_utc_offset("+0530"), Ok(330));
        assert_eq!(parse_utc_offset("+5"), Ok(300));
        assert_eq!(parse_utc_offset("Z"), Ok(0));
        assert!(parse_utc_offset("05:30").is_err());
        assert!(parse_utc_offset("+15:00").is_err());
        assert!(parse_utc_offset("+05:60").is_err());
        assert!(parse_utc_offset("+").is_err());
        assert!(parse_utc_offset("+1\u{e9}2").is_err());
    }

    #[test]
    fn pairs() {
        assert_eq!(
            parse_user("a@b.c:p:w"),
            Ok(("a@b.c".to_owned(), "p:w".to_owned()))
        );
        assert!(parse_role("nokey").is_err());
        assert!(parse_role(":name").is_err());
    }
}
