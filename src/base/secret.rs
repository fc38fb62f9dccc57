//! A configured secret (a webhook URL with its token, an SMTP URL with a
//! password): it prints as `<redacted>` in every Debug and Display, and its
//! memory is wiped when dropped. Only `expose` hands out the text, at the
//! one place that sends it.

use std::fmt;

use serde::Deserialize;
use zeroize::Zeroize;

#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(text: impl Into<String>) -> Secret {
        Secret(text.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_its_text() {
        let secret = Secret::new("https://hooks.example/T0/B1/xyzzy");
        assert_eq!(format!("{secret} {secret:?}"), "<redacted> <redacted>");
        assert_eq!(secret.expose(), "https://hooks.example/T0/B1/xyzzy");
    }
}
