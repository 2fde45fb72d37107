//! The console over real HTTP (reqwest, redirects not followed, the session cookie carried by
//! hand) against the real `console` binary, a real coordinator replica, the gateway simulator,
//! PostgreSQL and Redis: sign-in and sign-out, the signed-in rule, security headers, CSRF,
//! paying and following the order's live stream (SSE) to its outcome, a card number refused in
//! the API's words and found neither in the page nor in the console's log, the role refusal of
//! an operator pausing payments, and the reviews queue with its CSV.

use integration_tests::checks::{GUARD, charges};
use integration_tests::console::ConsoleProcess;
use integration_tests::coordinator::{
    ADMIN, OPERATOR, OPERATOR_2, REVIEWER, Replica, SERVICE, TestEnv, key_for,
};
use integration_tests::review;
use payments_proto::v1 as pb;
use reqwest::{StatusCode, header};
use serde_json::json;

/// A browser without a browser: one cookie (the session), no redirects followed.
struct Web {
    http: reqwest::Client,
    base: String,
    cookie: Option<String>,
}

impl Web {
    fn new(console: &ConsoleProcess) -> Web {
        Web {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("http client"),
            base: console.url().to_owned(),
            cookie: None,
        }
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        let mut request = self.http.get(format!("{}{path}", self.base));
        if let Some(cookie) = &self.cookie {
            request = request.header(header::COOKIE, cookie);
        }
        request.send().await.expect("GET")
    }

    async fn post(&self, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        let mut request = self.http.post(format!("{}{path}", self.base)).form(form);
        if let Some(cookie) = &self.cookie {
            request = request.header(header::COOKIE, cookie);
        }
        request.send().await.expect("POST")
    }

    async fn page(&self, path: &str) -> String {
        let response = self.get(path).await;
        assert_eq!(response.status(), StatusCode::OK, "GET {path}");
        response.text().await.expect("body")
    }

    /// Signs in with `key_id`'s key; the session cookie is kept for the next requests.
    async fn sign_in(console: &ConsoleProcess, key_id: &str) -> Web {
        let mut web = Web::new(console);
        let response = web.post("/signin", &[("api_key", &key_for(key_id))]).await;
        assert_eq!(
            response.status(),
            StatusCode::SEE_OTHER,
            "sign-in as {key_id}"
        );
        assert_eq!(location(&response), "/pay");
        web.cookie = Some(session_cookie(&response).expect("a session cookie"));
        web
    }
}

fn location(response: &reqwest::Response) -> String {
    response
        .headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

fn set_cookies(response: &reqwest::Response) -> Vec<String> {
    response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_owned))
        .collect()
}

/// `console_session=…` from the response's `Set-Cookie`.
fn session_cookie(response: &reqwest::Response) -> Option<String> {
    set_cookies(response)
        .into_iter()
        .find(|c| c.starts_with("console_session="))
        .and_then(|c| c.split(';').next().map(str::to_owned))
}

/// The value of the first `<input … name="{name}" value="…">` of a page.
fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} in the page:\n{html}"))
        + marker.len();
    html[start..]
        .split('"')
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// The text of `<div id="error" role="alert">`, if the page has one.
fn error_text(html: &str) -> Option<String> {
    let start = html.find("<div id=\"error\" role=\"alert\">")? + 29;
    Some(html[start..].split("</div>").next()?.to_owned())
}

async fn world() -> (TestEnv, Replica, ConsoleProcess) {
    let env = TestEnv::new().await;
    let replica = env.replica("r0", &[]).await;
    let console = ConsoleProcess::spawn(&replica.url).await;
    (env, replica, console)
}

async fn orders_named(env: &TestEnv, order_id: &str) -> i64 {
    env.sql()
        .await
        .query_one(
            "SELECT count(*) FROM orders WHERE order_id = $1",
            &[&order_id],
        )
        .await
        .expect("count orders")
        .get(0)
}

/// The pay form's fields for `order_id` (12.50 EUR), with the page's CSRF token and
/// idempotency key.
async fn pay_form(web: &Web, order_id: &str, payment_method: &str) -> Vec<(String, String)> {
    let page = web.page("/pay").await;
    vec![
        ("csrf_token".into(), hidden(&page, "csrf_token")),
        ("idempotency_key".into(), hidden(&page, "idempotency_key")),
        ("order_id".into(), order_id.into()),
        ("amount".into(), "12.50".into()),
        ("currency".into(), "EUR".into()),
        ("customer_id".into(), "cust-console".into()),
        ("items".into(), "sku-lamp 1 10.00\nsku-bulb 1 2.50".into()),
        ("payment_method".into(), payment_method.into()),
    ]
}

fn pairs(form: &[(String, String)]) -> Vec<(&str, &str)> {
    form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

#[tokio::test]
async fn sign_in_refuses_a_wrong_key_and_every_page_needs_a_session() {
    let (env, replica, console) = world().await;
    let web = Web::new(&console);

    let health = web.get("/healthz").await;
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(health.text().await.expect("body"), "ok");

    for path in [
        "/",
        "/pay",
        "/orders/o-1",
        "/reviews",
        "/reviews.csv",
        "/feed",
    ] {
        let response = web.get(path).await;
        assert_eq!(response.status(), StatusCode::SEE_OTHER, "GET {path}");
        let expected = if path == "/" { "/pay" } else { "/signin" };
        assert_eq!(location(&response), expected, "GET {path}");
    }
    let response = web.post("/pay", &[("order_id", "o-1")]).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&response), "/signin");

    // Security headers, on pages and assets alike; the assets with their content types.
    for path in ["/signin", "/assets/console.js", "/assets/console.css"] {
        let response = web.get(path).await;
        assert_eq!(response.status(), StatusCode::OK, "GET {path}");
        let h = response.headers();
        let value = |name: &str| {
            h.get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        assert_eq!(
            value("content-security-policy"),
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
            "{path}"
        );
        assert_eq!(value("x-frame-options"), "DENY", "{path}");
        assert_eq!(value("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(value("referrer-policy"), "no-referrer", "{path}");
        let content_type = value("content-type");
        match path {
            "/signin" => {
                assert_eq!(value("cache-control"), "no-store");
                assert!(content_type.starts_with("text/html"), "{content_type}");
                let body = response.text().await.expect("body");
                assert!(body.contains("<input id=\"api_key\" name=\"api_key\" type=\"password\""));
                assert!(body.contains("<label for=\"api_key\">"));
                assert!(!body.contains("<script>"), "no inline script");
                assert!(!body.contains("style="), "no inline style");
            }
            "/assets/console.js" => assert!(content_type.starts_with("text/javascript")),
            _ => assert!(content_type.starts_with("text/css")),
        }
    }

    // A wrong key: refused in words, no cookie.
    let wrong = "pk_test_not_a_key_4711";
    let refused = web.post("/signin", &[("api_key", wrong)]).await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert!(
        set_cookies(&refused).is_empty(),
        "{:?}",
        set_cookies(&refused)
    );
    let body = refused.text().await.expect("body");
    assert_eq!(
        error_text(&body).as_deref(),
        Some("The coordinator did not accept this key.")
    );
    assert!(!body.contains(wrong));

    // The right key: a strict, HttpOnly, encrypted cookie, then the pages.
    let signed_in = web
        .post("/signin", &[("api_key", &key_for(OPERATOR))])
        .await;
    assert_eq!(signed_in.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&signed_in), "/pay");
    let cookie_line = set_cookies(&signed_in)
        .into_iter()
        .find(|c| c.starts_with("console_session="))
        .expect("session cookie");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie_line.contains(attribute), "{cookie_line}");
    }
    assert!(
        !cookie_line.contains(&key_for(OPERATOR)),
        "the key is encrypted"
    );
    let web = Web {
        cookie: session_cookie(&signed_in),
        ..web
    };
    let pay = web.page("/pay").await;
    assert!(pay.contains("id=\"pay-form\""));
    assert!(pay.contains("data-accepting=\"true\""));
    assert!(pay.contains("Payments are accepted."));
    assert!(
        !pay.contains(&key_for(OPERATOR)),
        "the key is never in a page"
    );

    // Sign-out needs the form's token, then clears the cookie.
    let no_token = web.post("/signout", &[]).await;
    assert_eq!(no_token.status(), StatusCode::FORBIDDEN);
    let out = web
        .post("/signout", &[("csrf_token", &hidden(&pay, "csrf_token"))])
        .await;
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&out), "/signin");
    let cleared = set_cookies(&out)
        .into_iter()
        .find(|c| c.starts_with("console_session="))
        .expect("the cookie is cleared");
    assert!(
        cleared.contains("Max-Age=0") || cleared.contains("Expires="),
        "{cleared}"
    );

    let log = console.log();
    assert!(
        !log.contains(&key_for(OPERATOR)) && !log.contains(wrong),
        "{log}"
    );
    drop(console);
    replica.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn forms_without_the_sessions_csrf_token_are_refused_and_do_nothing() {
    let (env, replica, console) = world().await;
    let web = Web::sign_in(&console, OPERATOR).await;
    let form = pay_form(&web, "o-csrf", "pm_card_visa").await;
    let without: Vec<(&str, &str)> = pairs(&form)
        .into_iter()
        .filter(|(k, _)| *k != "csrf_token")
        .collect();
    let mut wrong = without.clone();
    let forged = "0".repeat(64);
    wrong.push(("csrf_token", &forged));
    // Another session's token is as wrong as none.
    let other = Web::sign_in(&console, OPERATOR).await;
    let other_token = hidden(&other.page("/pay").await, "csrf_token");
    let mut foreign = without.clone();
    foreign.push(("csrf_token", &other_token));

    for (what, fields) in [
        ("missing", &without),
        ("forged", &wrong),
        ("another session's", &foreign),
    ] {
        let response = web.post("/pay", fields).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{what} token");
        let body = response.text().await.expect("body");
        assert_eq!(
            error_text(&body).as_deref(),
            Some(
                "This form expired or did not come from this console. Reload the page and \
                 try again."
            ),
            "{what} token"
        );
    }
    assert_eq!(orders_named(&env, "o-csrf").await, 0, "no order was made");
    assert_eq!(charges(&env, "o-csrf").await, 0);

    // The banner's pause form too: an admin's session without the token pauses nothing.
    let admin = Web::sign_in(&console, ADMIN).await;
    let response = admin
        .post("/payments/pause", &[("reason", "forged"), ("back", "/pay")])
        .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let mut client = replica.client(ADMIN).await;
    let status = client
        .get_payments_status(pb::GetPaymentsStatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert!(!status.paused, "{status:?}");

    // With the token the same form pays.
    let paid = web.post("/pay", &pairs(&form)).await;
    assert_eq!(paid.status(), StatusCode::SEE_OTHER);
    assert_eq!(orders_named(&env, "o-csrf").await, 1);
    drop(console);
    replica.stop().await;
    env.cleanup().await;
}

/// Reads the SSE stream until an `order` message whose data names `kind`; returns the data.
async fn read_sse_until(response: reqwest::Response, kind: &str) -> Vec<String> {
    read_named_sse_until(response, "order", kind).await
}

/// Reads the SSE stream until a message named `name` whose data names `kind`; returns the data
/// of every message so named.
async fn read_named_sse_until(response: reqwest::Response, name: &str, kind: &str) -> Vec<String> {
    let mut response = response;
    let mut buffer = String::new();
    let mut messages = Vec::new();
    let wanted = format!("\"kind\":\"{kind}\"");
    let read = async {
        loop {
            let chunk = response
                .chunk()
                .await
                .expect("the stream breaks")
                .expect("the stream ended before the event");
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let message: String = buffer.drain(..end + 2).collect();
                let data: String = message
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim_start)
                    .collect();
                if message
                    .lines()
                    .any(|l| l.trim() == format!("event: {name}"))
                {
                    messages.push(data.clone());
                    if data.contains(&wanted) {
                        return;
                    }
                }
                assert!(
                    !message.contains("event: failure"),
                    "the stream was refused: {message}"
                );
            }
        }
    };
    tokio::time::timeout(GUARD, read)
        .await
        .unwrap_or_else(|_| panic!("never happened: {kind} on the stream ({messages:?})"));
    messages
}

#[tokio::test]
async fn pay_goes_to_the_order_page_which_shows_paid_once_the_stream_delivered_it() {
    let (env, replica, console) = world().await;
    let web = Web::sign_in(&console, OPERATOR).await;
    let form = pay_form(&web, "o-live", "pm_card_visa").await;
    let response = web.post("/pay", &pairs(&form)).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&response), "/orders/o-live");

    let page = web.page("/orders/o-live").await;
    assert!(page.contains("<h1>Order o-live</h1>"));
    assert!(
        page.contains("data-live-url=\"/orders/o-live/live?after="),
        "{page}"
    );
    assert!(
        page.contains("<p id=\"order-amount\">Amount: 12.50 EUR"),
        "{page}"
    );

    // The live stream from the start: the attempt's events, up to its success.
    let stream = web.get("/orders/o-live/live?after=0").await;
    assert_eq!(stream.status(), StatusCode::OK);
    let content_type = stream
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    let messages = read_sse_until(stream, "ATTEMPT_SUCCEEDED").await;
    let last: serde_json::Value =
        serde_json::from_str(messages.last().expect("a message")).expect("JSON data");
    assert_eq!(last["state"], "PAID");
    assert_eq!(last["state_text"], "Paid");
    assert_eq!(last["actor"], OPERATOR);
    assert!(
        messages
            .iter()
            .any(|m| m.contains("\"kind\":\"ATTEMPT_STARTED\"")),
        "{messages:?}"
    );

    let page = web.page("/orders/o-live").await;
    assert!(
        page.contains("<p id=\"order-state\" data-state=\"PAID\""),
        "{page}"
    );
    // Refunds are a reviewer's or an admin's: an operator's page offers none.
    assert!(!page.contains("refund-link") && !page.contains("refund-slot"));
    assert!(page.contains("class=\"attempt\" data-number=\"1\""));
    assert!(page.contains("ATTEMPT_SUCCEEDED PAID op-alice"), "{page}");
    assert_eq!(charges(&env, "o-live").await, 1, "one charge in the ledger");

    // The order as the API recorded it: the amounts typed in major units, exactly.
    let order = replica
        .client(OPERATOR)
        .await
        .get_order(pb::GetOrderRequest {
            order_id: "o-live".into(),
        })
        .await
        .expect("order")
        .into_inner();
    assert_eq!(order.amount.as_ref().map(|m| m.amount_minor), Some(1250));
    let items: Vec<(String, i32, i64)> = order
        .items
        .iter()
        .map(|i| (i.product_id.clone(), i.quantity, i.unit_amount_minor))
        .collect();
    assert_eq!(
        items,
        [
            ("sku-lamp".to_owned(), 1, 1000),
            ("sku-bulb".to_owned(), 1, 250)
        ]
    );

    // The same form again (same idempotency key: a double submit) joins, never charges twice.
    let again = web.post("/pay", &pairs(&form)).await;
    assert_eq!(again.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&again), "/orders/o-live");
    assert_eq!(charges(&env, "o-live").await, 1);

    // A partial refund by a reviewer, then what remains; more than that is refused in words.
    let reviewer = Web::sign_in(&console, REVIEWER).await;
    let refund_page = reviewer.page("/orders/o-live/refund").await;
    assert!(refund_page.contains("<p id=\"refundable\">Refundable: 12.50 EUR</p>"));
    let refund = |page: &str, amount: &str| {
        vec![
            ("csrf_token".to_owned(), hidden(page, "csrf_token")),
            (
                "idempotency_key".to_owned(),
                hidden(page, "idempotency_key"),
            ),
            ("amount".to_owned(), amount.to_owned()),
            ("reason".to_owned(), "a broken bulb".to_owned()),
        ]
    };
    let refunded = reviewer
        .post(
            "/orders/o-live/refund",
            &pairs(&refund(&refund_page, "2.50")),
        )
        .await;
    assert_eq!(refunded.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&refunded), "/orders/o-live");
    let refund_page = reviewer.page("/orders/o-live/refund").await;
    assert!(refund_page.contains("<p id=\"refundable\">Refundable: 10.00 EUR</p>"));
    let too_much = reviewer
        .post(
            "/orders/o-live/refund",
            &pairs(&refund(&refund_page, "20.00")),
        )
        .await;
    assert_eq!(too_much.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let error = error_text(&too_much.text().await.expect("body")).expect("error");
    assert!(error.contains("at most 10.00 EUR"), "{error}");
    let page = reviewer.page("/orders/o-live").await;
    assert!(page.contains("refunded 2.50 EUR"), "{page}");
    drop(console);
    replica.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_card_number_is_refused_in_the_apis_words_and_neither_echoed_nor_logged() {
    let (env, replica, console) = world().await;
    let web = Web::sign_in(&console, OPERATOR).await;
    for card in ["4242 4242 4242 4242", "4000056655665556"] {
        let form = pay_form(&web, "o-card", card).await;
        let response = web.post("/pay", &pairs(&form)).await;
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let body = response.text().await.expect("body");
        let error = error_text(&body).expect("an error on the page");
        assert!(
            error.contains("Payment method: looks like a card number"),
            "the API's own message: {error}"
        );
        let digits: String = card.chars().filter(char::is_ascii_digit).collect();
        assert!(
            !body.contains(card) && !body.contains(&digits),
            "echoed: {body}"
        );
        // The other fields are kept for the operator to correct.
        assert!(body.contains("value=\"o-card\""));
        assert!(body.contains("value=\"12.50\""));
        let log = console.log();
        assert!(
            !log.contains(card) && !log.contains(&digits),
            "logged: {log}"
        );
        assert!(!log.contains(&key_for(OPERATOR)));
    }
    assert_eq!(orders_named(&env, "o-card").await, 0);

    // A bad amount is refused in words before any call.
    let mut form = pay_form(&web, "o-amount", "pm_card_visa").await;
    form[3].1 = "12,50".into();
    let response = web.post("/pay", &pairs(&form)).await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let error = error_text(&response.text().await.expect("body")).expect("error");
    assert!(error.contains("is not an amount"), "{error}");
    assert_eq!(orders_named(&env, "o-amount").await, 0);
    drop(console);
    replica.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn an_operator_pausing_payments_gets_the_role_refusal_in_words() {
    let (env, replica, console) = world().await;
    let operator = Web::sign_in(&console, OPERATOR).await;
    let page = operator.page("/pay").await;
    // The console knows who signed in (GetCaller) and offers pausing to admins only; the API
    // still refuses an operator's pause sent anyway.
    assert!(
        page.contains("Signed in as <strong>op-alice</strong> (operator)"),
        "{page}"
    );
    assert!(!page.contains("id=\"pause-form\""), "{page}");
    let response = operator
        .post(
            "/payments/pause",
            &[
                ("csrf_token", &hidden(&page, "csrf_token")),
                ("reason", "lunch"),
                ("back", "/pay"),
            ],
        )
        .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let body = response.text().await.expect("body");
    assert_eq!(
        error_text(&body).as_deref(),
        Some("Your key's role may not do this: ask an admin.")
    );
    assert!(body.contains("data-accepting=\"true\""));

    // An admin may: back to where the form was, and the operator sees the banner and is
    // refused with the pause's reason.
    let admin = Web::sign_in(&console, ADMIN).await;
    let admin_page = admin.page("/feed").await;
    let paused = admin
        .post(
            "/payments/pause",
            &[
                ("csrf_token", &hidden(&admin_page, "csrf_token")),
                ("reason", "gateway maintenance"),
                ("back", "/feed"),
            ],
        )
        .await;
    assert_eq!(paused.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&paused), "/feed");
    let page = operator.page("/pay").await;
    assert!(page.contains("data-accepting=\"false\""), "{page}");
    assert!(
        page.contains("Payments are paused by admin-dave since ")
            && page.contains(": gateway maintenance"),
        "{page}"
    );
    assert!(!page.contains("id=\"resume-form\""), "{page}");
    assert!(
        admin.page("/pay").await.contains("id=\"resume-form\""),
        "the admin is offered to resume"
    );
    let form = pay_form(&operator, "o-paused", "pm_card_visa").await;
    let refused = operator.post("/pay", &pairs(&form)).await;
    let error = error_text(&refused.text().await.expect("body")).expect("error");
    assert!(error.contains("gateway maintenance"), "{error}");
    assert_eq!(orders_named(&env, "o-paused").await, 0);

    // A `back` pointing elsewhere is not followed.
    let admin_page = admin.page("/pay").await;
    let resumed = admin
        .post(
            "/payments/resume",
            &[
                ("csrf_token", &hidden(&admin_page, "csrf_token")),
                ("back", "//evil.example/"),
            ],
        )
        .await;
    assert_eq!(resumed.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&resumed), "/pay");
    assert!(
        operator
            .page("/pay")
            .await
            .contains("Payments are accepted.")
    );

    // The feed is for service and admin keys: an operator reads the refusal in words.
    let feed = operator.get("/feed").await;
    assert_eq!(feed.status(), StatusCode::FORBIDDEN);
    let error = error_text(&feed.text().await.expect("body")).expect("error");
    assert_eq!(error, "Your key's role may not do this: ask an admin.");
    let service = Web::sign_in(&console, SERVICE).await;
    assert!(service.page("/feed").await.contains("<ol id=\"feed\""));
    drop(console);
    replica.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn the_reviews_csv_has_a_header_and_one_row_per_open_item() {
    let env = TestEnv::new().await;
    let replica = env.replica("r0", &review::REPLICA_ARGS).await;
    let console = ConsoleProcess::spawn(&replica.url).await;
    let mut client = replica.client(OPERATOR).await;
    for order_id in ["o-review-1", "o-review-2"] {
        review::hang_the_next_create(&env).await;
        let order = client
            .process_payment(pb::ProcessPaymentRequest {
                order_id: order_id.into(),
                amount: Some(pb::Money {
                    amount_minor: 4200,
                    currency: "EUR".into(),
                }),
                customer_id: "cust-review".into(),
                payment_method: "pm_card_visa".into(),
                items: vec![],
                idempotency_key: format!("k-{order_id}"),
                wait_for_outcome: true,
            })
            .await
            .expect("answered")
            .into_inner()
            .order
            .expect("order");
        assert_eq!(order.state(), pb::OrderState::ManualReview, "{order_id}");
    }

    let reviewer = Web::sign_in(&console, REVIEWER).await;
    let csv = reviewer.get("/reviews.csv").await;
    assert_eq!(csv.status(), StatusCode::OK);
    let h = csv.headers().clone();
    assert!(
        h.get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/csv"))
    );
    assert_eq!(
        h.get(header::CONTENT_DISPOSITION)
            .and_then(|v| v.to_str().ok()),
        Some("attachment; filename=\"manual-reviews.csv\"")
    );
    let text = csv.text().await.expect("body");
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("order_id,customer_id,amount_minor,currency,state,items,"),
        "{text}"
    );
    assert_eq!(
        lines.len(),
        3,
        "a header and one row per open item:\n{text}"
    );
    for order_id in ["o-review-1", "o-review-2"] {
        assert_eq!(
            lines
                .iter()
                .filter(|l| l.starts_with(&format!("{order_id},")))
                .count(),
            1,
            "{text}"
        );
    }

    // The queue page shows both, each with its resolve form; resolving one leaves one row.
    let page = reviewer.page("/reviews").await;
    assert_eq!(page.matches("<tr class=\"review\"").count(), 2, "{page}");
    assert!(page.contains("data-order-id=\"o-review-1\""));
    assert!(page.contains("action=\"/reviews/o-review-1/resolve\""));
    assert!(page.contains("id=\"reviews-csv\" href=\"/reviews.csv\""));
    let resolved = reviewer
        .post(
            "/reviews/o-review-1/resolve",
            &[
                ("csrf_token", &hidden(&page, "csrf_token")),
                ("resolution", "not_charged"),
                ("gateway_payment_id", ""),
                ("note", "nothing in the gateway dashboard"),
            ],
        )
        .await;
    assert_eq!(resolved.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&resolved), "/orders/o-review-1");
    let text = reviewer
        .get("/reviews.csv")
        .await
        .text()
        .await
        .expect("body");
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(
        text.lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("o-review-2,"))
    );

    // An operator may not read the queue: the refusal in words, not a status code.
    let operator = Web::sign_in(&console, OPERATOR).await;
    let refused = operator.get("/reviews").await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let error = error_text(&refused.text().await.expect("body")).expect("error");
    assert_eq!(error, "Your key's role may not do this: ask an admin.");
    drop(console);
    replica.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_busy_order_sends_the_second_operator_to_follow_the_holders_attempt() {
    let (env, replica, console) = world().await;
    // A slow gateway keeps Alice's attempt in flight while Bob presses pay.
    env.sim_control
        .set_faults(json!({ "latency_ms": 5000 }))
        .await
        .expect("slow gateway");
    let alice = Web::sign_in(&console, OPERATOR).await;
    let bob = Web::sign_in(&console, OPERATOR_2).await;
    let alice_form = pay_form(&alice, "o-busy", "pm_card_visa").await;
    let bob_form = pay_form(&bob, "o-busy", "pm_card_visa").await;
    let started = alice.post("/pay", &pairs(&alice_form)).await;
    assert_eq!(location(&started), "/orders/o-busy");

    let refused = bob.post("/pay", &pairs(&bob_form)).await;
    assert_eq!(refused.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&refused), "/orders/o-busy?busy=1");
    let page = bob.page("/orders/o-busy?busy=1").await;
    let error = error_text(&page).expect("the refusal in words");
    assert!(
        error.starts_with("Operator op-alice is already paying this order (since ")
            && error.ends_with("). Its outcome appears below."),
        "{error}"
    );
    assert!(
        page.contains("<p id=\"holder\" aria-live=\"polite\">op-alice is paying this order since "),
        "{page}"
    );
    assert!(page.contains(
        "data-state=\"AWAITING_CONFIRMATION\" aria-live=\"polite\">Awaiting confirmation"
    ));
    // Alice's own page says it is hers.
    let own = alice.page("/orders/o-busy").await;
    assert!(
        own.contains("<p id=\"holder\" aria-live=\"polite\">You are paying this order since ")
            && own.contains("(as op-alice)"),
        "{own}"
    );

    // Bob follows it live from what his page showed, to the outcome.
    let after = page
        .split("data-live-url=\"/orders/o-busy/live?after=")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the page names its stream")
        .to_owned();
    let stream = bob.get(&format!("/orders/o-busy/live?after={after}")).await;
    let messages = read_sse_until(stream, "ATTEMPT_SUCCEEDED").await;
    let last: serde_json::Value =
        serde_json::from_str(messages.last().expect("a message")).expect("JSON");
    assert_eq!(last["actor"], OPERATOR);
    assert_eq!(last["holder"], "", "nobody holds a paid order");
    let page = bob.page("/orders/o-busy").await;
    assert!(
        page.contains("data-state=\"PAID\" aria-live=\"polite\">Paid"),
        "{page}"
    );
    assert!(
        page.contains("<p id=\"holder\" aria-live=\"polite\" hidden>"),
        "{page}"
    );
    assert_eq!(charges(&env, "o-busy").await, 1, "exactly one charge");
    drop(console);
    replica.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn sigterm_ends_the_live_streams_and_stops_the_console() {
    let (env, replica, mut console) = world().await;
    let web = Web::sign_in(&console, OPERATOR).await;
    let form = pay_form(&web, "o-stop", "pm_card_visa").await;
    web.post("/pay", &pairs(&form)).await;
    let mut stream = web.get("/orders/o-stop/live?after=0").await;
    // The stream is open (its first event arrived), then the console is told to stop.
    let first = tokio::time::timeout(GUARD, stream.chunk())
        .await
        .expect("never happened: a first event")
        .expect("chunk");
    assert!(first.is_some());
    let status = console.terminate().await;
    assert!(status.success(), "{status:?}: {}", console.log());
    // What the stream still held, then its end (not a hang).
    let end = async { while let Ok(Some(_)) = stream.chunk().await {} };
    tokio::time::timeout(GUARD, end)
        .await
        .expect("never happened: the stream ends");
    drop(console);
    replica.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn the_feed_shows_the_latest_events_and_follows_new_ones_live() {
    let (env, replica, console) = world().await;
    let operator = Web::sign_in(&console, OPERATOR).await;
    let form = pay_form(&operator, "o-feed-1", "pm_card_visa").await;
    operator.post("/pay", &pairs(&form)).await;
    read_sse_until(
        operator.get("/orders/o-feed-1/live?after=0").await,
        "ATTEMPT_SUCCEEDED",
    )
    .await;

    let service = Web::sign_in(&console, SERVICE).await;
    let page = service.page("/feed").await;
    assert!(page.contains("<ol id=\"feed\""), "{page}");
    assert!(page.contains("ATTEMPT_SUCCEEDED PAID op-alice"), "{page}");
    let after = page
        .split("data-live-url=\"/feed/live?after=")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the page names its stream")
        .to_owned();
    assert_ne!(after, "0", "the stream resumes after what the page shows");

    // A payment after the page was read arrives on the live stream, and only it.
    let stream = service.get(&format!("/feed/live?after={after}")).await;
    let form = pay_form(&operator, "o-feed-2", "pm_card_visa").await;
    operator.post("/pay", &pairs(&form)).await;
    let messages = read_named_sse_until(stream, "feed", "ATTEMPT_SUCCEEDED").await;
    for message in &messages {
        let event: serde_json::Value = serde_json::from_str(message).expect("JSON");
        assert_eq!(event["order_id"], "o-feed-2", "{messages:?}");
    }
    drop(console);
    replica.stop().await;
    env.cleanup().await;
}
