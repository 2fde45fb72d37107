//! A real browser for the console's end-to-end tests: Debian's `chromium` driven through
//! `chromedriver` (WebDriver) with `fantoccini`. `Browser::start` runs one chromedriver on a free
//! port in a process group of its own (so the Chromium processes it starts die with it, even when
//! a test fails); every `session()` is one headless Chromium with its own temporary profile, that
//! is one operator with their own cookies.
//!
//! Waiting is on the page itself (WebDriver polls the DOM until the element or text is there,
//! within `checks::GUARD`), never a fixed sleep.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::Mutex,
};

use fantoccini::{Client, ClientBuilder, Locator, elements::Element, wd::Capabilities};
use rand::Rng;
use serde_json::json;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

use crate::checks::{GUARD, wait_for};

/// How to install what the tests need, printed when it is missing.
const INSTALL: &str = "apt-get install -y chromium chromium-driver";

/// `$var` if set (and there), else the first of `candidates` that exists, else `name` on `PATH`.
fn find_binary(var: &str, candidates: &[&str], name: &str) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(var) {
        return Some(PathBuf::from(path)).filter(|p| p.is_file());
    }
    let on_path: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .collect()
        })
        .unwrap_or_default();
    candidates
        .iter()
        .map(PathBuf::from)
        .chain(on_path)
        .find(|p| p.is_file())
}

/// One chromedriver and the browser sessions it started.
pub struct Browser {
    driver: Child,
    pgid: Option<u32>,
    url: String,
    chromium: PathBuf,
    profiles: Mutex<Vec<PathBuf>>,
    sessions: Mutex<Vec<Client>>,
}

impl Browser {
    /// Starts chromedriver, or returns `None` (after one line on stderr saying why the browser
    /// tests are skipped and how to install what is missing) when Chromium or chromedriver is not
    /// installed. `CHROMIUM` and `CHROMEDRIVER` override where they are looked for.
    pub async fn start() -> Option<Browser> {
        let chromium = find_binary(
            "CHROMIUM",
            &["/usr/bin/chromium", "/usr/bin/chromium-browser"],
            "chromium",
        );
        let driver = find_binary(
            "CHROMEDRIVER",
            &["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"],
            "chromedriver",
        );
        let (Some(chromium), Some(driver)) = (chromium, driver) else {
            eprintln!(
                "SKIPPED: the console's browser tests need Debian's chromium and chromium-driver \
                 (/usr/bin/chromium, /usr/bin/chromedriver, or $CHROMIUM and $CHROMEDRIVER), \
                 which are not installed: {INSTALL}"
            );
            return None;
        };
        let port = booking_sim::stack::free_port().expect("free port");
        let mut command = Command::new(&driver);
        command
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        // Its own process group: `Drop` ends chromedriver and every Chromium it started at once.
        command.process_group(0);
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", driver.display()));
        let pgid = child.id();
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let ready = async {
            while let Some(line) = lines.next_line().await.expect("read chromedriver's stdout") {
                if line.contains("started successfully") {
                    return true;
                }
            }
            false
        };
        match tokio::time::timeout(GUARD, ready).await {
            Ok(true) => {}
            Ok(false) => panic!("chromedriver exited before it was ready"),
            Err(_) => panic!("never happened: chromedriver says it started"),
        }
        // Keep reading (and dropping) its stdout so that it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Some(Browser {
            driver: child,
            pgid,
            url: format!("http://127.0.0.1:{port}"),
            chromium,
            profiles: Mutex::new(Vec::new()),
            sessions: Mutex::new(Vec::new()),
        })
    }

    /// A new headless Chromium with a fresh profile (no cookies): one more operator.
    pub async fn session(&self) -> Client {
        let profile = std::env::temp_dir().join(format!(
            "console-browser-{:016x}",
            rand::rng().random::<u64>()
        ));
        std::fs::create_dir_all(&profile).expect("profile dir");
        self.profiles
            .lock()
            .expect("profiles")
            .push(profile.clone());
        let mut capabilities = Capabilities::new();
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            json!({
                "binary": self.chromium,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.display()),
                ],
            }),
        );
        let client = ClientBuilder::rustls()
            .expect("rustls")
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("a Chromium session through chromedriver: {e}"));
        self.sessions.lock().expect("sessions").push(client.clone());
        client
    }

    /// Closes every session and stops chromedriver (`Drop` does the same without waiting).
    pub async fn close(self) {
        let sessions: Vec<Client> = std::mem::take(&mut *self.sessions.lock().expect("sessions"));
        for session in sessions {
            let _ = session.close().await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(pgid) = self.pgid {
            let _ = std::process::Command::new("kill")
                .args(["-s", "KILL", "--", &format!("-{pgid}")])
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.driver.start_kill();
        for profile in self.profiles.lock().map(|p| p.clone()).unwrap_or_default() {
            let _ = std::fs::remove_dir_all(profile);
        }
    }
}

fn css(selector: &str) -> Locator<'_> {
    Locator::Css(selector)
}

/// Waits until an element matching the CSS `selector` is on the page (attribute selectors such as
/// `#order-state[data-state="PAID"]` wait for an attribute's value).
pub async fn wait_for_element(client: &Client, selector: &str) -> Element {
    client
        .wait()
        .at_most(GUARD)
        .for_element(css(selector))
        .await
        .unwrap_or_else(|e| panic!("never happened: `{selector}` on the page ({e})"))
}

/// The first of `selectors` that appears on the page: its index and the element.
pub async fn wait_for_any(client: &Client, selectors: &[&str]) -> (usize, Element) {
    wait_for(&format!("one of {selectors:?} on the page"), async || {
        for (i, selector) in selectors.iter().enumerate() {
            if let Ok(element) = client.find(css(selector)).await {
                return Some((i, element));
            }
        }
        None
    })
    .await
}

/// Waits until the element matching `selector` has a text containing `text`; returns its text.
pub async fn wait_for_text(client: &Client, selector: &str, text: &str) -> String {
    wait_for(&format!("`{selector}` says {text:?}"), async || {
        let element = client.find(css(selector)).await.ok()?;
        let shown = element.text().await.ok()?;
        shown.contains(text).then_some(shown)
    })
    .await
}

/// The text of the element matching `selector` (which must be there).
pub async fn text_of(client: &Client, selector: &str) -> String {
    let element = client
        .find(css(selector))
        .await
        .unwrap_or_else(|e| panic!("`{selector}` is not on the page: {e}"));
    element.text().await.expect("element text")
}

/// The value of attribute `name` of the element matching `selector` (which must be there).
pub async fn attribute(client: &Client, selector: &str, name: &str) -> Option<String> {
    let element = client
        .find(css(selector))
        .await
        .unwrap_or_else(|e| panic!("`{selector}` is not on the page: {e}"));
    element.attr(name).await.expect("element attribute")
}

/// Clears the field matching `selector` and types `value` into it, as a person would.
pub async fn fill(client: &Client, selector: &str, value: &str) {
    let field = wait_for_element(client, selector).await;
    field.clear().await.expect("clear the field");
    field.send_keys(value).await.expect("type into the field");
}

/// Clicks the element matching `selector`.
pub async fn click(client: &Client, selector: &str) {
    wait_for_element(client, selector)
        .await
        .click()
        .await
        .unwrap_or_else(|e| panic!("clicking `{selector}`: {e}"));
}

/// The current page's path (and query), e.g. `/orders/o-1?busy=1`.
pub async fn path(client: &Client) -> String {
    let url = client.current_url().await.expect("current url");
    match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_owned(),
    }
}

/// Waits until the browser shows a page whose path starts with `prefix`.
pub async fn wait_for_path(client: &Client, prefix: &str) -> String {
    wait_for(&format!("the browser at {prefix}…"), async || {
        let now = path(client).await;
        now.starts_with(prefix).then_some(now)
    })
    .await
}

/// The value of the `console_session` cookie as a `Cookie:` header, to fetch a console URL with
/// this session's sign-in from outside the browser (reqwest).
pub async fn cookie_header(client: &Client) -> String {
    let cookie = client
        .get_named_cookie("console_session")
        .await
        .expect("the console_session cookie is set");
    format!("console_session={}", cookie.value())
}

/// Where the screenshots of `docs/CONSOLE.md` live.
pub fn screenshots_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/console")
}

/// With `CONSOLE_SCREENSHOTS=1`, saves what the session shows as `docs/console/{name}.png`;
/// otherwise does nothing (normal test runs leave the docs alone).
pub async fn screenshot(client: &Client, name: &str) {
    if std::env::var("CONSOLE_SCREENSHOTS").as_deref() != Ok("1") {
        return;
    }
    let png = client.screenshot().await.expect("screenshot");
    let dir = screenshots_dir();
    std::fs::create_dir_all(&dir).expect("docs/console");
    let file = dir.join(format!("{name}.png"));
    std::fs::write(&file, png).unwrap_or_else(|e| panic!("writing {}: {e}", file.display()));
}
