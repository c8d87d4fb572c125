//! Reading the expiry of a JWT (without verifying it: only the server can), to refresh the
//! token before it runs out.

use base64::Engine;

/// The `exp` claim (seconds since the Unix epoch) of a JWT, if it has one.
pub(crate) fn jwt_expiry(token: &str) -> Option<u64> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("exp")?.as_f64().map(|e| e.max(0.0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: &str) -> String {
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.sig",
            e.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
            e.encode(claims)
        )
    }

    #[test]
    fn reads_exp() {
        assert_eq!(
            jwt_expiry(&jwt(r#"{"sub":"ada","exp":1900000000}"#)),
            Some(1_900_000_000)
        );
        assert_eq!(jwt_expiry(&jwt(r#"{"sub":"ada"}"#)), None);
        assert_eq!(jwt_expiry("not a token"), None);
    }
}
