// Package console holds the web console's tests in a real headless browser
// (Debian's chromium, driven with chromedp) against a real quiverd, and its
// cost measurement (page weight, the broker's CPU while a page is open).
// They live in the benchmarks module so that the main module, which
// applications go get for the SDK, does not depend on chromedp.
package console
