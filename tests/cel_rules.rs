//! The CEL rules (`x-kubernetes-validations`) of the committed CRDs, checked without an API
//! server (the test control plane is 1.20, which drops them; 1.25 and later enforce them).
//!
//! Every rule is taken from `crds/` by walking the schemas, compiled (a syntax error would
//! make a 1.25+ API server refuse the whole CRD) and evaluated the way the API server
//! does: at each schema node where the object has a (non-null) value, with `self` bound to
//! that value and, for transition rules, `oldSelf` to the old object's value at the same
//! place (transition rules are skipped on create). Objects are defaulted first, as the
//! API server defaults them (through the Rust types, whose serde defaults are the
//! schema's). Each rule must both accept and reject one of the samples.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use cel_interpreter::{Context, Program, Value as Cel};
use keypair_operator::crd::{ApiKeyPair, ClusterKeyPairProvider, KeyPairProvider};
use serde_json::{Value, json};

/// One CEL rule of a CRD.
struct Rule {
    /// `<kind> <path>`: where in which CRD the rule sits.
    at: String,
    rule: String,
    message: String,
    program: Program,
}

impl Rule {
    fn is_transition(&self) -> bool {
        self.rule.contains("oldSelf")
    }
}

/// The committed CRDs (`crds/`), by kind.
fn crds() -> BTreeMap<String, Value> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    let mut crds = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).expect("crds/") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("read CRD");
        let crd: Value = serde_yaml::from_str(&text).expect("CRD YAML");
        let kind = crd["spec"]["names"]["kind"]
            .as_str()
            .expect("kind")
            .to_owned();
        crds.insert(kind, crd);
    }
    crds
}

fn schema_of(crd: &Value) -> &Value {
    &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
}

/// Every rule under `schema` (at `path`), in schema order.
fn collect(kind: &str, path: &str, schema: &Value, out: &mut Vec<Rule>) {
    for entry in schema["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let keys: BTreeSet<&str> = entry
            .as_object()
            .expect("a rule is an object")
            .keys()
            .map(String::as_str)
            .collect();
        // `fieldPath`, `reason`, `messageExpression` and `optionalOldSelf` are newer than
        // 1.25: a server that does not know them refuses them in a server-side apply.
        assert_eq!(
            keys,
            BTreeSet::from(["message", "rule"]),
            "{kind} {path}: only rule and message"
        );
        let rule = entry["rule"].as_str().expect("rule").to_owned();
        let message = entry["message"].as_str().expect("message").to_owned();
        assert!(
            !message.trim().is_empty(),
            "{kind} {path}: {rule} has a message"
        );
        // The API server refuses a message with a line break.
        assert!(!message.contains('\n'), "{kind} {path}: one-line message");
        let program = Program::compile(&rule)
            .unwrap_or_else(|e| panic!("{kind} {path}: {rule} does not compile: {e}"));
        out.push(Rule {
            at: format!("{kind} {path}"),
            rule,
            message,
            program,
        });
    }
    if let Some(properties) = schema["properties"].as_object() {
        for (name, sub) in properties {
            collect(kind, &format!("{path}.{name}"), sub, out);
        }
    }
    if schema["items"].is_object() {
        collect(kind, &format!("{path}[*]"), &schema["items"], out);
    }
    if schema["additionalProperties"].is_object() {
        collect(
            kind,
            &format!("{path}.*"),
            &schema["additionalProperties"],
            out,
        );
    }
}

/// Every rule of every CRD.
fn all_rules() -> Vec<Rule> {
    let mut rules = Vec::new();
    for (kind, crd) in crds() {
        collect(&kind, "", schema_of(&crd), &mut rules);
    }
    rules
}

/// JSON as the API server hands it to CEL: integers are `int`, objects are maps.
fn to_cel(value: &Value) -> Cel {
    match value {
        Value::Null => Cel::Null,
        Value::Bool(b) => Cel::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Cel::Int(i),
            None => Cel::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => Cel::String(Arc::new(s.clone())),
        Value::Array(items) => Cel::List(Arc::new(items.iter().map(to_cel).collect())),
        Value::Object(map) => {
            let map: HashMap<String, Cel> =
                map.iter().map(|(k, v)| (k.clone(), to_cel(v))).collect();
            Cel::from(map)
        }
    }
}

/// What the API server would say about `new` (replacing `old`, if any): the messages of
/// the rules that fail, or an evaluation error. `seen` records each rule's outcomes.
struct Validator {
    kind: String,
    crd: Value,
    rules: Vec<Rule>,
    seen: BTreeMap<String, BTreeSet<bool>>,
}

impl Validator {
    fn new(kind: &str) -> Validator {
        let crd = crds().remove(kind).expect("CRD of kind");
        let mut rules = Vec::new();
        collect(kind, "", schema_of(&crd), &mut rules);
        Validator {
            kind: kind.to_owned(),
            crd,
            rules,
            seen: BTreeMap::new(),
        }
    }

    fn check(&mut self, new: &Value, old: Option<&Value>) -> Vec<String> {
        let new = defaulted(&self.kind, new);
        let old = old.map(|o| defaulted(&self.kind, o));
        let schema = schema_of(&self.crd).clone();
        let mut failures = Vec::new();
        self.walk(&schema, "", &new, old.as_ref(), &mut failures);
        failures
    }

    fn walk(
        &mut self,
        schema: &Value,
        path: &str,
        new: &Value,
        old: Option<&Value>,
        failures: &mut Vec<String>,
    ) {
        if new.is_null() {
            return;
        }
        let at = format!("{} {path}", self.kind);
        for rule in self.rules.iter().filter(|r| r.at == at) {
            if rule.is_transition() && old.is_none() {
                continue;
            }
            let mut context = Context::default();
            context.add_variable_from_value("self", to_cel(new));
            if let Some(old) = old {
                context.add_variable_from_value("oldSelf", to_cel(old));
            }
            let passed = match rule.program.execute(&context) {
                Ok(Cel::Bool(passed)) => passed,
                Ok(other) => panic!("{at}: {} returned {other:?}, not a bool", rule.rule),
                // The API server refuses the object when a rule cannot be evaluated.
                Err(e) => {
                    failures.push(format!("error evaluating {}: {e}", rule.rule));
                    false
                }
            };
            self.seen
                .entry(format!("{at}: {}", rule.rule))
                .or_default()
                .insert(passed);
            if !passed {
                failures.push(rule.message.clone());
            }
        }
        if let (Some(properties), Some(object)) =
            (schema["properties"].as_object(), new.as_object())
        {
            for (name, sub) in properties {
                if let Some(value) = object.get(name) {
                    let old = old.and_then(|o| o.get(name));
                    self.walk(sub, &format!("{path}.{name}"), value, old, failures);
                }
            }
        }
        // No rule sits under a list or a map today; `collect` finds them if one is added,
        // and `every_rule_is_exercised` then fails until this walk and the samples cover it.
    }
}

/// `object` with the defaults the API server applies (the Rust types' serde defaults are
/// the schema's defaults).
fn defaulted(kind: &str, object: &Value) -> Value {
    let mut object = object.clone();
    object["apiVersion"] = json!("keypairs.dev/v1alpha1");
    object["kind"] = json!(kind);
    if object.get("metadata").is_none() {
        object["metadata"] = json!({"name": "sample", "namespace": "team"});
    }
    fn through<T: serde::de::DeserializeOwned + serde::Serialize>(
        object: Value,
    ) -> Result<Value, serde_json::Error> {
        serde_json::to_value(serde_json::from_value::<T>(object)?)
    }
    match kind {
        "ApiKeyPair" => through::<ApiKeyPair>(object),
        "KeyPairProvider" => through::<KeyPairProvider>(object),
        _ => through::<ClusterKeyPairProvider>(object),
    }
    .unwrap_or_else(|e| panic!("a valid {kind} sample: {e}"))
}

const PROVIDER_REF: &str = "spec.providerRef cannot change while the key pair lives at the provider recorded in status.providerRef: set it back, or delete this ApiKeyPair (its key is deleted where it lives) and create a new one";
const RENEW_BEFORE: &str = "renewBefore must be shorter than validityDays";
const SECRET_KEYS: &str = "keys.apiKey and keys.apiSecret must differ, and neither may be the other with a .pending suffix (where a replacement key waits)";
const ONE_API: &str = "set exactly one of threatwinds and datonis";

fn akp(spec: Value) -> Value {
    let mut full = json!({"providerRef": {"name": "tw"}});
    for (k, v) in spec.as_object().expect("spec object") {
        full[k] = v.clone();
    }
    json!({"spec": full})
}

fn with_status(mut object: Value, status: Value) -> Value {
    object["status"] = status;
    object
}

#[test]
fn every_rule_compiles_and_has_a_message() {
    let rules = all_rules();
    let found: BTreeSet<String> = rules
        .iter()
        .map(|r| format!("{}: {}", r.at, r.message))
        .collect();
    let expected: BTreeSet<String> = [
        format!("ApiKeyPair : {PROVIDER_REF}"),
        format!("ApiKeyPair .spec: {RENEW_BEFORE}"),
        format!("ApiKeyPair .spec.secretTemplate: {SECRET_KEYS}"),
        format!("KeyPairProvider .spec: {ONE_API}"),
        format!("ClusterKeyPairProvider .spec: {ONE_API}"),
    ]
    .into();
    assert_eq!(
        found, expected,
        "a rule was added or moved: give it samples below"
    );
}

#[test]
fn api_key_pair_rules() {
    let mut v = Validator::new("ApiKeyPair");
    let accepted: Vec<String> = Vec::new();

    // Create: the minimal object, and every field the rules look at within bounds.
    assert_eq!(v.check(&akp(json!({})), None), accepted);
    for (validity, renew) in [(365, "720h"), (2, "47h59m59s"), (1, "1439m"), (1, "90s")] {
        let ok = akp(json!({"validityDays": validity, "renewBefore": renew}));
        assert_eq!(
            v.check(&ok, None),
            accepted,
            "{renew} within {validity} days"
        );
    }
    // renewBefore as long as the validity or longer.
    for (validity, renew) in [
        (365, "8760h"),
        (1, "24h"),
        (1, "1h1440m"),
        (1, "86400000ms"),
    ] {
        let bad = akp(json!({"validityDays": validity, "renewBefore": renew}));
        assert_eq!(
            v.check(&bad, None),
            [RENEW_BEFORE],
            "{renew} vs {validity} days"
        );
    }
    // The default validity (365 days) counts.
    let bad = akp(json!({"renewBefore": "9000h"}));
    assert_eq!(v.check(&bad, None), [RENEW_BEFORE]);
    // Days and weeks are the controller's to check (CEL's duration() has no such units).
    let left_to_the_controller = akp(json!({"validityDays": 10, "renewBefore": "30d"}));
    assert_eq!(v.check(&left_to_the_controller, None), accepted);

    // Secret data keys.
    for (key, secret) in [
        ("apiKey", "apiSecret"),
        ("key", "key.secret"),
        ("a.pending", "b"),
    ] {
        let keys = json!({"keys": {"apiKey": key, "apiSecret": secret}});
        let ok = akp(json!({"secretTemplate": keys}));
        assert_eq!(v.check(&ok, None), accepted, "{key} / {secret}");
    }
    let template_only_labels = akp(json!({"secretTemplate": {"labels": {"a": "b"}}}));
    assert_eq!(v.check(&template_only_labels, None), accepted);
    for (key, secret) in [("k", "k"), ("k", "k.pending"), ("s.pending", "s")] {
        let keys = json!({"keys": {"apiKey": key, "apiSecret": secret}});
        let bad = akp(json!({"secretTemplate": keys}));
        assert_eq!(v.check(&bad, None), [SECRET_KEYS], "{key} / {secret}");
    }
    // A key named like the other default is caught after defaulting.
    let bad = akp(json!({"secretTemplate": {"keys": {"apiKey": "apiSecret"}}}));
    assert_eq!(v.check(&bad, None), [SECRET_KEYS]);

    // providerRef: free to change while no key exists.
    let on = |name: &str, kind: &str| akp(json!({"providerRef": {"name": name, "kind": kind}}));
    let tw = on("tw", "KeyPairProvider");
    let other = on("other", "KeyPairProvider");
    let cluster_tw = on("tw", "ClusterKeyPairProvider");
    assert_eq!(v.check(&other, Some(&tw)), accepted, "no status");
    let recorded = json!({"providerRef": {"name": "tw", "kind": "KeyPairProvider"}});
    let no_key = with_status(tw.clone(), recorded.clone());
    assert_eq!(v.check(&other, Some(&no_key)), accepted, "no key yet");
    let key_without_record = with_status(tw.clone(), json!({"keyID": "k1"}));
    assert_eq!(
        v.check(&other, Some(&key_without_record)),
        accepted,
        "nothing recorded (the controller does not refuse either)"
    );
    // ... and not while one does (a key id, or a create in flight).
    let mut with_key = recorded.clone();
    with_key["keyID"] = json!("k1");
    let mut creating = recorded.clone();
    creating["pendingCreate"] =
        json!({"attempt": 1, "startedAt": "2026-01-01T00:00:00Z", "purpose": "Initial"});
    for status in [&with_key, &creating] {
        let old = with_status(tw.clone(), status.clone());
        assert_eq!(v.check(&other, Some(&old)), [PROVIDER_REF], "{status}");
        assert_eq!(v.check(&cluster_tw, Some(&old)), [PROVIDER_REF], "kind too");
        // Other edits, and the status the controller writes, pass.
        let edited = with_status(
            akp(json!({"providerRef": {"name": "tw"}, "validityDays": 30})),
            status.clone(),
        );
        assert_eq!(v.check(&edited, Some(&old)), accepted);
    }
    // An object stored with a refused edit (before the rule, or on an older server) stays
    // editable, and can be set back.
    let diverged = with_status(other.clone(), with_key.clone());
    let diverged_edit = with_status(
        akp(json!({"providerRef": {"name": "other"}, "suspend": true})),
        with_key.clone(),
    );
    assert_eq!(v.check(&diverged_edit, Some(&diverged)), accepted);
    assert_eq!(v.check(&tw, Some(&diverged)), accepted, "set back");
    let third = on("third", "KeyPairProvider");
    assert_eq!(v.check(&third, Some(&diverged)), [PROVIDER_REF]);

    assert_each_rule_both_ways(&v);
}

#[test]
fn provider_rules() {
    let threatwinds = json!({"sessionSecretRef": {"name": "s", "key": "token"}});
    let datonis = json!({"credentialsSecretRef": {"name": "d"}});
    for kind in ["KeyPairProvider", "ClusterKeyPairProvider"] {
        let mut v = Validator::new(kind);
        let spec = |connection: Value| {
            let mut spec = connection;
            if kind == "ClusterKeyPairProvider" {
                spec["credentialsNamespace"] = json!("creds");
            }
            json!({"spec": spec})
        };
        let tw = spec(json!({"threatwinds": threatwinds}));
        let dt = spec(json!({"datonis": datonis}));
        assert_eq!(v.check(&tw, None), Vec::<String>::new());
        assert_eq!(v.check(&dt, Some(&tw)), Vec::<String>::new());
        let both = spec(json!({"threatwinds": threatwinds, "datonis": datonis}));
        assert_eq!(v.check(&both, None), [ONE_API], "{kind}: both");
        let neither = spec(json!({"rateLimit": {"requestsPerSecond": 1.0}}));
        assert_eq!(v.check(&neither, None), [ONE_API], "{kind}: neither");
        assert_each_rule_both_ways(&v);
    }
}

/// The renewBefore rule never refuses a value the controller accepts, and refuses what it
/// can check (units CEL parses) exactly when the controller does.
#[test]
fn renew_before_rule_agrees_with_the_controller() {
    use keypair_operator::controller::plan::renew_before;
    let mut v = Validator::new("ApiKeyPair");
    let values = [
        "1ms", "90s", "59m", "1h", "23h59m", "24h", "36h", "47h", "48h", "1h30m", "720h", "2160h",
        "8759h", "8760h", "8761h", "87599h", "87600h", "1d", "2d", "30d", "1w", "52w", "1d12h",
        "365d",
    ];
    for validity in [1, 2, 3, 30, 90, 364, 365, 366, 3650] {
        for value in values {
            let object = akp(json!({"validityDays": validity, "renewBefore": value}));
            let typed: ApiKeyPair =
                serde_json::from_value(defaulted("ApiKeyPair", &object)).expect("typed");
            let controller_accepts = renew_before(&typed).is_ok();
            let cel_accepts = v.check(&object, None).is_empty();
            let checkable = !value.contains(['d', 'w']);
            if checkable {
                assert_eq!(
                    cel_accepts, controller_accepts,
                    "{value} vs {validity} days"
                );
            } else {
                assert!(cel_accepts, "{value}: left to the controller");
            }
        }
    }
}

/// Every resource in `examples/` passes every rule, on create and on an update to itself.
#[test]
fn every_example_passes_the_rules() {
    use serde::Deserialize;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut validators: BTreeMap<String, Validator> = BTreeMap::new();
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("examples/") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("read example");
        for document in serde_yaml::Deserializer::from_str(&text) {
            let object = Value::deserialize(document).expect("YAML");
            let Some(kind) = object["kind"].as_str() else {
                continue;
            };
            if !["ApiKeyPair", "KeyPairProvider", "ClusterKeyPairProvider"].contains(&kind) {
                continue;
            }
            let v = validators
                .entry(kind.to_owned())
                .or_insert_with(|| Validator::new(kind));
            let name = path.display();
            assert_eq!(v.check(&object, None), Vec::<String>::new(), "{name}");
            assert_eq!(
                v.check(&object, Some(&object)),
                Vec::<String>::new(),
                "{name}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 10, "the examples' resources");
}

fn assert_each_rule_both_ways(v: &Validator) {
    for rule in &v.rules {
        let key = format!("{}: {}", rule.at, rule.rule);
        let seen = v.seen.get(&key).cloned().unwrap_or_default();
        assert_eq!(
            seen,
            BTreeSet::from([false, true]),
            "{key}: samples must both pass and fail it"
        );
    }
}
