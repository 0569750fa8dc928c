//! The fleet server's HTTP API from the terminal (`drover fleet status`, `drover rollout`): a
//! blocking client, the token, and the server's error JSON turned into a message.

use std::path::PathBuf;

use anyhow::Context;

/// Reads the token file, when one is given.
pub fn read_token(path: &Option<PathBuf>) -> anyhow::Result<Option<String>> {
    path.as_ref()
        .map(|p| {
            std::fs::read_to_string(p)
                .map(|t| t.trim().to_string())
                .with_context(|| format!("token file {}", p.display()))
        })
        .transpose()
}

/// GET `path` with `query`, as JSON.
pub fn get_json<T: serde::de::DeserializeOwned>(
    server: &str,
    path: &str,
    query: &[(&str, &str)],
    token: &Option<String>,
) -> anyhow::Result<T> {
    let url = format!("{}{path}", server.trim_end_matches('/'));
    let mut req = agent().get(&url).query_pairs(query.iter().copied());
    if let Some(t) = token {
        req = req.header("authorization", &format!("Bearer {t}"));
    }
    finish(&url, req.call())
}

/// POST `body` as JSON to `path`; the reply as JSON.
pub fn post_json<T: serde::de::DeserializeOwned>(
    server: &str,
    path: &str,
    body: &serde_json::Value,
    token: &Option<String>,
) -> anyhow::Result<T> {
    let url = format!("{}{path}", server.trim_end_matches('/'));
    let mut req = agent().post(&url).header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", &format!("Bearer {t}"));
    }
    finish(&url, req.send(body.to_string().as_bytes()))
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).build().into()
}

fn finish<T: serde::de::DeserializeOwned>(
    url: &str,
    reply: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> anyhow::Result<T> {
    let mut reply = reply.with_context(|| format!("fleet server {url}"))?;
    let status = reply.status();
    let body = reply.body_mut().read_to_string().with_context(|| format!("fleet server {url}"))?;
    if !status.is_success() {
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or(body);
        anyhow::bail!("fleet server {url}: {status}: {message}");
    }
    serde_json::from_str(&body).with_context(|| format!("fleet server {url}: unexpected reply"))
}
