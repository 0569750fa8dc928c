//! Who may talk to the fleet server from a browser. Without a token the server listens on
//! loopback only, and a browser on that machine will carry any web page's requests to it: a
//! page can send a cross-site POST (abort a rollout, start one, signed with the server's
//! operator key), and a page whose name is re-pointed at 127.0.0.1 (DNS rebinding) can read the
//! API as if it were the dashboard. Two checks close both, while the dashboard itself and
//! command-line clients (which send no `Origin`) are untouched.

use axum::http::{HeaderMap, Method, header};

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The `Host` is not a loopback name while the server has no token.
    Host,
    /// A state-changing request from another site's page.
    CrossSite,
}

impl Refusal {
    /// For the error body.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::Host => {
                "the Host header is not a loopback address: without a token this server only answers requests \
                 addressed to 127.0.0.1, [::1] or localhost (give --token-file to serve other names)"
            }
            Refusal::CrossSite => "refused: a request from another site's page may not change the fleet",
        }
    }
}

/// Whether a request may proceed. `tokened`: the server requires a token (then a page elsewhere
/// cannot know it, and only cross-site writes are checked).
pub fn check(method: &Method, headers: &HeaderMap, tokened: bool) -> Result<(), Refusal> {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    if !tokened && !host.is_some_and(is_loopback_host) {
        return Err(Refusal::Host);
    }
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    // Browsers send Sec-Fetch-Site (and Origin on every cross-origin POST); other clients send
    // neither and are not browsers carrying someone else's page.
    let fetch_site = headers.get("sec-fetch-site").and_then(|h| h.to_str().ok());
    if fetch_site.is_some_and(|s| s != "same-origin" && s != "none") {
        return Err(Refusal::CrossSite);
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let same = host.is_some_and(|h| {
            origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://")).is_some_and(|o| o == h)
        });
        if !same {
            return Err(Refusal::CrossSite);
        }
    }
    Ok(())
}

/// `127.x.x.x`, `[::1]` or `localhost`, with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(n, port)| if port.parse::<u16>().is_ok() { n } else { host })
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn without_a_token_only_loopback_names_are_answered() {
        for host in ["127.0.0.1:8080", "127.0.0.1", "localhost:9", "LOCALHOST", "[::1]:8080", "127.8.0.1:1"] {
            assert_eq!(check(&Method::GET, &headers(&[("host", host)]), false), Ok(()), "{host}");
        }
        for host in ["evil.example:8080", "evil.example", "10.0.0.5:8080", "localhost.evil.example", "[::2]:80"] {
            assert_eq!(check(&Method::GET, &headers(&[("host", host)]), false), Err(Refusal::Host), "{host}");
        }
        assert_eq!(check(&Method::GET, &HeaderMap::new(), false), Err(Refusal::Host), "no Host at all");
        assert_eq!(check(&Method::GET, &headers(&[("host", "fleet.example.com")]), true), Ok(()), "a token");
    }

    #[test]
    fn a_cross_site_write_is_refused_and_the_dashboard_and_clis_are_not() {
        let post = Method::POST;
        let host = ("host", "127.0.0.1:8080");
        // curl, ureq, `drover rollout`: no Origin, no Sec-Fetch-Site.
        assert_eq!(check(&post, &headers(&[host]), false), Ok(()));
        // The dashboard's own buttons.
        let own = headers(&[host, ("origin", "http://127.0.0.1:8080"), ("sec-fetch-site", "same-origin")]);
        assert_eq!(check(&post, &own, false), Ok(()));
        // Another page open in the same browser.
        let evil = headers(&[host, ("origin", "https://evil.example"), ("sec-fetch-site", "cross-site")]);
        assert_eq!(check(&post, &evil, false), Err(Refusal::CrossSite));
        assert_eq!(check(&post, &evil, true), Err(Refusal::CrossSite), "with a token too");
        assert_eq!(check(&post, &headers(&[host, ("origin", "null")]), false), Err(Refusal::CrossSite));
        assert_eq!(check(&post, &headers(&[host, ("sec-fetch-site", "same-site")]), false), Err(Refusal::CrossSite));
        assert_eq!(check(&Method::GET, &evil, false), Ok(()), "reads are the browser's same-origin policy's");
    }
}
