//! The confirmation page in a real browser: headless Chromium emulating a small phone, driven
//! over WebDriver by chromedriver. The plain-HTTP tests in confirmation.rs cannot tell whether
//! the page fits the screen or whether its form really posts what the server expects.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use futures::FutureExt;
use serde_json::{json, Value};
use tokio::process::{Child, Command};

use crate::helpers::{eur_process, spawn_app, Db, PIN};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "chromedriver";
const INSTALL_HINT: &str =
    "run scripts/test.sh, which installs Debian chromium and chromium-driver";
/// How long any one wait may take; a browser that is slower than this is a failure.
const PATIENCE: Duration = Duration::from_secs(10);
/// Chromium starts slowly on a loaded two-core machine, so a new session gets longer.
const SESSION_PATIENCE: Duration = Duration::from_secs(30);
const PHONE_WIDTH: u32 = 390;
const PHONE_HEIGHT: u32 = 844;
const PHONE_USER_AGENT: &str = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 \
                                (KHTML, like Gecko) Chrome/126.0.0.0 Mobile Safari/537.36";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_confirms_on_a_phone_sized_screen_with_the_pin() {
    let app = spawn_app(Db::Sqlite).await;
    let retailer = app.create_retailer().await;
    app.create_customer("+491711000201", "50.00").await;
    let process = app
        .open_process(&retailer, eur_process("+491711000201", "12.50"))
        .await;
    let process_id = process["id"].as_str().unwrap().to_string();
    let code = process["code"].as_str().unwrap().to_string();
    let link = app.local(&app.confirmation_link(&process_id, 1).await);

    in_phone_browser(|client| async move {
        client
            .goto(&link)
            .await
            .expect("the confirmation page loads");
        assert_eq!(text(&client, "#retailer").await, "Garage Nord");
        assert_eq!(text(&client, "#amount").await, "12.50 EUR");
        assert_eq!(text(&client, "#code").await, code);
        assert_eq!(text(&client, "#context").await, "Parking, level 2");

        let screen = numbers(
            &client,
            "return [document.documentElement.scrollWidth, window.innerWidth, \
             window.innerHeight, window.devicePixelRatio]",
        )
        .await;
        let [scroll_width, width, height, pixel_ratio] = screen[..] else {
            panic!("four numbers: {screen:?}");
        };
        // Without this the layout checks below would pass on a desktop-sized window.
        assert_eq!(
            (width, height, pixel_ratio),
            (f64::from(PHONE_WIDTH), f64::from(PHONE_HEIGHT), 3.0),
            "the browser emulates a phone"
        );
        assert!(
            scroll_width <= width,
            "no horizontal scrolling: the page is {scroll_width}px wide on a {width}px screen"
        );

        let confirm = client
            .find(Locator::Css("button[value=confirm]"))
            .await
            .expect("a confirm button");
        assert!(confirm.is_displayed().await.unwrap(), "Confirm is visible");
        let (x, y, button_width, button_height) = confirm.rectangle().await.unwrap();
        assert!(
            button_width >= 0.8 * width,
            "Confirm is a full-width thumb target: {button_width}px of {width}px"
        );
        assert!(
            x >= 0.0 && x + button_width <= width,
            "Confirm lies inside the screen: x={x}, width={button_width}"
        );
        assert!(
            y + button_height <= height,
            "Confirm is reachable without scrolling: its bottom is at {}px of {height}px",
            y + button_height
        );
        let pin = client
            .find(Locator::Css("#pin"))
            .await
            .expect("a PIN field");
        // Mobile Safari zooms into any input whose text is smaller than 16px.
        let pin_font = pin.css_value("font-size").await.unwrap();
        let pin_font_px: f64 = pin_font.trim_end_matches("px").parse().unwrap();
        assert!(pin_font_px >= 16.0, "the PIN field's font is {pin_font}");
        save_screenshot(&client, "confirmation-phone.png").await;

        pin.send_keys(PIN).await.expect("the PIN can be typed");
        confirm.click().await.expect("Confirm can be tapped");
        assert_eq!(
            wait_for_note(&client).await,
            "Thank you: the payment is confirmed."
        );
        let buttons = client.find_all(Locator::Css("button")).await.unwrap();
        assert!(buttons.is_empty(), "an answered request offers no buttons");
        save_screenshot(&client, "confirmation-phone-confirmed.png").await;
    })
    .await;

    let process = app.process(&retailer, &process_id).await;
    assert_eq!(process["status"], "active", "{process:#}");
    assert_eq!(process["released"], "12.50", "{process:#}");
    app.assert_ledger_holds().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_declines_in_the_browser_and_nothing_is_charged() {
    let app = spawn_app(Db::Sqlite).await;
    let retailer = app.create_retailer().await;
    let customer_id = app.create_customer("+491711000202", "50.00").await;
    let process = app
        .open_process(&retailer, eur_process("+491711000202", "12.50"))
        .await;
    let process_id = process["id"].as_str().unwrap().to_string();
    let link = app.local(&app.confirmation_link(&process_id, 1).await);

    in_phone_browser(|client| async move {
        client
            .goto(&link)
            .await
            .expect("the confirmation page loads");
        assert_eq!(text(&client, "#amount").await, "12.50 EUR");
        // The PIN field is left empty: declining must not ask for it.
        client
            .find(Locator::Css("button[value=decline]"))
            .await
            .expect("a decline button")
            .click()
            .await
            .expect("Decline can be tapped");
        assert_eq!(
            wait_for_note(&client).await,
            "You declined the payment. Nothing was charged."
        );
        save_screenshot(&client, "decline-phone.png").await;
    })
    .await;

    let process = app.process(&retailer, &process_id).await;
    assert_eq!(process["status"], "declined", "{process:#}");
    assert_eq!(app.credit(&customer_id).await, "50.00");
    app.assert_ledger_holds().await;
}

/// Runs `body` in a fresh phone-sized browser and ends the WebDriver session afterwards, also
/// when `body` panics, so that no Chromium outlives a failed test.
async fn in_phone_browser<F, Fut>(body: F)
where
    F: FnOnce(Client) -> Fut,
    Fut: Future<Output = ()>,
{
    let browser = Browser::start().await;
    let outcome = AssertUnwindSafe(body(browser.client.clone()))
        .catch_unwind()
        .await;
    let closed = browser.client.clone().close().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    closed.expect("the WebDriver session closes");
}

struct Browser {
    client: Client,
    /// Killed on drop; by then the closed session has already ended Chromium.
    _driver: Child,
    /// Chromium's profile and chromedriver's log, so that parallel tests share nothing.
    _dir: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Browser {
        assert!(
            Path::new(CHROMIUM).exists(),
            "{CHROMIUM} is missing: {INSTALL_HINT}"
        );
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("chromedriver.log");
        let port = free_port();
        let mut driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|error| {
                panic!("cannot start {CHROMEDRIVER} ({error}): {INSTALL_HINT}")
            });
        let url = format!("http://127.0.0.1:{port}");
        wait_until_ready(&mut driver, &url, &log).await;
        let profile = dir.path().join("profile");
        let client = tokio::time::timeout(SESSION_PATIENCE, connect(&url, &profile))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "Chromium did not start within {SESSION_PATIENCE:?}; chromedriver log:\n{}",
                    tail(&log)
                )
            })
            .unwrap_or_else(|error| {
                panic!(
                    "no WebDriver session ({error}); is {CHROMIUM} working? {INSTALL_HINT}. \
                     chromedriver log:\n{}",
                    tail(&log)
                )
            });
        Browser {
            client,
            _driver: driver,
            _dir: dir,
        }
    }
}

/// A port that was free a moment ago; chromedriver cannot be asked to pick one and report it.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

async fn wait_until_ready(driver: &mut Child, url: &str, log: &Path) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(status) = driver.try_wait().unwrap() {
            panic!(
                "{CHROMEDRIVER} exited with {status} before it was ready ({INSTALL_HINT}); \
                 log:\n{}",
                tail(log)
            );
        }
        if let Ok(response) = http.get(format!("{url}/status")).send().await {
            if let Ok(status) = response.json::<Value>().await {
                if status["value"]["ready"] == true {
                    return;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "{CHROMEDRIVER} did not answer on {url}/status within {PATIENCE:?}; log:\n{}",
            tail(log)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn connect(url: &str, profile: &Path) -> Result<Client, fantoccini::error::NewSessionError> {
    let capabilities = json!({
        "browserName": "chrome",
        // Every command is bounded, so a hung page fails the test instead of stalling it.
        "timeouts": {"pageLoad": 10_000, "script": 10_000, "implicit": 0},
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": [
                "--headless=new",
                // Test containers run as root, where Chromium's sandbox cannot start.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                // Nothing but the test app may be contacted: no updates, sync or QUIC probes.
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-quic",
                format!("--user-data-dir={}", profile.display()),
            ],
            "mobileEmulation": {
                "deviceMetrics": {
                    "width": PHONE_WIDTH,
                    "height": PHONE_HEIGHT,
                    "pixelRatio": 3.0,
                    "mobile": true,
                    "touch": true,
                },
                "userAgent": PHONE_USER_AGENT,
            },
        },
    });
    let Value::Object(capabilities) = capabilities else {
        unreachable!("capabilities are a JSON object");
    };
    // Both reqwest (ring) and fantoccini (aws-lc-rs) switch on a rustls crypto provider, so
    // rustls cannot choose one by itself; a second test finds it installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    ClientBuilder::rustls()
        .expect("the TLS connector builds (WebDriver itself is plain HTTP)")
        .capabilities(capabilities)
        .connect(url)
        .await
}

async fn text(client: &Client, css: &str) -> String {
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|error| panic!("the page has {css}: {error}"))
        .text()
        .await
        .unwrap()
}

async fn numbers(client: &Client, script: &str) -> Vec<f64> {
    let value = client.execute(script, vec![]).await.unwrap();
    value
        .as_array()
        .unwrap_or_else(|| panic!("an array: {value}"))
        .iter()
        .map(|number| {
            number
                .as_f64()
                .unwrap_or_else(|| panic!("a number: {value}"))
        })
        .collect()
}

/// The note of the page the form posted to. The request page has none, and a tap only starts
/// the navigation, so this polls until the answer page is there.
async fn wait_for_note(client: &Client) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        // Errors are expected while the old page is being replaced.
        if let Ok(note) = client.find(Locator::Css(".note")).await {
            if let Ok(text) = note.text().await {
                return text;
            }
        }
        if Instant::now() >= deadline {
            let page = client.source().await.unwrap_or_default();
            panic!("no answer page within {PATIENCE:?}; the browser shows:\n{page}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Screenshots go where a developer or CI can look at them: the page's look is not asserted.
async fn save_screenshot(client: &Client, name: &str) {
    let png = client.screenshot().await.expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "screenshots are PNG");
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), png).unwrap();
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
