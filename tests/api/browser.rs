//! Browser tests: headless Chromium driven over WebDriver (written by the browser-test helper).
