//! The web console in a real browser (issue #10): headless Chromium, driven through chromedriver
//! (WebDriver), against the real `console` binary, real coordinator replicas, PostgreSQL, Redis and
//! the simulator. Each test has its own stack; money is checked against the simulator's ledger.
//!
//! Skipped, with one line on stderr saying so, only when Chromium or chromedriver is not installed
//! (`apt-get install -y chromium chromium-driver`). With `CONSOLE_SCREENSHOTS=1` the tests also
//! save the screenshots of docs/CONSOLE.md in docs/console/.
//!
//! Needs the `console` and `coordinator` binaries: `cargo build -p console -p coordinator` first
//! (scripts/test.sh builds them).

use fantoccini::Client;
use integration_tests::browser::{
    Browser, attribute, click, cookie_header, fill, path, screenshot, text_of, wait_for_element,
    wait_for_path, wait_for_text,
};
use integration_tests::checks::{self, charges};
use integration_tests::console::ConsoleProcess;
use integration_tests::coordinator::{
    ADMIN, OPERATOR, OPERATOR_2, REVIEWER, SERVICE, TestEnv, key_for,
};
use integration_tests::process::CoordinatorProcess;
use integration_tests::review;
use payments_proto::v1 as pb;
use serde_json::json;

/// The page a form without (or with a wrong) CSRF token gets.
const CSRF_REFUSAL: &str =
    "This form expired or did not come from this console. Reload the page and try again.";

/// A card number that passes the Luhn check, as an operator might paste it.
const CARD: &str = "4242 4242 4242 4242";

/// Signs `session` in to the console at `console` with `key_id`'s key; ends on the pay page.
async fn sign_in(session: &Client, console: &str, key_id: &str) {
    session
        .goto(&format!("{console}/signin"))
        .await
        .expect("open /signin");
    fill(session, "#api_key", &key_for(key_id)).await;
    click(session, "#signin-form button[type=submit]").await;
    wait_for_path(session, "/pay").await;
    wait_for_element(session, "#pay-form").await;
}

/// Opens the pay page and fills the form (items left empty: one line for the whole amount).
async fn fill_pay_form(
    session: &Client,
    console: &str,
    order_id: &str,
    amount: &str,
    method: &str,
) {
    session
        .goto(&format!("{console}/pay"))
        .await
        .expect("open /pay");
    fill(session, "#order_id", order_id).await;
    fill(session, "#amount", amount).await;
    fill(session, "#customer_id", "cust-console").await;
    fill(session, "#payment_method", method).await;
}

async fn submit_pay_form(session: &Client) {
    click(session, "#pay-form button[type=submit]").await;
}

/// Pays `order_id` (42.00 EUR, pm_card_visa) through the API as `client`'s caller and waits for
/// the outcome.
async fn pay_through_the_api(
    client: &mut integration_tests::coordinator::Client,
    order_id: &str,
) -> pb::Order {
    client
        .process_payment(pb::ProcessPaymentRequest {
            order_id: order_id.to_owned(),
            amount: Some(pb::Money {
                amount_minor: 4200,
                currency: "EUR".to_owned(),
            }),
            customer_id: "cust-console".to_owned(),
            payment_method: "pm_card_visa".to_owned(),
            items: vec![pb::LineItem {
                product_id: "sku-lamp".to_owned(),
                quantity: 1,
                unit_amount_minor: 4200,
            }],
            idempotency_key: format!("k-{order_id}"),
            wait_for_outcome: true,
        })
        .await
        .expect("payment answered")
        .into_inner()
        .order
        .expect("order")
}

/// A reqwest client that does not follow redirects (to see the console's 303s).
fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("http client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_operators_pay_the_same_order_at_once_and_it_is_charged_once() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let env = TestEnv::new().await;
    // Two replicas, each with its own console: the operators race through different processes.
    let r0 = env.replica("r0", &[]).await;
    let r1 = env.replica("r1", &[]).await;
    let console_a = ConsoleProcess::spawn(&r0.url).await;
    let console_b = ConsoleProcess::spawn(&r1.url).await;
    let alice = browser.session().await;
    let bob = browser.session().await;

    // Sign-in: a wrong key is refused in words and leaves no session cookie.
    alice
        .goto(&format!("{}/signin", console_a.url()))
        .await
        .expect("open /signin");
    wait_for_element(&alice, "label[for=api_key]").await;
    screenshot(&alice, "signin").await;
    fill(&alice, "#api_key", "pk_test_nobody_000000").await;
    click(&alice, "#signin-form button[type=submit]").await;
    wait_for_text(&alice, "#error", "The coordinator did not accept this key.").await;
    assert!(
        alice.get_named_cookie("console_session").await.is_err(),
        "a refused key must not start a session"
    );
    sign_in(&alice, console_a.url(), OPERATOR).await;
    sign_in(&bob, console_b.url(), OPERATOR_2).await;

    // The gateway answers slowly, so that the attempt that wins is still in flight when the other
    // operator's request arrives, and while the loser's page first shows the order.
    env.sim_control
        .set_faults(json!({ "latency_ms": 3000, "operations": ["create", "confirm"] }))
        .await
        .expect("faults");

    let order = "console-race-1";
    fill_pay_form(&alice, console_a.url(), order, "42.00", "pm_card_visa").await;
    fill_pay_form(&bob, console_b.url(), order, "42.00", "pm_card_visa").await;
    screenshot(&alice, "pay").await;
    tokio::join!(submit_pay_form(&alice), submit_pay_form(&bob));

    wait_for_path(&alice, &format!("/orders/{order}")).await;
    wait_for_path(&bob, &format!("/orders/{order}")).await;
    let alice_busy = path(&alice).await.contains("busy=1");
    let bob_busy = path(&bob).await.contains("busy=1");
    assert!(
        alice_busy != bob_busy,
        "exactly one operator must be told the order is busy (alice: {}, bob: {})",
        path(&alice).await,
        path(&bob).await
    );
    let (winner, winner_id, loser) = if bob_busy {
        (&alice, OPERATOR, &bob)
    } else {
        (&bob, OPERATOR_2, &alice)
    };

    // The loser sees who holds the order and since when, in words, while it is still in flight.
    let holder = wait_for_element(loser, "#holder:not([hidden])").await;
    let holder = holder.text().await.expect("holder text");
    assert!(
        holder.contains(winner_id) && holder.contains("is paying this order since"),
        "{holder}"
    );
    let error = text_of(loser, "#error").await;
    assert!(
        error.contains(winner_id) && error.contains("is already paying this order"),
        "{error}"
    );
    assert_eq!(
        attribute(loser, "#order-state", "data-state")
            .await
            .as_deref(),
        Some("AWAITING_CONFIRMATION"),
        "the loser's page must first show the attempt in flight"
    );
    screenshot(loser, "order-busy").await;

    // Then the outcome arrives live on both pages, without a reload.
    for page in [winner, loser] {
        wait_for_element(page, r#"body[data-live="open"]"#).await;
        wait_for_element(page, r#"#order-state[data-state="PAID"]"#).await;
        wait_for_text(page, "#order-state", "Paid").await;
        wait_for_element(page, "#holder[hidden]").await;
    }
    assert!(
        path(loser).await.contains("busy=1"),
        "no reload on the loser's page"
    );
    wait_for_text(loser, "#events", "ATTEMPT_SUCCEEDED").await;
    // The attempts table follows too: the row's outcome and the charge's intent id, no reload.
    for page in [winner, loser] {
        wait_for_text(
            page,
            r#"#attempts tr.attempt[data-number="1"]"#,
            "succeeded",
        )
        .await;
        wait_for_text(page, r#"#attempts tr.attempt[data-number="1"]"#, "pi_").await;
    }
    screenshot(winner, "order-live").await;

    assert_eq!(
        charges(&env, order).await,
        1,
        "exactly one charge in the ledger"
    );
    let attempts = winner
        .find_all(fantoccini::Locator::Css("#attempts tr.attempt"))
        .await
        .expect("attempts");
    assert_eq!(attempts.len(), 1, "one attempt: the loser's never started");

    browser.close().await;
    drop((console_a, console_b));
    r0.stop().await;
    r1.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decline_shows_its_reason() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let env = TestEnv::new().await;
    let replica = env.replica("r0", &[]).await;
    let console = ConsoleProcess::spawn(&replica.url).await;
    let alice = browser.session().await;
    sign_in(&alice, console.url(), OPERATOR).await;

    let order = "console-decline-1";
    fill_pay_form(
        &alice,
        console.url(),
        order,
        "19.90",
        "pm_card_chargeDeclined",
    )
    .await;
    submit_pay_form(&alice).await;
    wait_for_path(&alice, &format!("/orders/{order}")).await;
    wait_for_element(&alice, r#"#order-state[data-state="PENDING"]"#).await;
    let state = wait_for_text(&alice, "#order-state", "Declined: ").await;
    assert!(
        state.contains("Your card was declined.") && state.contains("generic_decline"),
        "the reason the gateway gave: {state}"
    );
    assert_eq!(charges(&env, order).await, 0);

    browser.close().await;
    drop(console);
    replica.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_review_item_is_resolved_from_the_queue_and_downloaded_as_csv() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let env = TestEnv::new().await;
    let replica = env.replica("r0", &review::REPLICA_ARGS).await;
    let console = ConsoleProcess::spawn(&replica.url).await;

    // Charged, but the answer is lost: nothing can tell, so the order goes to manual review.
    let order_id = "console-review-1";
    review::charge_and_lose_the_next_answer(&env).await;
    let mut api = replica.client(OPERATOR).await;
    let order = pay_through_the_api(&mut api, order_id).await;
    assert_eq!(order.state(), pb::OrderState::ManualReview, "{order:?}");
    assert_eq!(charges(&env, order_id).await, 1);
    let ledger = env.sim_control.ledger().await.expect("ledger");
    let intent = ledger
        .intents
        .iter()
        .find(|i| i.metadata.get("order_id").map(String::as_str) == Some(order_id))
        .expect("the charged intent")
        .id
        .clone();

    let carol = browser.session().await;
    sign_in(&carol, console.url(), REVIEWER).await;
    carol
        .goto(&format!("{}/reviews", console.url()))
        .await
        .expect("open /reviews");
    let row = format!(r#"#reviews tr.review[data-order-id="{order_id}"]"#);
    let text = wait_for_element(&carol, &row)
        .await
        .text()
        .await
        .expect("row text");
    for needle in [order_id, "cust-console", OPERATOR, "42.00"] {
        assert!(text.contains(needle), "{needle} in the review row: {text}");
    }
    screenshot(&carol, "reviews").await;

    // The CSV link downloads the whole queue, with this session's sign-in only.
    let href = attribute(&carol, "#reviews-csv", "href")
        .await
        .expect("the CSV link");
    let csv_url = if href.starts_with("http") {
        href
    } else {
        format!("{}{href}", console.url())
    };
    let anonymous = http().get(&csv_url).send().await.expect("GET csv");
    assert_eq!(anonymous.status(), 303, "not signed in: to /signin");
    let csv = http()
        .get(&csv_url)
        .header("cookie", cookie_header(&carol).await)
        .send()
        .await
        .expect("GET csv");
    assert_eq!(csv.status(), 200);
    let content_type = csv.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(content_type.starts_with("text/csv"), "{content_type}");
    let disposition = csv.headers()["content-disposition"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(
        disposition.contains("attachment") && disposition.contains("manual-reviews.csv"),
        "{disposition}"
    );
    let body = csv.text().await.expect("csv body");
    assert!(body.lines().count() >= 2, "a header and the item: {body}");
    assert!(
        body.contains(order_id) && body.contains("cust-console"),
        "{body}"
    );

    // Resolved as charged, with the gateway's payment id: the order is paid, still one charge.
    let select = wait_for_element(&carol, &format!("{row} select[name=resolution]")).await;
    select.select_by_value("charged").await.expect("select");
    fill(
        &carol,
        &format!("{row} input[name=gateway_payment_id]"),
        &intent,
    )
    .await;
    fill(
        &carol,
        &format!("{row} input[name=note]"),
        "found in the gateway dashboard",
    )
    .await;
    click(&carol, &format!("{row} button[type=submit]")).await;
    wait_for_path(&carol, &format!("/orders/{order_id}")).await;
    wait_for_element(&carol, r#"#order-state[data-state="PAID"]"#).await;
    wait_for_text(&carol, "#events", "MANUAL_REVIEW_RESOLVED").await;
    assert_eq!(charges(&env, order_id).await, 1);
    carol
        .goto(&format!("{}/reviews", console.url()))
        .await
        .expect("open /reviews");
    wait_for_element(&carol, "#reviews").await;
    assert!(
        carol.find(fantoccini::Locator::Css(&row)).await.is_err(),
        "a resolved item leaves the queue"
    );

    browser.close().await;
    drop(console);
    replica.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_partial_then_full_shows_in_the_live_feed() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let env = TestEnv::new().await;
    let replica = env.replica("r0", &[]).await;
    let console = ConsoleProcess::spawn(&replica.url).await;
    let order_id = "console-refund-1";
    let mut api = replica.client(OPERATOR).await;
    let order = pay_through_the_api(&mut api, order_id).await;
    assert_eq!(order.state(), pb::OrderState::Paid, "{order:?}");

    // A service follows the live feed while the reviewer refunds.
    let feed = browser.session().await;
    sign_in(&feed, console.url(), SERVICE).await;
    feed.goto(&format!("{}/feed", console.url()))
        .await
        .expect("open /feed");
    wait_for_element(&feed, r#"body[data-live="open"]"#).await;
    wait_for_text(&feed, "#feed", order_id).await;

    let carol = browser.session().await;
    sign_in(&carol, console.url(), REVIEWER).await;
    carol
        .goto(&format!("{}/orders/{order_id}", console.url()))
        .await
        .expect("open the order");
    click(&carol, "#refund-link").await;
    wait_for_path(&carol, &format!("/orders/{order_id}/refund")).await;
    wait_for_text(&carol, "#refundable", "42.00").await;
    fill(&carol, "#refund-form input[name=amount]", "10.00").await;
    fill(
        &carol,
        "#refund-form input[name=reason]",
        "one lamp returned",
    )
    .await;
    screenshot(&carol, "refund").await;
    click(&carol, "#refund-form button[type=submit]").await;
    wait_for_path(&carol, &format!("/orders/{order_id}")).await;
    wait_for_text(&carol, "#events", "REFUNDED").await;

    // The feed shows it live, newest first.
    let first = wait_for_text(&feed, "#feed li.event:first-child", "REFUNDED").await;
    assert!(first.contains(order_id), "{first}");
    screenshot(&feed, "feed").await;

    // What remains, then the rest.
    click(&carol, "#refund-link").await;
    wait_for_text(&carol, "#refundable", "32.00").await;
    fill(&carol, "#refund-form input[name=reason]", "order cancelled").await;
    click(&carol, "#refund-form button[type=submit]").await;
    wait_for_path(&carol, &format!("/orders/{order_id}")).await;
    wait_for_element(&carol, r#"#order-state[data-state="REFUNDED"]"#).await;
    wait_for_text(&carol, "#order-state", "Refunded").await;

    let ledger = env.sim_control.ledger().await.expect("ledger");
    let intent = ledger
        .intents
        .iter()
        .find(|i| i.metadata.get("order_id").map(String::as_str) == Some(order_id))
        .expect("the charged intent");
    assert_eq!(intent.times_charged, 1);
    assert_eq!(intent.amount_refunded, 4200, "{intent:?}");
    assert_eq!(intent.refunds.len(), 2, "{intent:?}");

    browser.close().await;
    drop(console);
    replica.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_pause_shows_the_banner_and_refuses_payments_with_its_reason() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let env = TestEnv::new().await;
    let replica = env.replica("r0", &[]).await;
    let console = ConsoleProcess::spawn(&replica.url).await;
    let alice = browser.session().await;
    let dave = browser.session().await;
    sign_in(&alice, console.url(), OPERATOR).await;
    sign_in(&dave, console.url(), ADMIN).await;
    wait_for_element(&alice, r#"#payments-status[data-accepting="true"]"#).await;
    wait_for_text(&alice, "#payments-status", "Payments are accepted.").await;

    // An operator is not offered to pause (the API would refuse it: tests/tests/console_http.rs
    // sends one anyway); the page says who is signed in.
    wait_for_text(&alice, "#signed-in-as", "(operator)").await;
    assert!(
        alice
            .find(fantoccini::Locator::Css("#pause-form"))
            .await
            .is_err(),
        "no pause form for an operator"
    );
    wait_for_text(&dave, "#signed-in-as", "(admin)").await;

    let reason = "gateway maintenance until 18:00";
    fill(&dave, "#pause-form input[name=reason]", reason).await;
    click(&dave, "#pause-form button[type=submit]").await;
    wait_for_element(&dave, r#"#payments-status[data-accepting="false"]"#).await;
    wait_for_element(&dave, "#resume-form").await;

    // The operator, on another session, sees the banner with who, why and since when.
    alice
        .goto(&format!("{}/pay", console.url()))
        .await
        .expect("open /pay");
    wait_for_element(&alice, r#"#payments-status[data-accepting="false"]"#).await;
    let banner = text_of(&alice, "#payments-status").await;
    assert!(
        banner.contains("Payments are paused by")
            && banner.contains(ADMIN)
            && banner.contains(reason),
        "{banner}"
    );
    let order = "console-paused-1";
    fill_pay_form(&alice, console.url(), order, "42.00", "pm_card_visa").await;
    submit_pay_form(&alice).await;
    let error = wait_for_text(&alice, "#error", reason).await;
    assert!(!error.trim().is_empty());
    screenshot(&alice, "paused").await;
    assert_eq!(charges(&env, order).await, 0);
    let mut api = replica.client(OPERATOR).await;
    let missing = api
        .get_order(pb::GetOrderRequest {
            order_id: order.to_owned(),
        })
        .await
        .expect_err("a refused payment leaves no order");
    assert_eq!(checks::reason(&missing), "ORDER_NOT_FOUND");

    // Resumed: accepted again.
    click(&dave, "#resume-form button[type=submit]").await;
    wait_for_element(&dave, r#"#payments-status[data-accepting="true"]"#).await;
    fill_pay_form(&alice, console.url(), order, "42.00", "pm_card_visa").await;
    wait_for_element(&alice, r#"#payments-status[data-accepting="true"]"#).await;
    submit_pay_form(&alice).await;
    wait_for_path(&alice, &format!("/orders/{order}")).await;
    wait_for_element(&alice, r#"#order-state[data-state="PAID"]"#).await;
    assert_eq!(charges(&env, order).await, 1);

    browser.close().await;
    drop(console);
    replica.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_card_number_is_refused_and_appears_in_no_page_and_no_log() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let env = TestEnv::new().await;
    // The coordinator as a process too, to read its log.
    let coordinator = CoordinatorProcess::spawn(&env, "r0", &[]).await;
    let console = ConsoleProcess::spawn(&coordinator.url).await;
    let alice = browser.session().await;
    sign_in(&alice, console.url(), OPERATOR).await;

    let order = "console-card-1";
    fill_pay_form(&alice, console.url(), order, "42.00", CARD).await;
    submit_pay_form(&alice).await;
    let error = wait_for_element(&alice, "#error")
        .await
        .text()
        .await
        .expect("error text");
    assert!(error.to_lowercase().contains("card number"), "{error}");
    // The form comes back filled, except the payment method.
    assert_eq!(
        wait_for_element(&alice, "#order_id")
            .await
            .prop("value")
            .await
            .expect("value")
            .as_deref(),
        Some(order)
    );
    assert_eq!(
        wait_for_element(&alice, "#payment_method")
            .await
            .prop("value")
            .await
            .expect("value")
            .as_deref(),
        Some("")
    );
    let digits: String = CARD.chars().filter(char::is_ascii_digit).collect();
    let source = alice.source().await.expect("page source");
    for shown in [
        source.as_str(),
        console.log().as_str(),
        coordinator.log_text().as_str(),
    ] {
        assert!(
            !shown.contains(CARD) && !shown.contains(&digits) && !shown.contains("4242-4242"),
            "the card number leaked: {shown}"
        );
    }
    assert_eq!(charges(&env, order).await, 0);

    browser.close().await;
    drop(console);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_form_without_its_csrf_token_is_refused() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let env = TestEnv::new().await;
    let replica = env.replica("r0", &[]).await;
    let console = ConsoleProcess::spawn(&replica.url).await;
    let alice = browser.session().await;

    // Not signed in: every page sends to /signin. The security headers are on every answer.
    let page = http()
        .get(format!("{}/pay", console.url()))
        .send()
        .await
        .expect("GET /pay");
    assert_eq!(page.status(), 303);
    assert_eq!(page.headers()["location"], "/signin");
    let signin = http()
        .get(format!("{}/signin", console.url()))
        .send()
        .await
        .expect("GET /signin");
    let csp = signin.headers()["content-security-policy"]
        .to_str()
        .expect("ascii");
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(signin.headers()["x-frame-options"], "DENY");

    sign_in(&alice, console.url(), OPERATOR).await;
    let cookie = alice
        .get_named_cookie("console_session")
        .await
        .expect("session cookie");
    assert_eq!(cookie.http_only(), Some(true), "{cookie:?}");
    assert!(
        !cookie.value().contains(&key_for(OPERATOR)),
        "the key is encrypted in the cookie"
    );

    // The browser submits the pay form without its hidden token: 403 and the page says why.
    let order = "console-csrf-1";
    fill_pay_form(&alice, console.url(), order, "42.00", "pm_card_visa").await;
    alice
        .execute(
            "document.querySelector('#pay-form input[name=csrf_token]').remove();",
            vec![],
        )
        .await
        .expect("remove the token");
    submit_pay_form(&alice).await;
    wait_for_text(&alice, "#error", CSRF_REFUSAL).await;

    // The same from outside the browser, to see the status code: with the session's cookie and
    // no token, or a wrong one.
    let cookie = cookie_header(&alice).await;
    for token in [None, Some("not-the-token")] {
        let mut form = vec![
            ("order_id", order),
            ("amount", "42.00"),
            ("currency", "EUR"),
            ("customer_id", "cust-console"),
            ("items", ""),
            ("payment_method", "pm_card_visa"),
            ("idempotency_key", "csrf-test"),
        ];
        if let Some(token) = token {
            form.push(("csrf_token", token));
        }
        let refused = http()
            .post(format!("{}/pay", console.url()))
            .header("cookie", &cookie)
            .form(&form)
            .send()
            .await
            .expect("POST /pay");
        assert_eq!(refused.status(), 403, "token {token:?}");
        let body = refused.text().await.expect("body");
        assert!(body.contains(CSRF_REFUSAL), "{body}");
    }
    assert_eq!(charges(&env, order).await, 0);
    let mut api = replica.client(OPERATOR).await;
    let missing = api
        .get_order(pb::GetOrderRequest {
            order_id: order.to_owned(),
        })
        .await
        .expect_err("a refused form leaves no order");
    assert_eq!(checks::reason(&missing), "ORDER_NOT_FOUND");

    // Sign-out ends the session: the pages send to /signin again.
    alice
        .goto(&format!("{}/pay", console.url()))
        .await
        .expect("open /pay");
    click(&alice, "#signout-form button[type=submit]").await;
    wait_for_path(&alice, "/signin").await;
    alice
        .goto(&format!("{}/pay", console.url()))
        .await
        .expect("open /pay");
    wait_for_path(&alice, "/signin").await;

    browser.close().await;
    drop(console);
    replica.stop().await;
    env.cleanup().await;
}

/// What a page offers a keyboard and screen-reader user, and whether it fits a narrow screen:
/// one `<main id="main">` with one `<h1>`, every visible form control with a label, and no
/// horizontal scrolling of the page itself (wide tables scroll inside their own box).
const PAGE_CHECK: &str = r#"
const controls = [...document.querySelectorAll('input, select, textarea')]
  .filter(c => c.type !== 'hidden');
const unlabelled = controls.filter(c =>
  !(c.id && document.querySelector(`label[for="${c.id}"]`)) && !c.closest('label')
  && !c.getAttribute('aria-label') && !c.getAttribute('aria-labelledby'))
  .map(c => c.outerHTML);
return {
  main: document.querySelectorAll('main#main').length,
  h1: document.querySelectorAll('main h1').length,
  unlabelled,
  alert: document.querySelectorAll('#error[role="alert"]').length <= 1,
  overflow: document.documentElement.scrollWidth - document.documentElement.clientWidth,
};
"#;

async fn check_page(session: &Client, what: &str) {
    let report = session
        .execute(PAGE_CHECK, vec![])
        .await
        .expect("run the page check");
    assert_eq!(report["main"], 1, "{what}: one main#main: {report}");
    assert_eq!(report["h1"], 1, "{what}: one h1: {report}");
    assert_eq!(report["unlabelled"], json!([]), "{what}: labels: {report}");
    assert_eq!(report["alert"], true, "{what}: {report}");
    assert!(
        report["overflow"].as_i64().is_some_and(|o| o <= 0),
        "{what}: the page scrolls sideways on a narrow screen: {report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pages_work_with_a_keyboard_on_a_narrow_screen() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let env = TestEnv::new().await;
    let replica = env.replica("r0", &[]).await;
    let console = ConsoleProcess::spawn(&replica.url).await;
    let alice = browser.session().await;
    alice
        .set_window_size(390, 844)
        .await
        .expect("a phone-sized window");

    // Sign in and pay with the keyboard alone: type, then Enter submits.
    const ENTER: &str = "\u{E007}";
    alice
        .goto(&format!("{}/signin", console.url()))
        .await
        .expect("open /signin");
    check_page(&alice, "/signin").await;
    wait_for_element(&alice, "#api_key")
        .await
        .send_keys(&format!("{}{ENTER}", key_for(OPERATOR)))
        .await
        .expect("type the key and press Enter");
    wait_for_path(&alice, "/pay").await;
    check_page(&alice, "/pay").await;
    let order = "console-keyboard-1";
    fill(&alice, "#order_id", order).await;
    fill(&alice, "#amount", "12.50").await;
    fill(&alice, "#customer_id", "cust-console").await;
    fill(&alice, "#items", "sku-mug 2 5.00\nsku-card 1 2.50").await;
    wait_for_element(&alice, "#payment_method")
        .await
        .send_keys(&format!("pm_card_visa{ENTER}"))
        .await
        .expect("type the method and press Enter");
    wait_for_path(&alice, &format!("/orders/{order}")).await;
    wait_for_element(&alice, r#"#order-state[data-state="PAID"]"#).await;
    wait_for_text(&alice, "#order-amount", "12.50").await;
    check_page(&alice, "the order page").await;
    assert_eq!(charges(&env, order).await, 1);

    // Pages the operator's role may not use say so in words, and are still whole pages.
    for page in ["/reviews", "/feed"] {
        alice
            .goto(&format!("{}{page}", console.url()))
            .await
            .expect("open the page");
        wait_for_text(&alice, "#error", "ask an admin").await;
        check_page(&alice, page).await;
    }

    browser.close().await;
    drop(console);
    replica.stop().await;
    env.cleanup().await;
}
