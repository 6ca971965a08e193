//! A Kubernetes API for tests, behind `kube::Client` the way kube documents mocking it: a
//! `tower_test::mock` service whose requests a task answers from objects the test sets up.
//!
//! It serves what cniguard asks for: lists (with field selectors on `spec.nodeName` and
//! `metadata.name`, and equality label selectors), watches from a resource version (the
//! changes since, or held open until there are some), and Event creation. Collections can
//! be made to answer 403 (RBAC denies) or 404 (CRD not installed). Every request is
//! recorded, so tests can tell which API calls cniguard actually makes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};
use tokio::sync::watch;

/// A request as RBAC sees it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ApiCall {
    /// API group (`""` for the core group).
    pub group: String,
    pub resource: String,
    pub verb: String,
}

/// A recorded request: the call, and the query it carried.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub call: ApiCall,
    pub namespace: Option<String>,
    pub query: BTreeMap<String, String>,
}

/// A stored object's collection and change.
#[derive(Debug, Clone)]
struct Change {
    version: u64,
    kind: &'static str,
    collection: String,
    object: Value,
}

#[derive(Default)]
struct State {
    version: u64,
    /// By collection (`group/version/resource`), then `namespace/name`.
    objects: BTreeMap<String, BTreeMap<String, Value>>,
    changes: Vec<Change>,
    denied: BTreeSet<String>,
    missing: BTreeSet<String>,
    requests: Vec<Recorded>,
    created_events: Vec<Value>,
}

#[derive(Clone)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
    /// Bumped on every change, to wake held watches.
    changed: watch::Sender<u64>,
}

/// The collection key of a resource.
#[must_use]
pub fn collection(group: &str, version: &str, resource: &str) -> String {
    format!("{group}/{version}/{resource}")
}

pub const PODS: &str = "/v1/pods";
pub const NODES: &str = "/v1/nodes";
pub const SERVICES: &str = "/v1/services";
pub const EVENTS: &str = "/v1/events";

impl FakeApi {
    /// A client on a new fake API, and the handle to set it up.
    #[must_use]
    pub fn start() -> (kube::Client, Self) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let fake = Self { state: Arc::default(), changed: watch::channel(0).0 };
        let server = fake.clone();
        tokio::spawn(async move {
            while let Some((request, respond)) = handle.next_request().await {
                let server = server.clone();
                // Each request on its own task: a held watch must not hold up the others.
                tokio::spawn(async move { respond.send_response(server.answer(request).await) });
            }
        });
        (kube::Client::new(service, "default"), fake)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds or replaces an object (its `metadata.namespace` and `metadata.name` say which).
    pub fn apply(&self, collection: &str, mut object: Value) {
        let mut state = self.state();
        state.version += 1;
        let version = state.version;
        object["metadata"]["resourceVersion"] = json!(version.to_string());
        let key = object_key(&object);
        let previous = state.objects.entry(collection.to_owned()).or_default().insert(key, object.clone());
        let kind = if previous.is_some() { "MODIFIED" } else { "ADDED" };
        state.changes.push(Change { version, kind, collection: collection.to_owned(), object });
        drop(state);
        self.changed.send_modify(|v| *v += 1);
    }

    /// Deletes an object.
    pub fn delete(&self, collection: &str, namespace: Option<&str>, name: &str) {
        let mut state = self.state();
        let key = format!("{}/{name}", namespace.unwrap_or_default());
        let Some(mut object) = state.objects.get_mut(collection).and_then(|c| c.remove(&key)) else {
            panic!("no {key} in {collection} to delete");
        };
        state.version += 1;
        let version = state.version;
        object["metadata"]["resourceVersion"] = json!(version.to_string());
        state.changes.push(Change { version, kind: "DELETED", collection: collection.to_owned(), object });
        drop(state);
        self.changed.send_modify(|v| *v += 1);
    }

    /// Makes a collection answer 403 Forbidden, as RBAC does without the permission.
    pub fn deny(&self, collection: &str) {
        self.state().denied.insert(collection.to_owned());
    }

    /// Makes a collection answer 404, as the API does for a CRD that is not installed.
    pub fn remove_resource(&self, collection: &str) {
        self.state().missing.insert(collection.to_owned());
    }

    #[must_use]
    pub fn requests(&self) -> Vec<Recorded> {
        self.state().requests.clone()
    }

    /// The Events created so far, as the API stored them.
    #[must_use]
    pub fn created_events(&self) -> Vec<Value> {
        self.state().created_events.clone()
    }

    async fn answer(&self, request: Request<Body>) -> Response<Body> {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let query: BTreeMap<String, String> = request
            .uri()
            .query()
            .map(|q| {
                q.split('&')
                    .filter_map(|pair| pair.split_once('='))
                    .map(|(k, v)| (decode(k), decode(v)))
                    .collect()
            })
            .unwrap_or_default();
        let Some(target) = Target::parse(&path) else {
            return status(StatusCode::NOT_FOUND, "NotFound", &format!("no route for {path}"));
        };
        let verb = match (&method, target.name.is_some(), query.get("watch").map(String::as_str)) {
            (&Method::GET, _, Some("true" | "1")) => "watch",
            (&Method::GET, true, _) => "get",
            (&Method::GET, false, _) => "list",
            (&Method::POST, _, _) => "create",
            (&Method::PUT, _, _) => "update",
            (&Method::PATCH, _, _) => "patch",
            (&Method::DELETE, _, _) => "delete",
            _ => "unknown",
        };
        let call =
            ApiCall { group: target.group.clone(), resource: target.resource.clone(), verb: verb.into() };
        let key = collection(&target.group, &target.version, &target.resource);
        {
            let mut state = self.state();
            state.requests.push(Recorded { call, namespace: target.namespace.clone(), query: query.clone() });
            if state.missing.contains(&key) {
                return status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    "the server could not find the requested resource",
                );
            }
            if state.denied.contains(&key) {
                let message = format!(
                    "{} is forbidden: User \"system:serviceaccount:cniguard:cniguard\" cannot {verb} resource \"{}\" in API group \"{}\"",
                    target.resource, target.resource, target.group
                );
                return status(StatusCode::FORBIDDEN, "Forbidden", &message);
            }
        }
        match verb {
            "list" => self.list(&key, &target, &query),
            "watch" => self.watch(&key, &target, &query).await,
            "create" if target.resource == "events" => {
                let bytes = request.into_body().collect_bytes().await.unwrap_or_default();
                self.create_event(&bytes)
            }
            _ => status(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", "not served by the fake API"),
        }
    }

    fn list(&self, key: &str, target: &Target, query: &BTreeMap<String, String>) -> Response<Body> {
        let state = self.state();
        let items: Vec<Value> = state
            .objects
            .get(key)
            .into_iter()
            .flat_map(BTreeMap::values)
            .filter(|object| target.selects(object, query))
            .cloned()
            .collect();
        let body = json!({
            "apiVersion": "v1",
            "kind": "List",
            "metadata": {"resourceVersion": state.version.to_string()},
            "items": items,
        });
        respond(StatusCode::OK, &body)
    }

    /// The changes after the requested version, or, if none, held until there are some.
    async fn watch(&self, key: &str, target: &Target, query: &BTreeMap<String, String>) -> Response<Body> {
        let since: u64 = query.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
        let mut changed = self.changed.subscribe();
        loop {
            let lines: Vec<String> = self
                .state()
                .changes
                .iter()
                .filter(|c| c.version > since && c.collection == key && target.selects(&c.object, query))
                .map(|c| json!({"type": c.kind, "object": c.object}).to_string() + "\n")
                .collect();
            if !lines.is_empty() {
                return Response::builder()
                    .status(StatusCode::OK)
                    .body(Body::from(lines.concat().into_bytes()))
                    .expect("valid response");
            }
            if changed.changed().await.is_err() {
                return respond(StatusCode::OK, &json!(null));
            }
        }
    }

    fn create_event(&self, bytes: &[u8]) -> Response<Body> {
        let Ok(mut event) = serde_json::from_slice::<Value>(bytes) else {
            return status(StatusCode::BAD_REQUEST, "BadRequest", "not JSON");
        };
        let mut state = self.state();
        let prefix = event["metadata"]["generateName"].as_str().unwrap_or_default().to_owned();
        event["metadata"]["name"] = json!(format!("{prefix}{}", state.created_events.len()));
        state.created_events.push(event.clone());
        respond(StatusCode::CREATED, &event)
    }
}

/// Where a request goes: `/api/v1[/namespaces/NS]/RESOURCE[/NAME]` or
/// `/apis/GROUP/VERSION[/namespaces/NS]/RESOURCE[/NAME]`.
#[derive(Debug)]
struct Target {
    group: String,
    version: String,
    namespace: Option<String>,
    resource: String,
    name: Option<String>,
}

impl Target {
    fn parse(path: &str) -> Option<Self> {
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (group, version, rest) = match parts.as_slice() {
            ["api", version, rest @ ..] => (String::new(), (*version).to_owned(), rest),
            ["apis", group, version, rest @ ..] => ((*group).to_owned(), (*version).to_owned(), rest),
            _ => return None,
        };
        let (namespace, rest) = match rest {
            ["namespaces", namespace, rest @ ..] if !rest.is_empty() => (Some((*namespace).to_owned()), rest),
            _ => (None, rest),
        };
        let (resource, name) = match rest {
            [resource] => ((*resource).to_owned(), None),
            [resource, name] => ((*resource).to_owned(), Some((*name).to_owned())),
            _ => return None,
        };
        Some(Self { group, version, namespace, resource, name })
    }

    /// Whether `object` is in this request's namespace and matches its selectors.
    fn selects(&self, object: &Value, query: &BTreeMap<String, String>) -> bool {
        let in_namespace =
            self.namespace.as_ref().is_none_or(|ns| object["metadata"]["namespace"].as_str() == Some(ns));
        let fields = query.get("fieldSelector").into_iter().flat_map(|s| s.split(',')).all(|term| {
            let Some((field, value)) = term.split_once('=') else { return false };
            let pointer = format!("/{}", field.replace('.', "/"));
            object.pointer(&pointer).and_then(Value::as_str) == Some(value)
        });
        let labels = query.get("labelSelector").into_iter().flat_map(|s| s.split(',')).all(|term| {
            let Some((label, value)) = term.split_once('=') else { return false };
            object["metadata"]["labels"][label].as_str() == Some(value)
        });
        in_namespace && fields && labels
    }
}

fn object_key(object: &Value) -> String {
    format!(
        "{}/{}",
        object["metadata"]["namespace"].as_str().unwrap_or_default(),
        object["metadata"]["name"].as_str().unwrap_or_default()
    )
}

/// Percent-decoding of a query component (selectors carry `=` and `/` encoded).
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%' && i + 2 < bytes.len())
            .then(|| {
                std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok())
            })
            .flatten();
        match (escaped, bytes[i]) {
            (Some(byte), _) => {
                out.push(byte);
                i += 3;
                continue;
            }
            (None, b'+') => out.push(b' '),
            (None, byte) => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn respond(code: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).expect("JSON")))
        .expect("valid response")
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    respond(
        code,
        &json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code.as_u16(),
        }),
    )
}

// Objects as the API serves them.

#[must_use]
pub fn pod(namespace: &str, name: &str, node: &str, ip: &str, labels: &Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"namespace": namespace, "name": name, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "main"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    })
}

#[must_use]
pub fn node(name: &str, labels: &Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}})
}

#[must_use]
pub fn service(namespace: &str, name: &str, cluster_ip: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"namespace": namespace, "name": name},
        "spec": {"clusterIP": cluster_ip, "ports": [{"port": 53}]},
    })
}
