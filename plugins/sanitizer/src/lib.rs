//! Policy module `sanitizer`: cleans the HTML of `message:send` content (XSS: scripts, event
//! handler attributes, `javascript:` URLs, unknown tags) with `ammonia`.
//!
//! - Content without `<`, `>` or `&` is plain text: allowed as is, untouched.
//! - Otherwise the content is sanitized as HTML. If that changes it, the verdict is `modify`
//!   with the cleaned content (sanitized HTML: text `<`, `>`, `&` come out as entities); if
//!   nothing but whitespace is left, `reject` with `VALIDATION_ERROR`.
//!
//! Config (JSON, all optional): `{"tags": ["b", "i", "a"]}` replaces ammonia's default set of
//! allowed tags (`[]` keeps text only). `script` and `style` can never be allowed (their content
//! is always dropped). Priority 10 (before `profanity`).

use std::collections::HashSet;

use nself_realtime_guest::{
    Descriptor, Event, Policy, Verdict, codes, export_policy, parse_config,
};
use serde::Deserialize;

/// The sidecar's config.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    /// Allowed tags; `None` keeps ammonia's defaults.
    tags: Option<Vec<String>>,
}

/// The configured sanitizer.
pub struct Sanitizer {
    cleaner: ammonia::Builder<'static>,
}

impl Sanitizer {
    /// Sanitizes `html`.
    fn clean(&self, html: &str) -> String {
        self.cleaner.clean(html).to_string()
    }
}

impl Policy for Sanitizer {
    fn configure(config: &str) -> Result<Self, String> {
        let config: Config = parse_config(config)?;
        let mut cleaner = ammonia::Builder::default();
        if let Some(tags) = config.tags {
            if let Some(bad) = tags
                .iter()
                .find(|t| matches!(t.as_str(), "script" | "style"))
            {
                return Err(format!("tag `{bad}` can not be allowed"));
            }
            // The builder borrows its tag names for 'static; configure runs once per instance.
            let tags: HashSet<&'static str> = tags
                .into_iter()
                .map(|t| &*Box::leak(t.into_boxed_str()))
                .collect();
            cleaner.tags(tags);
        }
        Ok(Sanitizer { cleaner })
    }

    fn describe(&self) -> Descriptor {
        Descriptor::new("sanitizer", env!("CARGO_PKG_VERSION"))
            .with_events(["message:send"])
            .with_priority(10)
    }

    fn handle(&self, event: &Event) -> Verdict {
        let Some(content) = event.content() else {
            return Verdict::allow(); // not a message with text: the server validates it
        };
        if !content.contains(['<', '>', '&']) {
            return Verdict::allow();
        }
        let cleaned = self.clean(content);
        if cleaned == content {
            return Verdict::allow();
        }
        if cleaned.trim().is_empty() {
            return Verdict::reject(
                codes::VALIDATION_ERROR,
                "message content is empty once unsafe HTML is removed",
            );
        }
        match event.payload_with("content", cleaned) {
            Some(payload) => Verdict::modify(payload),
            None => Verdict::allow(),
        }
    }
}

export_policy!(Sanitizer);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn send(content: &str) -> Event {
        Event::new(
            "message:send",
            json!({"roomName": "general", "content": content, "metadata": {"k": 1}}),
        )
        .with_user("u1")
    }

    fn default() -> Sanitizer {
        Sanitizer::configure("").expect("default config")
    }

    fn cleaned(verdict: &Verdict) -> String {
        let payload = verdict.modified_payload().expect("a modify verdict");
        assert_eq!(payload["roomName"], "general", "other fields are kept");
        assert_eq!(
            payload["metadata"],
            json!({"k": 1}),
            "other fields are kept"
        );
        payload["content"].as_str().expect("content").to_owned()
    }

    #[test]
    fn describes_itself() {
        let d = default().describe();
        assert_eq!(d.name, "sanitizer");
        assert_eq!(d.events, ["message:send"]);
        assert_eq!(d.priority, 10);
    }

    #[test]
    fn plain_text_and_safe_html_pass_untouched() {
        let s = default();
        assert!(s.handle(&send("hello world")).is_allow());
        assert!(s.handle(&send("<b>bold</b> and <i>it</i>")).is_allow());
        assert!(s.handle(&send("fish &amp; chips")).is_allow());
    }

    #[test]
    fn scripts_and_handlers_are_removed() {
        let s = default();
        let v = s.handle(&send("hi <script>alert(1)</script>there"));
        assert_eq!(cleaned(&v), "hi there");
        let v = s.handle(&send(r#"<img src="x.png" onerror="alert(1)">"#));
        assert_eq!(cleaned(&v), r#"<img src="x.png">"#);
        let v = s.handle(&send(r#"<a href="javascript:alert(1)">x</a>"#));
        assert_eq!(cleaned(&v), r#"<a rel="noopener noreferrer">x</a>"#);
        let v = s.handle(&send("<div onclick=\"x()\">ok</div>"));
        assert_eq!(cleaned(&v), "<div>ok</div>");
    }

    #[test]
    fn loose_angle_brackets_are_escaped() {
        let v = default().handle(&send("1 < 2 & 3 > 2"));
        assert_eq!(cleaned(&v), "1 &lt; 2 &amp; 3 &gt; 2");
    }

    #[test]
    fn nothing_left_is_a_validation_error() {
        let v = default().handle(&send("<script>alert(1)</script>"));
        assert_eq!(v.reject_code(), Some("VALIDATION_ERROR"));
        let v = default().handle(&send("  <style>p{}</style> "));
        assert_eq!(v.reject_code(), Some("VALIDATION_ERROR"));
    }

    #[test]
    fn configured_tags_replace_the_defaults() {
        let s = Sanitizer::configure(r#"{"tags": ["b"]}"#).expect("config");
        assert!(s.handle(&send("<b>x</b>")).is_allow());
        assert_eq!(cleaned(&s.handle(&send("<i>x</i> <b>y</b>"))), "x <b>y</b>");
        let text_only = Sanitizer::configure(r#"{"tags": []}"#).expect("config");
        assert_eq!(cleaned(&text_only.handle(&send("<b>x</b>"))), "x");
    }

    #[test]
    fn bad_configs_are_refused() {
        assert!(Sanitizer::configure(r#"{"tags": ["script"]}"#).is_err());
        assert!(Sanitizer::configure(r#"{"tagz": []}"#).is_err());
        assert!(Sanitizer::configure("nope").is_err());
    }

    #[test]
    fn odd_payloads_are_left_to_the_server() {
        let s = default();
        assert!(
            s.handle(&Event::new("message:send", json!({"content": 5})))
                .is_allow()
        );
        assert!(
            s.handle(&Event::new("message:send", json!("<script>")))
                .is_allow()
        );
        assert!(
            s.handle(&Event::from_json("message:send", "{bad"))
                .is_allow()
        );
    }
}
