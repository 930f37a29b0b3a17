//! The admin API over real HTTP: off without a token, the token required and compared,
//! dev mode open to loopback, connections listed with their rules and paged, one
//! connection, search, and a disconnect that the client sees as its close frame.

use crate::common;

use common::*;
use serde_json::{json, Value};

const TOKEN: &str = "admin-token-0123456789";

fn admin_config() -> Config {
    Config {
        admin_token: Some(TOKEN.into()),
        ..dev_config()
    }
}

/// A production-like configuration (not dev) with the given admin token.
fn production_config(admin_token: Option<String>) -> Config {
    Config {
        dev: false,
        app_version_ids: vec!["v1".into()],
        admin_token,
        ..dev_config()
    }
}

/// GET or POST `path` with an optional bearer token; returns status and JSON body.
async fn call(
    server: &Server,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let url = server.http_url(path);
    let mut request = match method {
        "POST" => server.http.post(url),
        _ => server.http.get(url),
    };
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("admin request");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// `POST /admin/api/connections/{id}/disconnect` with the right token.
async fn disconnect(server: &Server, id: u64, body: Option<Value>) -> (u16, Value) {
    let path = format!("/admin/api/connections/{id}/disconnect");
    call(server, "POST", &path, Some(TOKEN), body).await
}

async fn admin_get(server: &Server, path: &str) -> Value {
    let (status, body) = call(server, "GET", path, Some(TOKEN), None).await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

#[tokio::test]
async fn without_a_token_nothing_under_admin_answers_but_404() {
    let server = Server::start(production_config(None)).await;
    for path in [
        "/admin",
        "/admin/",
        "/admin/admin.js",
        "/admin/api/connections",
        "/admin/api/totals",
        "/admin/api/nothing",
    ] {
        let (status, _) = call(&server, "GET", path, Some(TOKEN), None).await;
        assert_eq!(status, 404, "{path}");
    }
    let (status, _) = call(
        &server,
        "POST",
        "/admin/api/connections/1/disconnect",
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn the_token_is_required_and_a_wrong_one_is_refused() {
    let server = Server::start(production_config(Some(TOKEN.into()))).await;
    let (status, body) = call(&server, "GET", "/admin/api/connections", None, None).await;
    assert_eq!(status, 401, "{body}");
    assert!(body["error"].as_str().unwrap().contains("Bearer"), "{body}");
    for wrong in ["admin-token-012345678", "admin-token-0123456789x", ""] {
        let (status, body) = call(&server, "GET", "/admin/api/totals", Some(wrong), None).await;
        assert_eq!(status, 401, "{wrong:?}: {body}");
    }
    let (status, _) = call(
        &server,
        "POST",
        "/admin/api/connections/1/disconnect",
        Some("wrong-token-0123456789"),
        None,
    )
    .await;
    assert_eq!(status, 401);
    admin_get(&server, "/admin/api/totals").await;
    // The page itself holds nothing secret and is served; it asks for the token.
    let (status, page) = server.get("/admin/").await;
    assert_eq!(status, 200);
    assert!(page.contains("admin.js"));
    let metrics = server.metrics().await;
    assert!(metrics.contains("eventgate_admin_refusals_total{reason=\"wrong_token\"}"));
    assert!(
        !metrics.contains("admin-token-0"),
        "the token is never shown"
    );
}

#[tokio::test]
async fn a_sha256_digest_of_the_token_is_accepted() {
    use sha2::Digest;
    let digest: [u8; 32] = sha2::Sha256::digest(TOKEN.as_bytes()).into();
    let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
    let server = Server::start(production_config(Some(format!("sha256:{hex}")))).await;
    admin_get(&server, "/admin/api/totals").await;
    let (status, _) = call(&server, "GET", "/admin/api/totals", Some(&hex), None).await;
    assert_eq!(status, 401, "the digest itself is not the token");
}

#[tokio::test]
async fn dev_mode_without_a_token_is_open_to_direct_loopback_clients() {
    let server = Server::dev().await;
    let (status, body) = call(&server, "GET", "/admin/api/totals", None, None).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = server.get("/admin/").await;
    assert_eq!(status, 200);
    // A request relayed by a proxy on this machine is not a loopback client.
    let response = server
        .http
        .get(server.http_url("/admin/api/totals"))
        .header("x-forwarded-for", "203.0.113.9")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 404);
}

#[tokio::test]
async fn connections_are_listed_with_their_rules_and_queues() {
    let server = Server::start(admin_config()).await;
    let mut announced = server.announced().await;
    announced
        .subscribe(
            "orders",
            &json!({"source": ["shop"], "detail-type": ["order placed"]}),
        )
        .await;
    announced
        .subscribe("all-users", &json!({"source": ["users"]}))
        .await;
    let _unannounced = server.connect().await;
    server
        .publish_event("shop", "order placed", json!({"n": 1}))
        .await;
    announced.next_event().await;

    let list = admin_get(&server, "/admin/api/connections").await;
    assert_eq!(list["total"], 2, "{list}");
    assert_eq!(list["next_after"], Value::Null);
    let rows = list["connections"].as_array().unwrap();
    let first = &rows[0];
    assert_eq!(first["announced"], true, "{first}");
    assert_eq!(first["client"], "127.0.0.1");
    assert!(first["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(first["connected_since"].as_str().unwrap().ends_with('Z'));
    assert_eq!(first["notifications"], 1);
    assert_eq!(first["queued_messages"], 0);
    assert_eq!(
        first["rules"],
        json!([
            {"name": "all-users", "pattern": "{\"source\":[\"users\"]}"},
            {"name": "orders", "pattern": "{\"detail-type\":[\"order placed\"],\"source\":[\"shop\"]}"},
        ])
    );
    let second = &rows[1];
    assert_eq!(second["announced"], false);
    assert_eq!(second["rules"], json!([]));

    let id = first["id"].as_u64().unwrap();
    let one = admin_get(&server, &format!("/admin/api/connections/{id}")).await;
    assert_eq!(one["id"], id);
    assert_eq!(one["rules"].as_array().unwrap().len(), 2);
    let (status, body) = call(
        &server,
        "GET",
        "/admin/api/connections/999999",
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = call(
        &server,
        "GET",
        "/admin/api/connections/x",
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(status, 400);

    // Search by rule name or pattern text, ASCII case ignored.
    for (text, expected) in [("ORDERS", 1), ("order%20placed", 1), ("nothing-like-it", 0)] {
        let found = admin_get(&server, &format!("/admin/api/connections?q={text}")).await;
        assert_eq!(found["total"], expected, "{text}: {found}");
        assert_eq!(found["connections"].as_array().unwrap().len(), expected);
    }

    let totals = admin_get(&server, "/admin/api/totals").await;
    assert_eq!(totals["connections"], 2, "{totals}");
    assert_eq!(totals["announced"], 1);
    assert_eq!(totals["rules"], 2);
    assert!(totals["events_in"]["total"].as_f64().unwrap() >= 1.0);
    assert!(totals["notifications_out"].as_f64().unwrap() >= 1.0);
    assert!(!totals["history"]["points"].as_array().unwrap().is_empty());
    let sources = admin_get(&server, "/admin/api/sources").await;
    assert_eq!(sources, json!({"sources": []}));
    let cluster = admin_get(&server, "/admin/api/cluster").await;
    assert_eq!(cluster, json!({"enabled": false}));
}

#[tokio::test]
async fn connections_are_paged_in_id_order() {
    let server = Server::start(admin_config()).await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(server.announced().await);
    }
    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let page = admin_get(
            &server,
            &format!("/admin/api/connections?limit=2&after={after}"),
        )
        .await;
        assert_eq!(page["total"], 5);
        let rows = page["connections"].as_array().unwrap();
        assert!(rows.len() <= 2);
        seen.extend(rows.iter().map(|row| row["id"].as_u64().unwrap()));
        match page["next_after"].as_u64() {
            Some(next) => after = next,
            None => break,
        }
    }
    assert_eq!(seen.len(), 5, "{seen:?}");
    assert!(seen.windows(2).all(|pair| pair[0] < pair[1]), "{seen:?}");
    let long_search = format!("q={}", "x".repeat(257));
    for bad in [
        &long_search,
        "limit=0",
        "limit=501",
        "after=-1",
        "limit=x",
        "after=1&after=2",
    ] {
        let (status, body) = call(
            &server,
            "GET",
            &format!("/admin/api/connections?{bad}"),
            Some(TOKEN),
            None,
        )
        .await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["error"].is_string());
    }
}

#[tokio::test]
async fn a_disconnected_client_gets_the_operators_close_code_and_reason() {
    let server = Server::start(admin_config()).await;
    let mut default_close = server.announced().await;
    let mut custom_close = server.announced().await;
    let mut unannounced = server.connect().await;
    let list = admin_get(&server, "/admin/api/connections").await;
    let ids: Vec<u64> = list["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids.len(), 3);

    let (status, body) = disconnect(&server, ids[0], None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        default_close.expect_close().await,
        Some((1008, "disconnected by the operator".to_owned()))
    );

    let (status, body) = disconnect(
        &server,
        ids[1],
        Some(json!({"code": 4001, "reason": "too many subscriptions, bye"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"disconnected": ids[1], "code": 4001, "reason": "too many subscriptions, bye"})
    );
    assert_eq!(
        custom_close.expect_close().await,
        Some((4001, "too many subscriptions, bye".to_owned()))
    );

    // Not yet announced: closed all the same.
    let (status, _) = disconnect(&server, ids[2], Some(json!({"code": 1000}))).await;
    assert_eq!(status, 200);
    assert_eq!(
        unannounced.expect_close().await.map(|(code, _)| code),
        Some(1000)
    );

    for (body, what) in [
        (json!({"code": 1006}), "reserved code"),
        (json!({"code": 3000}), "code outside the allowed set"),
        (json!({"reason": "x".repeat(124)}), "reason too long"),
        (json!({"colour": "red"}), "unknown field"),
    ] {
        let survivor = server.announced().await;
        let list = admin_get(&server, "/admin/api/connections").await;
        let id = list["connections"][0]["id"].as_u64().unwrap();
        let (status, answer) = disconnect(&server, id, Some(body)).await;
        assert_eq!(status, 400, "{what}: {answer}");
        drop(survivor);
    }
    let (status, _) = disconnect(&server, 424242, None).await;
    assert_eq!(status, 404);

    // The sessions ended and left the table.
    eventually(WAIT, std::time::Duration::from_millis(50), async || {
        let list = admin_get(&server, "/admin/api/connections").await;
        if list["total"] == 0 {
            Ok(())
        } else {
            Err(list.to_string())
        }
    })
    .await;
    let metrics = server.metrics().await;
    assert!(metrics.contains("eventgate_connections_closed_total{reason=\"disconnected\"}"));
}

/// True when Redis answers; in CI (`CI=true`) it must.
async fn redis_available() -> bool {
    let reachable = tokio::net::TcpStream::connect("127.0.0.1:6379")
        .await
        .is_ok();
    if !reachable && std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true")) {
        panic!("Redis not reachable at 127.0.0.1:6379, and brokers are mandatory in CI");
    }
    if !reachable {
        eprintln!("\n*** SKIPPED: Redis not reachable at 127.0.0.1:6379 ***\n");
    }
    reachable
}

/// Two nodes on a real Redis backplane, the second also reading a Redis stream: its console
/// shows the source with its state, the backplane's state, and the first node once heard.
#[tokio::test]
async fn sources_and_cluster_peers_on_a_real_redis() {
    if !redis_available().await {
        return;
    }
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let node = |id: &str, extra: &str| {
        let text = format!(
            "dev = true\nstack_id = \"{STACK_ID}\"\nadmin_token = \"{TOKEN}\"\n{extra}\
             [cluster]\nbackend = \"redis\"\nurl = \"redis://127.0.0.1:6379/\"\n\
             channel = \"admin-test-{suffix}\"\nnode_id = \"{id}\"\n"
        );
        eventgate::config::load(Some(&text), Vec::new(), Vec::new()).expect("config loads")
    };
    let source = format!(
        "[[sources]]\nname = \"orders\"\nkind = \"redis_streams\"\nurl = \"redis://127.0.0.1:6379/\"\n\
         streams = [\"admin-test-{suffix}\"]\ngroup = \"g-{suffix}\"\nconsumer = \"c\"\nstart_id = \"0\"\nblock = \"1s\"\n"
    );
    let first = Server::start(node("node-a", "")).await;
    let second = Server::start(node("node-b", &source)).await;
    let every = std::time::Duration::from_millis(100);
    // Until both backplanes are up, an event may not reach the other node: publish again.
    let cluster = eventually(WAIT, every, async || {
        first.publish_event("shop", "tick", json!({})).await;
        let cluster = admin_get(&second, "/admin/api/cluster").await;
        match cluster["peers"].as_array() {
            Some(peers) if !peers.is_empty() => Ok(cluster),
            _ => Err(cluster.to_string()),
        }
    })
    .await;
    assert_eq!(cluster["enabled"], true);
    assert_eq!(cluster["backend"], "redis");
    assert_eq!(cluster["node_id"], "node-b");
    assert_eq!(cluster["peers"][0]["node_id"], "node-a", "{cluster}");
    assert!(cluster["peers"][0]["events"].as_u64().unwrap() >= 1);
    assert!(
        cluster["backplane"]["cluster:subscribe"]["ready"] == true,
        "{cluster}"
    );
    let sources = eventually(WAIT, every, async || {
        let sources = admin_get(&second, "/admin/api/sources").await;
        if sources["sources"][0]["ready"] == true {
            Ok(sources)
        } else {
            Err(sources.to_string())
        }
    })
    .await;
    let orders = &sources["sources"][0];
    assert_eq!(orders["name"], "orders", "{sources}");
    assert_eq!(orders["kind"], "redis_streams");
    assert!(orders["state"].is_string());
}
