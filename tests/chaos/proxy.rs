//! The fault proxy between the operator and the apiserver: a plain-HTTP listener on
//! loopback that forwards every request through a `kube::Client` (which adds the TLS and
//! the credentials of the test kubeconfig) and, as its [`ApiFaults`] say, answers instead
//! with a conflict, a throttle or a server error, forwards and then fails (the write may
//! have happened: the operator cannot know), resets the connection, stalls, or delays;
//! watches it cuts short, ends with `410 Gone`, or delays event by event (stale views).
//!
//! Decisions come from a seeded generator, so a trial's fault schedule is reproducible up
//! to the order in which the operator's requests arrive.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

/// How the proxy misbehaves; all off by default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ApiFaults {
    /// Fraction of ordinary requests (not watches) that meet a fault.
    pub rate: f64,
    /// Fraction of watches that are cut short or end with `410 Gone`.
    pub watch_drop: f64,
    /// Delay of every watch event, in milliseconds (a lagging cache).
    pub watch_lag_ms: u64,
}

/// One fault the proxy can inject, counted by name in the report.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// 409 Conflict without forwarding.
    Conflict,
    /// 429 with `Retry-After: 1` without forwarding.
    Throttle,
    /// 500 without forwarding.
    ServerError,
    /// Forwarded, then answered 500: a write may have committed.
    CommitThenError,
    /// Connection reset without forwarding.
    Reset,
    /// Forwarded, then the connection reset: a write may have committed.
    CommitThenReset,
    /// Held for 5 s, then reset (a client-side timeout).
    Stall,
    /// Forwarded after 0.3–2 s.
    Delay,
}

impl Fault {
    const READS: [Fault; 5] = [
        Fault::Throttle,
        Fault::ServerError,
        Fault::Reset,
        Fault::Stall,
        Fault::Delay,
    ];
    const WRITES: [Fault; 8] = [
        Fault::Conflict,
        Fault::Throttle,
        Fault::ServerError,
        Fault::CommitThenError,
        Fault::Reset,
        Fault::CommitThenReset,
        Fault::Stall,
        Fault::Delay,
    ];

    fn name(self) -> &'static str {
        match self {
            Fault::Conflict => "api 409",
            Fault::Throttle => "api 429",
            Fault::ServerError => "api 500",
            Fault::CommitThenError => "api write then 500",
            Fault::Reset => "api reset",
            Fault::CommitThenReset => "api write then reset",
            Fault::Stall => "api timeout",
            Fault::Delay => "api delay",
        }
    }
}

struct Inner {
    client: kube::Client,
    faults: Mutex<ApiFaults>,
    rng: Mutex<StdRng>,
    injected: Mutex<BTreeMap<&'static str, u64>>,
}

/// A running fault proxy; stops when dropped.
pub struct KubeProxy {
    inner: Arc<Inner>,
    addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl KubeProxy {
    /// Starts a proxy on a free loopback port forwarding through `client`.
    pub async fn start(client: kube::Client, seed: u64) -> KubeProxy {
        let inner = Arc::new(Inner {
            client,
            faults: Mutex::new(ApiFaults::default()),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            injected: Mutex::new(BTreeMap::new()),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(inner.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        KubeProxy { inner, addr, task }
    }

    /// A kubeconfig that reaches the apiserver through this proxy (plain HTTP, no
    /// credentials: the proxy adds them), written to `path`.
    pub fn write_kubeconfig(&self, path: &std::path::Path) {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: chaos\n  cluster:\n    server: http://{}\nusers:\n- name: chaos\n  user: {{}}\ncontexts:\n- name: chaos\n  context:\n    cluster: chaos\n    user: chaos\ncurrent-context: chaos\n",
            self.addr
        );
        std::fs::write(path, text).expect("write proxy kubeconfig");
    }

    /// Replaces the faults in force.
    pub fn set(&self, faults: ApiFaults) {
        *lock(&self.inner.faults) = faults;
    }

    /// Faults injected so far, by kind.
    pub fn injected(&self) -> BTreeMap<&'static str, u64> {
        lock(&self.inner.injected).clone()
    }
}

impl Drop for KubeProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Inner {
    fn count(&self, what: &'static str) {
        *lock(&self.injected).entry(what).or_default() += 1;
    }

    fn roll(&self, p: f64) -> bool {
        p > 0.0 && lock(&self.rng).random_bool(p.min(1.0))
    }

    fn pick<T: Copy>(&self, choices: &[T]) -> T {
        choices[lock(&self.rng).random_range(0..choices.len())]
    }

    fn millis(&self, range: std::ops::Range<u64>) -> Duration {
        Duration::from_millis(lock(&self.rng).random_range(range))
    }
}

async fn forward(State(inner): State<Arc<Inner>>, request: Request) -> Response {
    let faults = *lock(&inner.faults);
    let watch = request
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
    if watch {
        return forward_watch(&inner, faults, request).await;
    }
    let write = request.method() != axum::http::Method::GET;
    let fault = inner.roll(faults.rate).then(|| {
        inner.pick(if write {
            &Fault::WRITES[..]
        } else {
            &Fault::READS[..]
        })
    });
    let Some(fault) = fault else {
        return pass(&inner, request).await;
    };
    inner.count(fault.name());
    match fault {
        Fault::Conflict => status(StatusCode::CONFLICT, "Conflict"),
        Fault::Throttle => {
            let mut response = status(StatusCode::TOO_MANY_REQUESTS, "TooManyRequests");
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            response
        }
        Fault::ServerError => status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
        Fault::CommitThenError => {
            let _ = pass(&inner, request).await.into_body().collect().await;
            status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError")
        }
        Fault::Reset => reset(),
        Fault::CommitThenReset => {
            let _ = pass(&inner, request).await.into_body().collect().await;
            reset()
        }
        Fault::Stall => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            reset()
        }
        Fault::Delay => {
            tokio::time::sleep(inner.millis(300..2000)).await;
            pass(&inner, request).await
        }
    }
}

trait CollectBody {
    async fn collect(self) -> Option<Bytes>;
}

impl CollectBody for Body {
    async fn collect(self) -> Option<Bytes> {
        axum::body::to_bytes(self, usize::MAX).await.ok()
    }
}

/// Forwards a request unchanged and streams the answer back.
async fn pass(inner: &Inner, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let Some(bytes) = body.collect().await else {
        return reset();
    };
    let mut forwarded = http::Request::builder()
        .method(parts.method)
        .uri(parts.uri.path_and_query().map_or("/", |p| p.as_str()));
    for (name, value) in &parts.headers {
        if name != header::HOST && name != header::CONTENT_LENGTH {
            forwarded = forwarded.header(name, value);
        }
    }
    let Ok(forwarded) = forwarded.body(kube::client::Body::from(bytes)) else {
        return status(StatusCode::BAD_REQUEST, "BadRequest");
    };
    match inner.client.send(forwarded).await {
        Ok(response) => {
            let (parts, body) = response.into_parts();
            Response::from_parts(parts, Body::new(body))
        }
        Err(_) => reset(),
    }
}

async fn forward_watch(inner: &Arc<Inner>, faults: ApiFaults, request: Request) -> Response {
    let drop = inner.roll(faults.watch_drop);
    if drop && inner.roll(0.5) {
        inner.count("watch 410 Gone");
        return gone();
    }
    let response = pass(inner, request).await;
    let (parts, body) = response.into_parts();
    let mut events = body.into_data_stream().boxed();
    if faults.watch_lag_ms > 0 {
        inner.count("watch lagging");
        events = lagging(events, Duration::from_millis(faults.watch_lag_ms)).boxed();
    }
    if drop {
        inner.count("watch cut");
        let cut = tokio::time::sleep(inner.millis(200..4000));
        events = events.take_until(cut).boxed();
    }
    Response::from_parts(parts, Body::from_stream(events))
}

/// Delivers each chunk `lag` after it arrived, in order (a cache that is `lag` behind).
fn lagging(
    mut events: futures::stream::BoxStream<'static, Result<Bytes, axum::Error>>,
    lag: Duration,
) -> impl futures::Stream<Item = Result<Bytes, axum::Error>> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(chunk) = events.next().await {
            if tx.send((tokio::time::Instant::now() + lag, chunk)).is_err() {
                break;
            }
        }
    });
    tokio_stream_from(rx).then(|(due, chunk)| async move {
        tokio::time::sleep_until(due).await;
        chunk
    })
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// A Kubernetes `Status` answer.
fn status(code: StatusCode, reason: &str) -> Response {
    let body = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("chaos proxy: {reason}"), "reason": reason, "code": code.as_u16(),
    });
    (code, axum::Json(body)).into_response()
}

/// The watch event the apiserver sends when a resourceVersion is too old.
fn gone() -> Response {
    let event = serde_json::json!({"type": "ERROR", "object": {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "chaos proxy: too old resource version", "reason": "Expired", "code": 410,
    }});
    let mut line = event.to_string();
    line.push('\n');
    (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from(line),
    )
        .into_response()
}

/// A response whose body fails at once: hyper closes the connection without a usable
/// answer.
fn reset() -> Response {
    let failing = futures::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::other("reset"))
    });
    Response::new(Body::from_stream(failing))
}
