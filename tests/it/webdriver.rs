//! A small WebDriver client (W3C, over HTTP with reqwest) driving Debian's
//! Chromium, headless, through its `chromedriver`: just what the console's
//! tests need. Waits have deadlines ([`test_support::eventually`]); nothing
//! sleeps.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};
use test_support::eventually;
use test_support::gateway::free_port;
use tokio::process::{Child, Command};

/// The W3C key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// How long a wait on the page may take.
pub const WAIT: Duration = Duration::from_secs(30);

const EVERY: Duration = Duration::from_millis(100);

fn binary(candidates: &[&str], what: &str) -> PathBuf {
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!("{what} is not installed: scripts/test installs it (ensure_test_tools), or apt-get install chromium chromium-driver")
        })
}

/// Where the tests leave their screenshots: `console-screenshots` in the
/// target directory.
pub fn screenshot_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("console-screenshots")
}

/// A headless Chromium driven by its own `chromedriver`, both stopped on
/// drop.
pub struct Browser {
    client: reqwest::Client,
    base: String,
    _driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts `chromedriver` on a free port and a headless Chromium session
    /// of `width` x `height`.
    pub async fn start(width: u32, height: u32) -> Browser {
        let chromedriver = binary(
            &["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"],
            "chromedriver",
        );
        let chromium = binary(
            &["/usr/lib/chromium/chromium", "/usr/bin/chromium"],
            "chromium",
        );
        let port = free_port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client");
        let base = format!("http://127.0.0.1:{port}");
        let status = format!("{base}/status");
        eventually("chromedriver to answer", WAIT, EVERY, || {
            let request = client.get(&status).send();
            async move {
                let body: Value = request
                    .await
                    .map_err(|e| e.to_string())?
                    .json()
                    .await
                    .map_err(|e| e.to_string())?;
                if body["value"]["ready"] == true {
                    Ok(())
                } else {
                    Err(body.to_string())
                }
            }
        })
        .await;
        let profile = tempfile::tempdir().expect("profile folder");
        let capabilities = json!({
            "capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": chromium,
                    "args": [
                        "--headless=new", "--no-sandbox", "--disable-gpu",
                        "--disable-dev-shm-usage", "--no-first-run",
                        "--disable-extensions", "--disable-background-networking",
                        format!("--window-size={width},{height}"),
                        format!("--user-data-dir={}", profile.path().display()),
                    ]
                }
            }}
        });
        let answer: Value = client
            .post(format!("{base}/session"))
            .json(&capabilities)
            .send()
            .await
            .expect("new session")
            .json()
            .await
            .expect("session JSON");
        let session = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {answer}"))
            .to_owned();
        Browser {
            client,
            base: format!("{base}/session/{session}"),
            _driver: driver,
            _profile: profile,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self
            .client
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer: Value = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        if let Some(error) = answer["value"]["error"].as_str() {
            panic!("{method} {path}: {error}: {}", answer["value"]["message"]);
        }
        answer["value"].clone()
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    /// Opens `url`.
    pub async fn goto(&self, url: &str) {
        self.post("/url", json!({ "url": url })).await;
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page.
    pub async fn execute(&self, script: &str, args: Value) -> Value {
        self.post("/execute/sync", json!({ "script": script, "args": args }))
            .await
    }

    /// The text of the first element matching `css`, if any.
    pub async fn text(&self, css: &str) -> Option<String> {
        self.execute(
            "const el = document.querySelector(arguments[0]); return el ? el.innerText : null;",
            json!([css]),
        )
        .await
        .as_str()
        .map(str::to_owned)
    }

    /// Whether an element matching `css` is shown (in the document and
    /// rendered).
    pub async fn shown(&self, css: &str) -> bool {
        self.execute(
            "const el = document.querySelector(arguments[0]); \
             return Boolean(el && el.getClientRects().length && !el.closest('[hidden]'));",
            json!([css]),
        )
        .await
            == true
    }

    /// Waits until `probe` (given the text of `css`, or `None` while no
    /// element matches) says yes; returns that text.
    pub async fn wait_text(&self, what: &str, css: &str, probe: impl Fn(&str) -> bool) -> String {
        let probe = &probe;
        eventually(what, WAIT, EVERY, || async move {
            match self.text(css).await {
                Some(text) if probe(&text) => Ok(text),
                other => Err(other),
            }
        })
        .await
    }

    /// Waits until an element matching `css` is shown.
    pub async fn wait_shown(&self, what: &str, css: &str) {
        eventually(what, WAIT, EVERY, || async move {
            if self.shown(css).await {
                Ok(())
            } else {
                Err(css.to_owned())
            }
        })
        .await;
    }

    /// Waits until no element matching `css` is shown.
    pub async fn wait_gone(&self, what: &str, css: &str) {
        eventually(what, WAIT, EVERY, || async move {
            if self.shown(css).await {
                Err(css.to_owned())
            } else {
                Ok(())
            }
        })
        .await;
    }

    /// The element matching `css`, once there is one shown.
    async fn element(&self, css: &str) -> String {
        self.wait_shown(&format!("{css} to be shown"), css).await;
        let found = self
            .post("/element", json!({ "using": "css selector", "value": css }))
            .await;
        found[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_owned()
    }

    /// Clicks the element matching `css`, as a user would; found again if
    /// the live page re-rendered it between finding and clicking.
    pub async fn click(&self, css: &str) {
        eventually(&format!("a click on {css}"), WAIT, EVERY, || async move {
            let id = self.element(css).await;
            let answer: Value = self
                .client
                .post(format!("{}/element/{id}/click", self.base))
                .json(&json!({}))
                .send()
                .await
                .map_err(|e| e.to_string())?
                .json()
                .await
                .map_err(|e| e.to_string())?;
            match answer["value"]["error"].as_str() {
                None => Ok(()),
                Some("stale element reference") => Err("stale element reference".to_owned()),
                Some(error) => panic!("click on {css}: {error}: {}", answer["value"]["message"]),
            }
        })
        .await;
    }

    /// Types `text` into the element matching `css`, after clearing it.
    pub async fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css).await;
        self.post(&format!("/element/{id}/clear"), json!({})).await;
        self.post(&format!("/element/{id}/value"), json!({ "text": text }))
            .await;
    }

    /// Sends keys to whatever has the focus (`\u{e007}` is Enter).
    pub async fn keys(&self, text: &str) {
        let actions: Vec<Value> = text
            .chars()
            .flat_map(|c| {
                [
                    json!({"type": "keyDown", "value": c.to_string()}),
                    json!({"type": "keyUp", "value": c.to_string()}),
                ]
            })
            .collect();
        self.post(
            "/actions",
            json!({"actions": [{"type": "key", "id": "keyboard", "actions": actions}]}),
        )
        .await;
    }

    /// Chooses `value` in the `select` matching `css` (as the user would:
    /// the change event fires).
    pub async fn select(&self, css: &str, value: &str) {
        self.element(css).await;
        self.execute(
            "const el = document.querySelector(arguments[0]); el.value = arguments[1]; \
             el.dispatchEvent(new Event('change', {bubbles: true}));",
            json!([css, value]),
        )
        .await;
    }

    /// Scrolls the element matching `css` into view.
    pub async fn scroll_to(&self, css: &str) {
        self.execute(
            "const el = document.querySelector(arguments[0]); if (el) el.scrollIntoView({block: 'start'});",
            json!([css]),
        )
        .await;
    }

    /// Resizes the window (a phone: 390 x 844).
    pub async fn resize(&self, width: u32, height: u32) {
        self.post("/window/rect", json!({ "width": width, "height": height }))
            .await;
    }

    /// The page's address.
    pub async fn url(&self) -> String {
        self.call(reqwest::Method::GET, "/url", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Saves a screenshot of the window as `name`.png under
    /// [`screenshot_dir`]; returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let encoded = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().expect("base64 PNG"))
            .expect("a PNG");
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).expect("screenshot folder");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write the screenshot");
        path
    }

    /// Ends the session (the browser closes; the driver stops on drop).
    pub async fn quit(self) {
        let _ = self.client.delete(&self.base).send().await;
    }
}
