//! Conditional writes of a draft (`If-Match`, `If-None-Match: *`) and the `ETag` they name.
//!
//! A configuration is edited by reading the whole draft, changing a field and writing the
//! whole draft back; two editors at once would each drop the other's change. A client that
//! sends back the `ETag` it read in `If-Match` gets 412 instead, and reads again.

use axum::http::header::{ETAG, IF_MATCH, IF_NONE_MATCH};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::Response;

use gust_core::Error;
use gust_store::DraftBase;

/// What the request's preconditions ask the stored draft to be.
///
/// # Errors
/// [`Error::BadRequest`] for a header that is not a list of entity tags, or for both headers
/// at once.
pub(crate) fn draft_base(headers: &HeaderMap) -> Result<DraftBase, Error> {
    let if_match = list(headers, &IF_MATCH)?;
    let if_none_match = list(headers, &IF_NONE_MATCH)?;
    match (if_match, if_none_match) {
        (None, None) => Ok(DraftBase::Any),
        (Some(_), Some(_)) => Err(Error::BadRequest(
            "send one of `If-Match` and `If-None-Match`, not both".into(),
        )),
        (Some(Tags::Any), None) => Ok(DraftBase::Present),
        (Some(Tags::These(tags)), None) => Ok(DraftBase::OneOf(tags)),
        (None, Some(Tags::Any)) => Ok(DraftBase::Absent),
        (None, Some(Tags::These(_))) => Err(Error::BadRequest(
            "`If-None-Match` on a configuration takes only `*` (write only if the agent does not exist yet)".into(),
        )),
    }
}

/// The entity tag of a draft whose tag is `tag`, quoted as headers carry it.
pub(crate) fn entity_tag(tag: &str) -> String {
    format!("\"{tag}\"")
}

/// The `ETag` header of a draft whose tag is `tag`.
pub(crate) fn with_etag(mut response: Response, tag: &str) -> Response {
    // A tag is hex: always a valid header value.
    if let Ok(value) = HeaderValue::from_str(&entity_tag(tag)) {
        response.headers_mut().insert(ETAG, value);
    }
    response
}

/// An `If-Match` or `If-None-Match` header's value.
enum Tags {
    /// `*`.
    Any,
    /// The opaque parts of its strong entity tags. Weak ones (`W/"…"`) are left out: a
    /// write compares strongly, so they never match.
    These(Vec<String>),
}

/// The header `name` of `headers`, all its lines together, or `None` when it is absent.
fn list(headers: &HeaderMap, name: &axum::http::HeaderName) -> Result<Option<Tags>, Error> {
    let mut tags = Vec::new();
    let mut any = false;
    let mut seen = false;
    for line in headers.get_all(name) {
        seen = true;
        let bad = || {
            Error::BadRequest(format!(
                "`{name}` must be `*` or a list of entity tags (\"…\"), as the `ETag` header gives them"
            ))
        };
        let mut rest = line.to_str().map_err(|_| bad())?;
        // `#entity-tag`: items between commas, where a comma may also stand inside a tag's
        // quotes; empty items are allowed.
        loop {
            rest = rest.trim_start_matches([' ', '\t', ',']);
            if rest.is_empty() {
                break;
            }
            if let Some(after) = rest.strip_prefix('*') {
                any = true;
                rest = after;
            } else {
                let (weak, quoted) = match rest.strip_prefix("W/") {
                    Some(after) => (true, after),
                    None => (false, rest),
                };
                let opaque = quoted.strip_prefix('"').ok_or_else(bad)?;
                let end = opaque.find('"').ok_or_else(bad)?;
                if !weak {
                    tags.push(opaque[..end].to_owned());
                }
                rest = &opaque[end + 1..];
            }
            // An item ends at a comma or at the end of the line.
            let after = rest.trim_start_matches([' ', '\t']);
            if !(after.is_empty() || after.starts_with(',')) {
                return Err(bad());
            }
            rest = after;
        }
    }
    Ok(match (seen, any) {
        (false, _) => None,
        (true, true) => Some(Tags::Any),
        (true, false) => Some(Tags::These(tags)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(pairs: &[(&str, &str)]) -> Result<DraftBase, Error> {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        draft_base(&headers)
    }

    #[test]
    fn preconditions_are_read_as_rfc_9110_writes_them() {
        assert_eq!(base(&[]).unwrap(), DraftBase::Any);
        assert_eq!(
            base(&[("if-match", "\"ab\"")]).unwrap(),
            DraftBase::OneOf(vec!["ab".into()])
        );
        // A list, over one line or several; weak tags never match a write.
        assert_eq!(
            base(&[("if-match", "\"ab\", W/\"cd\""), ("if-match", "\"ef\"")]).unwrap(),
            DraftBase::OneOf(vec!["ab".into(), "ef".into()])
        );
        assert_eq!(
            base(&[("if-match", "W/\"cd\"")]).unwrap(),
            DraftBase::OneOf(vec![])
        );
        // A comma may stand inside a tag; empty items are allowed.
        assert_eq!(
            base(&[("if-match", " , \"a,b\" ,,\"c\"")]).unwrap(),
            DraftBase::OneOf(vec!["a,b".into(), "c".into()])
        );
        assert_eq!(base(&[("if-match", "*")]).unwrap(), DraftBase::Present);
        assert_eq!(base(&[("if-none-match", "*")]).unwrap(), DraftBase::Absent);
        for refused in [
            &[("if-match", "ab")][..],
            &[("if-match", "\"a\"b\"")],
            &[("if-match", "\"ab")],
            &[("if-match", "\"ab\" \"cd\"")],
            &[("if-match", "*x")],
            &[("if-none-match", "\"ab\"")],
            &[("if-match", "*"), ("if-none-match", "*")],
        ] {
            let e = base(refused).unwrap_err();
            assert!(matches!(e, Error::BadRequest(_)), "{refused:?}: {e:?}");
        }
    }
}
