//! Policy module `profanity`: masks listed words in `message:send` content and rejects content
//! over a size limit.
//!
//! - Content longer than `maxLength` characters (default 2000): `reject` with
//!   `VALIDATION_ERROR`.
//! - Listed words (whole words, case-insensitive; default: a small English list) are replaced
//!   by `*` of the same length: `modify` with the masked content. With `"action": "reject"` a
//!   listed word rejects the message with `POLICY_REJECTED` instead.
//!
//! Config (JSON, all optional):
//! `{"words": ["darn"], "maxLength": 500, "action": "mask" | "reject", "mask": "#"}`.
//! `words` replaces the default list. Priority 20 (after `sanitizer`).

use nself_realtime_guest::{
    Descriptor, Event, Policy, Verdict, codes, export_policy, parse_config,
};
use serde::Deserialize;

/// Words masked when the config lists none.
const DEFAULT_WORDS: &[&str] = &[
    "arse", "ass", "asshole", "bastard", "bitch", "bollocks", "crap", "damn", "dick", "fuck",
    "fucking", "piss", "shit", "wanker",
];

/// What to do about a listed word.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Action {
    /// Replace it with mask characters.
    #[default]
    Mask,
    /// Refuse the message.
    Reject,
}

/// The sidecar's config.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct Config {
    words: Vec<String>,
    max_length: usize,
    action: Action,
    mask: char,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            words: DEFAULT_WORDS.iter().map(|w| (*w).to_owned()).collect(),
            max_length: 2000,
            action: Action::Mask,
            mask: '*',
        }
    }
}

/// The configured filter.
pub struct Profanity {
    /// Lowercased listed words.
    words: Vec<String>,
    max_length: usize,
    action: Action,
    mask: char,
}

impl Profanity {
    /// Whether `word` (a run of alphanumeric characters) is listed.
    fn is_listed(&self, word: &str) -> bool {
        let lower = word.to_lowercase();
        self.words.contains(&lower)
    }

    /// `content` with every listed word masked, or `None` if it has none.
    fn mask(&self, content: &str) -> Option<String> {
        let mut out = String::with_capacity(content.len());
        let mut changed = false;
        let mut rest = content;
        while !rest.is_empty() {
            // Split off the next run of word characters or of other characters.
            let is_word = rest.starts_with(char::is_alphanumeric);
            let end = rest
                .char_indices()
                .find(|(_, c)| c.is_alphanumeric() != is_word)
                .map_or(rest.len(), |(i, _)| i);
            let (run, tail) = rest.split_at(end);
            if is_word && self.is_listed(run) {
                out.extend(std::iter::repeat_n(self.mask, run.chars().count()));
                changed = true;
            } else {
                out.push_str(run);
            }
            rest = tail;
        }
        changed.then_some(out)
    }
}

impl Policy for Profanity {
    fn configure(config: &str) -> Result<Self, String> {
        let config: Config = parse_config(config)?;
        if config.max_length == 0 {
            return Err("maxLength must be at least 1".to_owned());
        }
        Ok(Profanity {
            words: config.words.iter().map(|w| w.to_lowercase()).collect(),
            max_length: config.max_length,
            action: config.action,
            mask: config.mask,
        })
    }

    fn describe(&self) -> Descriptor {
        Descriptor::new("profanity", env!("CARGO_PKG_VERSION"))
            .with_events(["message:send"])
            .with_priority(20)
    }

    fn handle(&self, event: &Event) -> Verdict {
        let Some(content) = event.content() else {
            return Verdict::allow();
        };
        // Cheap byte check first: a string has at least as many bytes as characters.
        if content.len() > self.max_length && content.chars().count() > self.max_length {
            return Verdict::reject(
                codes::VALIDATION_ERROR,
                format!("message is longer than {} characters", self.max_length),
            );
        }
        let Some(masked) = self.mask(content) else {
            return Verdict::allow();
        };
        if self.action == Action::Reject {
            return Verdict::reject(codes::POLICY_REJECTED, "message contains blocked words");
        }
        match event.payload_with("content", masked) {
            Some(payload) => Verdict::modify(payload),
            None => Verdict::allow(),
        }
    }
}

export_policy!(Profanity);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn send(content: &str) -> Event {
        Event::new("message:send", json!({"roomName": "r", "content": content}))
    }

    fn content_of(v: &Verdict) -> String {
        let payload = v.modified_payload().expect("modify");
        assert_eq!(payload["roomName"], "r");
        payload["content"].as_str().expect("content").to_owned()
    }

    #[test]
    fn describes_itself() {
        let d = Profanity::configure("").expect("default").describe();
        assert_eq!((d.name.as_str(), d.priority), ("profanity", 20));
        assert_eq!(d.events, ["message:send"]);
    }

    #[test]
    fn clean_text_passes() {
        let p = Profanity::configure("").expect("default");
        assert!(p.handle(&send("hello there, class assignment")).is_allow());
        assert!(p.handle(&send("")).is_allow());
    }

    #[test]
    fn listed_words_are_masked_whole_word_case_insensitive() {
        let p = Profanity::configure("").expect("default");
        assert_eq!(
            content_of(&p.handle(&send("oh Shit, damn!"))),
            "oh ****, ****!"
        );
        assert_eq!(content_of(&p.handle(&send("crap"))), "****");
        assert!(p.handle(&send("scrap crappy")).is_allow());
    }

    #[test]
    fn configured_words_mask_and_action() {
        let p =
            Profanity::configure(r##"{"words": ["Darn", "héllo"], "mask": "#"}"##).expect("config");
        assert_eq!(
            content_of(&p.handle(&send("darn it HÉLLO"))),
            "#### it #####"
        );
        assert!(p.handle(&send("shit")).is_allow(), "the list is replaced");
        let p = Profanity::configure(r#"{"action": "reject"}"#).expect("config");
        assert_eq!(
            p.handle(&send("damn")).reject_code(),
            Some("POLICY_REJECTED")
        );
    }

    #[test]
    fn oversized_content_is_rejected() {
        let p = Profanity::configure(r#"{"maxLength": 5}"#).expect("config");
        assert!(p.handle(&send("12345")).is_allow());
        assert!(p.handle(&send("ééééé")).is_allow(), "characters, not bytes");
        assert_eq!(
            p.handle(&send("123456")).reject_code(),
            Some("VALIDATION_ERROR")
        );
        let p = Profanity::configure("").expect("default");
        assert!(p.handle(&send(&"a".repeat(2000))).is_allow());
        assert!(p.handle(&send(&"a".repeat(2001))).is_reject());
    }

    #[test]
    fn bad_configs_and_odd_payloads() {
        assert!(Profanity::configure(r#"{"maxLength": 0}"#).is_err());
        assert!(Profanity::configure(r#"{"action": "shout"}"#).is_err());
        assert!(Profanity::configure(r#"{"mask": "ab"}"#).is_err());
        let p = Profanity::configure("").expect("default");
        assert!(
            p.handle(&Event::new("message:send", json!(["shit"])))
                .is_allow()
        );
        assert!(
            p.handle(&Event::from_json("message:send", "shit"))
                .is_allow()
        );
    }
}
